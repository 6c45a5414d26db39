"""Decoding one clip for a batch job, with the pipeline's own ``file`` source (PyAV).

Reusing :class:`plugins.sources.pyav_source.FileSource` keeps one definition of frame index, pts,
RGB conversion and of what counts as an unreadable or truncated file.
"""

from __future__ import annotations

import glob
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.frame import Frame
from plugins.sources.pyav_source import FileSource


class ClipDecodeError(RuntimeError):
    """The clip cannot be (completely) decoded; the message names the file and the cause."""


@dataclass
class ClipVideoInfo:
    width: int
    height: int
    fps: float | None
    frames: int

    def as_meta(self) -> dict:
        return {"width": self.width, "height": self.height, "fps": self.fps}


def iter_clip(clip_id: str, path: str | Path, stop: threading.Event | None = None) -> Iterator[Frame]:
    """Frames of one clip with ``stream_id = clip_id``. Raises :class:`ClipDecodeError` after the
    last decodable frame when the file is unreadable, truncated or has no frames."""
    # escape: a literal file name with [ ] * ? must not be taken for a glob by the source
    source = FileSource(FileSource.Options(path=glob.escape(str(path))), clip_id)
    count = 0
    for frame in source.frames(stop or threading.Event()):
        frame.meta.clear()  # source_uri/total_frames/end_of_stream: not needed downstream, less to pickle
        count += 1
        yield frame
    if source.errors:
        raise ClipDecodeError("; ".join(source.errors))
    if count == 0:
        raise ClipDecodeError(f"{path}: no frames decoded")


def video_info(frames: list[Frame], size: tuple[int, int]) -> ClipVideoInfo:
    """``size`` = (width, height): passed in because images may already be released."""
    width, height = size
    pts = np.asarray([f.pts for f in frames if f.pts is not None], np.float64)
    step = float(np.median(np.diff(pts))) if len(pts) > 1 else 0.0
    return ClipVideoInfo(width, height, round(1.0 / step, 3) if step > 0 else None, len(frames))
