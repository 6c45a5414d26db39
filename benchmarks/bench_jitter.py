"""Landmark jitter on a still head, with and without the One-Euro smoothing, in the same run.

    python benchmarks/bench_jitter.py [--image PATH] [--frames 75] [--noise 4] [--bundle DIR]

The clip: a real photo (default ``../shared/assets/images/3ddfa_v2_JianzhuGuo.jpg``) held still for
``--frames`` frames at 25 fps, each with fresh Gaussian sensor noise (sigma ``--noise`` grey levels),
encoded with libx264 and decoded by the engine like any file. The head does not move, so every landmark
motion between frames is jitter. Both runs are the default pipeline (CenterFace + landmarks with
tracking) through the real runtime, differing only in ``smoothing``.

jitter = mean over frames and landmarks of |landmark(t) - landmark(t-1)| / face size (sqrt of the box
area), the first second skipped (the filter's warm-up).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from engine.assets import default_bundle, shared_asset
from engine.client import read_messages
from engine.config import parse_config
from engine.messages import FrameMessage
from engine.plugin import discover
from engine.runtime import Pipeline

FPS = 25


def write_still_clip(image: Path, out: Path, frames: int, noise: float, seed: int = 0) -> Path:
    """``image`` (cropped to even dims) repeated ``frames`` times with per-frame noise, H.264."""
    rgb = np.asarray(Image.open(image).convert("RGB"))
    rgb = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2].astype(np.float32)
    rng = np.random.default_rng(seed)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
        stream.time_base = Fraction(1, FPS)
        for i in range(frames):
            pixels = np.clip(rgb + rng.normal(0.0, noise, rgb.shape), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out


def jitter(landmarks: np.ndarray, boxes: np.ndarray) -> float:
    """(T, 68, 2) landmarks, (T, 4) boxes -> mean frame-to-frame motion in face sizes."""
    size = np.sqrt((boxes[1:, 2] - boxes[1:, 0]) * (boxes[1:, 3] - boxes[1:, 1]))
    motion = np.linalg.norm(np.diff(landmarks, axis=0), axis=-1).mean(axis=1)
    return float(np.mean(motion / size))


def run_pipeline(clip: Path, out_dir: Path, bundle: str, smoothing: bool) -> tuple[np.ndarray, np.ndarray]:
    """The default pipeline's stages on ``clip``; returns per-frame (landmarks_2d, box) of the one face."""
    doc = {
        "pipeline": {"name": "jitter", "log_level": "WARNING"},
        "sources": [{"type": "file", "id": "still", "path": str(clip)}],
        "stages": [
            {"type": "centerface", "input_size": 320},
            {"type": "landmarks", "bundle": bundle, "backend": "onnxruntime", "tracking": True, "smoothing": smoothing},
        ],
        "sinks": [{"type": "file_sink", "directory": str(out_dir), "format": "msgpack"}],
    }
    Pipeline(parse_config(doc, discover())).run(handle_signals=False)
    frames = [m for m in read_messages(out_dir / "still.msgpack") if isinstance(m, FrameMessage)]
    if not all(len(f.faces) == 1 for f in frames):
        raise RuntimeError(f"{clip}: expected one face in every frame")
    return np.stack([f.faces[0].landmarks_2d for f in frames]), np.stack([f.faces[0].box for f in frames])


def still_head_jitter(image: Path, frames: int = 75, noise: float = 4.0, bundle: str | None = None) -> dict:
    """{"raw": jitter, "smoothed": jitter, "ratio": smoothed / raw, "frames": n}."""
    bundle = bundle or str(default_bundle())
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_still_clip(image, Path(tmp) / "still.mp4", frames, noise)
        figures = {}
        for name, smoothing in (("raw", False), ("smoothed", True)):
            lm, boxes = run_pipeline(clip, Path(tmp) / name, bundle, smoothing)
            figures[name] = jitter(lm[FPS:], boxes[FPS:])
    return {**figures, "ratio": figures["smoothed"] / figures["raw"], "frames": len(lm)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, default=None)
    p.add_argument("--frames", type=int, default=75)
    p.add_argument("--noise", type=float, default=4.0)
    p.add_argument("--bundle", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    image = args.image or shared_asset("images", "3ddfa_v2_JianzhuGuo.jpg")
    result = still_head_jitter(image, args.frames, args.noise, args.bundle)
    print(json.dumps({"image": str(image), "noise": args.noise, **{k: round(v, 5) if isinstance(v, float) else v
                                                                  for k, v in result.items()}}))


if __name__ == "__main__":
    main()
