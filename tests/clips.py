"""Small test clips made with PyAV, so tests decode real video without shipping files.

Import from tests as ``from clips import make_clip, make_corrupt_file`` (pytest puts ``tests/`` on
``sys.path``). Clips are deterministic: the same arguments give the same frames.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
from PIL import Image


@lru_cache(maxsize=1)
def _astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def _background(size: tuple[int, int]) -> Image.Image:
    """A face-free textured picture (smooth colour gradients) of ``size`` (w, h)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin(x / 17.0 + y / 23.0)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def camera_motion_frame(src: Image.Image, i: int, frames: int, size: tuple[int, int]) -> np.ndarray:
    """Frame ``i`` of a slow synthetic camera move over ``src``: zoom in, pan, small roll.

    The face of the astronaut stays in view throughout (the zoom is centred near it).
    """
    t = i / max(frames - 1, 1)
    sw, sh = src.size
    w, h = size
    zoom = 1.0 + 0.35 * t  # zoom in by 35 %
    angle = math.radians(6.0 * math.sin(2 * math.pi * t))  # roll +-6 degrees
    # centre of the view in source pixels, panning gently around the face (~(0.45, 0.35) of the image)
    cx = sw * (0.47 + 0.04 * math.sin(2 * math.pi * t))
    cy = sh * (0.42 + 0.03 * math.cos(2 * math.pi * t))
    scale = max(sw / w, sh / h) / zoom * 0.95  # source pixels per output pixel
    cos_a, sin_a = math.cos(angle) * scale, math.sin(angle) * scale
    # PIL's affine maps output (x, y) -> source (a x + b y + c, d x + e y + f)
    ox, oy = w / 2, h / 2
    coeffs = (cos_a, -sin_a, cx - cos_a * ox + sin_a * oy, sin_a, cos_a, cy - sin_a * ox - cos_a * oy)
    out = src.transform((w, h), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    return np.asarray(out)


def make_clip(
    path: str | Path,
    frames: int = 60,
    size: tuple[int, int] = (320, 240),
    fps: int = 25,
    face: bool = True,
    codec: str = "libx264",
    faststart: bool = False,
) -> Path:
    """Write an H.264 clip of ``frames`` frames (w, h = ``size``) and return its path.

    ``face=True`` films the astronaut portrait (one face), ``face=False`` a face-free texture.
    ``faststart`` puts the MP4 index first (a truncated copy then still opens and decodes partially).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    src = _astronaut() if face else _background((512, 512))
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for i in range(frames):
            image = camera_motion_frame(src, i, frames, size)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_corrupt_file(path: str | Path, size: int = 4096, seed: int = 0) -> Path:
    """Garbage bytes under a video file name (``.mp4`` etc.): not a decodable container."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def make_truncated_copy(src: str | Path, dst: str | Path, fraction: float = 0.5) -> Path:
    """The first ``fraction`` of ``src``'s bytes: a real clip cut off mid-file."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst
