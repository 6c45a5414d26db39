"""Make samples/astronaut.mp4: the public-domain astronaut portrait (skimage.data.astronaut()) filmed by a
synthetic camera (slow zoom, pan and roll), H.264 in MP4. Deterministic: re-running gives the same frames.

    python scripts/make_sample.py [--out samples/astronaut.mp4] [--seconds 9] [--fps 25]
"""

from __future__ import annotations

import argparse
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image
from skimage import data
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 640, 480
FACE_CENTRE = (225.0, 120.0)  # astronaut's face in the 512x512 source (CenterFace box centre)


def smoothstep(t: float) -> float:
    return t * t * (3 - 2 * t)


def camera_frame(src: Image.Image, t: float) -> np.ndarray:
    """The view at time ``t`` in [0, 1]: zoom 1.0 -> 1.6 towards the face, a gentle pan and +-4 deg roll."""
    sw, sh = src.size
    s = smoothstep(t)
    zoom = 1.0 + 0.6 * s
    roll = math.radians(4.0 * math.sin(2 * math.pi * t))
    # centre moves from the picture's centre to the face, with a small sideways sway
    cx = (1 - s) * sw / 2 + s * FACE_CENTRE[0] + 12 * math.sin(3 * math.pi * t)
    cy = (1 - s) * sh / 2 + s * FACE_CENTRE[1] + 6 * math.sin(2 * math.pi * t)
    scale = 0.72 * sh / HEIGHT / zoom  # source pixels per output pixel; < full height leaves room for the roll
    a, b = math.cos(roll) * scale, math.sin(roll) * scale
    # PIL affine: output (x, y) -> source (a x - b y + c, b x + a y + f), centred on (cx, cy)
    ox, oy = WIDTH / 2, HEIGHT / 2
    coeffs = (a, -b, cx - a * ox + b * oy, b, a, cy - b * ox - a * oy)
    return np.asarray(src.transform((WIDTH, HEIGHT), Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC))


def make_sample(out: Path, seconds: float = 9.0, fps: int = 25) -> Path:
    src = Image.fromarray(data.astronaut())
    n = round(seconds * fps)
    out.parent.mkdir(parents=True, exist_ok=True)
    # faststart: the index goes first so players (and partial downloads) can start at once
    with av.open(str(out), "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        # single-threaded x264 with fixed settings gives byte-identical output on every run
        stream.options = {"preset": "slow", "crf": "26", "threads": "1", "g": str(2 * fps)}
        for i in tqdm(range(n), desc=out.name, unit="frame"):
            frame = av.VideoFrame.from_ndarray(camera_frame(src, i / (n - 1)), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "samples" / "astronaut.mp4")
    parser.add_argument("--seconds", type=float, default=9.0)
    parser.add_argument("--fps", type=int, default=25)
    args = parser.parse_args()
    out = make_sample(args.out, args.seconds, args.fps)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
