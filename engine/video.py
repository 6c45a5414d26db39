"""The one PyAV decode core: opening a video, turning its frames upright, reading frames of a file.

Everything that decodes video uses it: the ``file``/``stream``/``webcam`` sources
(plugins/sources/pyav_source.py), batch jobs (through the ``file`` source), the texture bank and the
MF writer (training/), the CelebV-HQ reader and calibration. Frames are HxWx3 uint8 RGB, turned
upright by the stream's display matrix (the rotation metadata of phone video, as FFmpeg's autorotate
does). :data:`VIDEO_EXTENSIONS` is the one list of file endings taken for video, :data:`IMAGE_EXTENSIONS`
for photos: :func:`iter_frames` and :func:`count_frames` read a photo as a one-frame clip (turned
upright by its EXIF orientation), so the MF writer and calibration take folders of both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import av.sidedata.sidedata
import numpy as np

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .ts .m2ts .mts .flv .mpg .mpeg .wmv .3gp .ogv .y4m .h264 .h265 .hevc".split()
)

IMAGE_EXTENSIONS = frozenset(".jpg .jpeg .png .webp .bmp".split())

# What PyAV raises for unreadable input: FFmpegError subclasses (InvalidDataError is also a ValueError)
# plus OSError for missing/unreadable files.
DECODE_ERRORS = (av.FFmpegError, OSError, ValueError)


class VideoError(RuntimeError):
    """A video that cannot be opened or decoded; the message names the file and the cause."""


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_image(path: str | Path) -> np.ndarray:
    """A photo as HxWx3 uint8 RGB, upright by its EXIF orientation. Raises :class:`VideoError`."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except OSError as err:
        raise VideoError(f"{path}: cannot read the photo ({err})") from err


def open_video(uri: str, **kwargs: Any) -> tuple[av.container.InputContainer, av.VideoStream]:
    """(container, its first video stream) with frame + slice threads; raises ValueError without video."""
    container = av.open(uri, **kwargs)
    try:
        if not container.streams.video:
            raise ValueError("no video stream in the container")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads: decoding is the caller's whole job
        return container, stream
    except BaseException:
        container.close()
        raise


_odd_rotation_logged: set[str] = set()  # streams whose display matrix is not a right angle (logged once)


def display_matrix(vf: av.VideoFrame) -> np.ndarray | None:
    """The frame's display matrix (9 int32, FFmpeg layout), from the container's rotation / ``rotate``
    metadata (phone video), or None."""
    for sd in vf.side_data:
        if sd.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            m = np.frombuffer(bytes(sd), "<i4")
            return m if m.size == 9 else None
    return None


def upright(image: np.ndarray, matrix: np.ndarray | None, stream_id: str = "") -> np.ndarray:
    """``image`` as it is meant to be displayed: the display matrix maps a decoded pixel (x, y) to
    (a x + c y, b x + d y) (+ an offset), so the 8 right-angle orientations (rotations by 90 degrees,
    with or without a mirror) are a transpose and/or flips, as FFmpeg's autorotate does. Other angles
    are left as decoded (logged once)."""
    if matrix is None:
        return image
    a, b, c, d = int(matrix[0]), int(matrix[1]), int(matrix[3]), int(matrix[4])
    if a == 0 and d == 0 and b and c:  # x' = c y, y' = b x: rows and columns swap
        out = image.transpose(1, 0, 2)
        out = out[::-1] if b < 0 else out
        out = out[:, ::-1] if c < 0 else out
    elif b == 0 and c == 0 and a and d:
        if a > 0 and d > 0:
            return image  # identity
        out = image[:, ::-1] if a < 0 else image
        out = out[::-1] if d < 0 else out
    else:
        if stream_id not in _odd_rotation_logged:
            _odd_rotation_logged.add(stream_id)
            log.warning("%s: display matrix %s is not a multiple of 90 degrees; frames are used as decoded",
                        stream_id, matrix.tolist())
        return image
    return np.ascontiguousarray(out)


def rgb(vf: av.VideoFrame, stream_id: str = "") -> np.ndarray:
    """A decoded frame as HxWx3 uint8 RGB, upright like every player shows it (a phone's portrait
    clip is stored sideways with a rotation)."""
    return upright(vf.to_ndarray(format="rgb24"), display_matrix(vf), stream_id)


def iter_frames(path: str | Path, every: int = 1, start: int = 0, stop: int | None = None,
                max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, upright RGB frame) of a file for indices in [start, stop) that are multiples of
    ``every``, at most ``max_frames`` of them. Decodes sequentially (exact frame indices); a photo is
    frame 0. Raises :class:`VideoError` when the file cannot be opened or decoding fails."""
    if is_image(path):
        if start == 0 and (stop is None or stop > 0) and (max_frames is None or max_frames > 0):
            yield 0, read_image(path)
        return
    try:
        container, stream = open_video(str(path))
        with container:
            n = 0
            for i, vf in enumerate(container.decode(stream)):
                if (stop is not None and i >= stop) or (max_frames is not None and n >= max_frames):
                    break
                if i >= start and i % every == 0:
                    n += 1
                    yield i, rgb(vf, str(path))
    except (*DECODE_ERRORS, IndexError) as err:
        raise VideoError(f"{path}: cannot open or decode ({err})") from err


def read_frames(path: str | Path, every: int = 1, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Upright RGB frames of a file (every ``every``-th, at most ``max_frames``): :func:`iter_frames` without indices."""
    return (image for _, image in iter_frames(path, every, max_frames=max_frames))


def count_frames(path: str | Path) -> int:
    """Frames of the first video stream: the container's count, else by decoding; 1 for a photo.
    Raises :class:`VideoError`."""
    if is_image(path):
        return 1
    try:
        container, stream = open_video(str(path))
        with container:
            return int(stream.frames) if stream.frames > 0 else sum(1 for _ in container.decode(stream))
    except DECODE_ERRORS as err:
        raise VideoError(f"{path}: cannot open or decode ({err})") from err
