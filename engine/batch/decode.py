"""Decoding one clip for a batch job, with the pipeline's own ``file`` source (PyAV, engine/video.py).

Reusing the ``file`` source plugin keeps one definition of frame index, pts, RGB conversion and of what
counts as an unreadable or truncated file. It is looked up by name (entry points), as the runtime does,
so the engine does not import ``plugins``.
"""

from __future__ import annotations

import glob
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.batch.dataset import ClipTask
from engine.frame import Frame
from engine.plugin import get_plugin


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
    file_source = get_plugin("file", "source")
    source = file_source(file_source.Options(path=glob.escape(str(path))), clip_id)  # type: ignore[call-arg]
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


def clip_meta(base: dict, task: ClipTask, frames: list[Frame], size: tuple[int, int]) -> dict:
    """One clip's metadata: the job's ``base`` (stages, hashes), its source, video info and attributes.
    Here (not in job.py) so the local and the Ray job both use it and ray_job does not import job."""
    return {**base, "source": str(task.path), **video_info(frames, size).as_meta(), "attributes": task.attributes}
