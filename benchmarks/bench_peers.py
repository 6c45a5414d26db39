"""This engine next to its peers on one clip, in one run: end-to-end fps and ratios, and N-stream scaling.

    nice -n 19 python benchmarks/bench_peers.py [--clip PATH] [--max-frames N] [--rounds 1]
        [--streams 1 2 4 8] [--stream-frames 200] [--threads N] [--bundle DIR] [--peers-python .venv-peers/bin/python]
        [--json out.json]

Every pipeline decodes the same clip with PyAV (decode included in its fps), tracks one face the way it
does out of the box, and is timed after its models are loaded:

- **engine, default**: pipeline.toml's stages (CenterFace 320 on the first frame, every 30th and on a lost
  track; landmark crops between) through the real runtime (decode, stages and sinks in their own
  threads), a msgpack file sink into a temp folder;
- **engine, detect every frame**: the same with ``detect_every = 1``;
- **3DDFA_V2-style**: the teacher in training/teacher/ (MobileNet-0.5, 120 px) on ONNX Runtime, run as
  3DDFA_V2's demo_video.py runs it, in one thread: a detector on the first frame (CenterFace 320 here:
  FaceBoxes is not available), the landmark pass, then every frame cropped from the previous frame's
  landmarks (``roi_from_landmarks``, redetecting when the roi gets tiny), crop + ``cv2.resize`` +
  normalise, the network, the 68 points from its parameters;
- **MediaPipe Face Mesh 0.10.14** (BlazeFace + 468-point mesh, its own tracking), in a subprocess with
  the ``.venv-peers`` interpreter (its protobuf pin conflicts with onnx; see pyproject's ``[peers]``);
  skipped with a note when that interpreter is missing.

``--rounds R`` runs the single-stream pipelines R times, interleaved, and keeps each one's best (load on
a shared machine only slows runs down). Then this engine's default pipeline on 1, 2, 4, 8 copies of the
clip at once (``--stream-frames`` frames each): total fps and per-stream fps.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from engine.assets import REPO_ROOT, shared_asset
from engine_runs import run_engine, stages_with

log = logging.getLogger(__name__)

PEERS_PYTHON = REPO_ROOT / ".venv-peers" / "bin" / "python"
TINY_ROI_AREA = 2020  # 3DDFA_V2 demo_video.py: a landmark roi smaller than this (px^2) asks for a detection


def decoded_frames(clip: Path, max_frames: int | None):
    container = av.open(str(clip))
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for k, vf in enumerate(container.decode(stream)):
            if max_frames and k >= max_frames:
                break
            yield vf.to_ndarray(format="rgb24")
    finally:
        container.close()


def run_decode(clip: Path, max_frames: int | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    frames = sum(1 for _ in decoded_frames(clip, max_frames))
    seconds = time.perf_counter() - t0
    return {"frames": frames, "frames_with_face": None, "seconds": seconds, "fps": frames / seconds}


def run_engine_clip(clip: Path, max_frames: int | None, detect_every: int | None, threads: int | None,
                    bundle: str | None = None) -> dict[str, Any]:
    summary, _ = run_engine(clip, stages_with(detect_every=detect_every, threads=threads, bundle=bundle),
                            max_frames=max_frames)
    stream = summary["streams"]["s0"]
    return {"frames": summary["frames"], "frames_with_face": stream["faces"], "seconds": summary["wall_time_s"],
            "fps": summary["fps"]}


class TddfaStyle:
    """3DDFA_V2's video loop around the project's teacher network on ONNX Runtime (see the module doc)."""

    def __init__(self, threads: int | None = None):
        from plugins.detectors.centerface import CenterFace
        from training.teacher.tddfa import INPUT_SIZE, Teacher

        self.teacher = Teacher(runtime="onnxruntime", threads=threads)
        self.detector = CenterFace(input_size=320, intra_op_threads=threads)
        self.size = INPUT_SIZE
        self.input_name = self.teacher.session.get_inputs()[0].name

    def _landmarks(self, image: np.ndarray, roi: np.ndarray) -> np.ndarray:
        from training.teacher.tddfa import crop_zero_padded

        # 3DDFA_V2: crop_img (zero padding) of the BGR frame, cv2.resize INTER_LINEAR, (x - 127.5) / 128
        crop = cv2.resize(crop_zero_padded(image[:, :, ::-1], roi), (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        x = ((crop.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
        params = self.teacher.session.run(None, {self.input_name: x})[0].astype(np.float64)
        params = params * self.teacher.param_std + self.teacher.param_mean
        return self.teacher.landmarks_from_params(params, roi[None])[0]

    def _detect(self, image: np.ndarray) -> np.ndarray | None:
        from training.teacher.tddfa import roi_from_boxes, roi_from_landmarks

        det = self.detector.detect(image)
        if not len(det):
            return None
        lm = self._landmarks(image, roi_from_boxes(det.boxes[:1])[0])
        return self._landmarks(image, roi_from_landmarks(lm[None])[0])  # demo_video: the landmark pass

    def run(self, clip: Path, max_frames: int | None) -> dict[str, Any]:
        from training.teacher.tddfa import roi_from_landmarks

        frames = faces = 0
        previous: np.ndarray | None = None
        t0 = time.perf_counter()
        for image in decoded_frames(clip, max_frames):
            frames += 1
            if previous is None:
                previous = self._detect(image)
            else:
                roi = roi_from_landmarks(previous[None])[0]
                if (roi[2] - roi[0]) * (roi[3] - roi[1]) < TINY_ROI_AREA:
                    previous = self._detect(image)
                else:
                    previous = self._landmarks(image, roi)
            faces += previous is not None
        seconds = time.perf_counter() - t0
        return {"frames": frames, "frames_with_face": faces, "seconds": seconds, "fps": frames / seconds}


def run_mediapipe(clip: Path, max_frames: int | None, python: Path) -> dict[str, Any] | None:
    if not python.is_file():
        log.warning("MediaPipe skipped: no %s (python3 -m venv .venv-peers && .venv-peers/bin/pip install "
                    "mediapipe==0.10.14 av numpy)", python)
        return None
    script = Path(__file__).resolve().parent / "peers_mediapipe.py"
    done = subprocess.run([str(python), str(script), str(clip), str(max_frames or 0)], capture_output=True,
                          text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"MediaPipe run failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", type=Path, default=None, help="default: shared liveportrait_d10.mp4 (512x512)")
    p.add_argument("--max-frames", type=int, default=None, help="frames per single-stream run (default: all)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--streams", type=int, nargs="*", default=[1, 2, 4, 8])
    p.add_argument("--stream-frames", type=int, default=200, help="frames per stream in the N-stream runs")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (all pipelines)")
    p.add_argument("--bundle", default=None, help="landmark bundle for this engine (default: pipeline.toml's)")
    p.add_argument("--peers-python", type=Path, default=PEERS_PYTHON)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    clip = args.clip or shared_asset("videos", "liveportrait_d10.mp4")
    tddfa = TddfaStyle(args.threads)

    runs = {
        "decode only (PyAV)": lambda: run_decode(clip, args.max_frames),
        "engine, default pipeline.toml": lambda: run_engine_clip(clip, args.max_frames, None, args.threads, args.bundle),
        "engine, detect every frame": lambda: run_engine_clip(clip, args.max_frames, 1, args.threads, args.bundle),
        "3DDFA_V2-style (CenterFace once, MobileNet-0.5 120 px, ORT)": lambda: tddfa.run(clip, args.max_frames),
        "MediaPipe Face Mesh 0.10.14": lambda: run_mediapipe(clip, args.max_frames, args.peers_python),
    }
    best: dict[str, dict[str, Any] | None] = {}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            r = fn()
            if r is not None and (best.get(name) is None or r["fps"] > best[name]["fps"]):
                best[name] = r
            best.setdefault(name, None)
    print(f"{clip.name}, best of {args.rounds} round(s), decode included:")
    for name, r in best.items():
        if r is None:
            print(f"  {name:58s} skipped")
        else:
            faces = "" if r["frames_with_face"] is None else f", {r['frames_with_face']}/{r['frames']} frames with a face"
            print(f"  {name:58s} {r['fps']:8.1f} fps{faces}")
    engine = best["engine, default pipeline.toml"]["fps"]
    ratios = {name: round(engine / r["fps"], 3) for name, r in best.items()
              if r is not None and not name.startswith("engine, default")}
    for name, ratio in ratios.items():
        print(f"  engine default / {name}: {ratio:.2f}x")

    scaling = []
    for n in args.streams:
        summary, _ = run_engine(clip, stages_with(threads=args.threads, bundle=args.bundle), streams=n, max_frames=args.stream_frames)
        scaling.append({"streams": n, "fps": summary["fps"], "per_stream_fps": round(summary["fps"] / n, 2),
                        "faces": sum(s["faces"] for s in summary["streams"].values()), "frames": summary["frames"]})
        print(f"  engine default, {n} stream(s) at once: {summary['fps']:.1f} fps total, "
              f"{summary['fps'] / n:.1f} per stream", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"clip": str(clip), "rounds": args.rounds, "runs": best, "ratios": ratios,
                                         "streams": scaling, "argv": sys.argv[1:]}, indent=1))


if __name__ == "__main__":
    main()
