"""Multi-frame (MF) samples: real video frames -> detector -> teacher 2D landmarks with confidence.

method.md section 3: frames of real videos with 2D pseudo-labels from a fixed 2D regressor. Each sample
is a square image region around the face (the face box covers about a third of it, so training can
jitter and re-crop) with the teacher's landmarks in that region's pixel coordinates.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

from training.teacher.base import LandmarkTeacher
from training.teacher.tddfa import crop_zero_padded

log = logging.getLogger(__name__)

# Photos are one-frame clips: the wild/ folder holds 383 of them next to its videos (issue 12).
IMAGE_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS))  # engine.video's one list
# Held out for validation by default (the evaluation uses them), never written as MF training samples.
DEFAULT_EXCLUDE = ("liveportrait_d19.mp4", "pyfeat_single_face.mp4")
CONTEXT = 3.0  # region side = CONTEXT x the face box side


class ClipError(RuntimeError):
    """A clip that cannot be opened or decoded (counted and skipped by the writer)."""


@dataclass
class MFSample:
    image: np.ndarray  # (S, S, 3) uint8 RGB region around the face
    box: np.ndarray  # (4,) detector box in region pixels
    landmarks_2d: np.ndarray  # (68, 2) teacher landmarks in region pixels
    confidence: np.ndarray  # (68,) teacher confidence in (0, 1]
    frame_index: int


def list_clips(folder: str | Path, exclude: tuple[str, ...] | list[str] = DEFAULT_EXCLUDE) -> list[Path]:
    """Video files under ``folder`` (recursively, sorted for a deterministic clip index), minus ``exclude``
    (matched against file names)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--mf-clips {folder}: not a folder of video clips")
    excluded = set(exclude)
    suffixes = tuple(VIDEO_EXTENSIONS) + IMAGE_SUFFIXES
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.name not in excluded
                  and p.name != "preview.jpg")  # a dataset's contact sheet, not a photo


def count_frames(path: Path) -> int:
    """Frames in the clip's first video stream (engine.video, the one decode core); 1 for a photo.
    Raises ClipError."""
    from engine.video import VideoError, count_frames as video_frames

    try:
        return video_frames(path)
    except VideoError as err:
        raise ClipError(str(err)) from err


def iter_frames(path: Path, every: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, upright RGB frame) for indices in [start, stop) that are multiples of ``every``
    (engine.video.iter_frames; a photo is frame 0). Raises ClipError on decode failure."""
    from engine.video import VideoError, iter_frames as video_frames

    try:
        yield from video_frames(path, every, start, stop)
    except VideoError as err:
        raise ClipError(str(err)) from err


def face_region(image: np.ndarray, box: np.ndarray, size: int, context: float = CONTEXT) -> tuple[np.ndarray, float, np.ndarray]:
    """Square region of side ``context`` x the box's larger side around its centre, zero-padded,
    resized to ``size``. Returns (region, scale, origin); map points with :func:`to_region`."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(int(round(context * max(box[2] - box[0], box[3] - box[1]))), 1)
    origin = np.array([round(cx - side / 2), round(cy - side / 2)], dtype=np.float64)
    crop = crop_zero_padded(image, (origin[0], origin[1], origin[0] + side, origin[1] + side))
    region = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))
    return region, size / side, origin


def to_region(points: np.ndarray, scale: float, origin: np.ndarray) -> np.ndarray:
    """Image pixels -> region pixels (pixel centres at integer coordinates, as in the camera K)."""
    return ((points - origin + 0.5) * scale - 0.5).astype(np.float32)


class MFLabeler:
    """Detector + teacher on one frame -> an :class:`MFSample` of the most confident face, or None."""

    def __init__(self, detector, teacher: LandmarkTeacher, image_size: int = 256, context: float = CONTEXT,
                 mirror: bool = False) -> None:
        self.detector = detector
        self.mirror = mirror  # teacher mirror averaging (flip, remap, average)
        self.teacher = teacher
        self.image_size = image_size
        self.context = context

    def label(self, frame_rgb: np.ndarray, frame_index: int = 0) -> MFSample | None:
        det = self.detector.detect(frame_rgb)
        if len(det.boxes) == 0:
            return None
        box = np.asarray(det.boxes[int(np.argmax(det.scores))], dtype=np.float64)
        res = self.teacher.predict_refined_batch([frame_rgb], box[None], mirror=self.mirror)
        region, scale, origin = face_region(frame_rgb, box, self.image_size, self.context)
        return MFSample(
            image=region,
            box=to_region(box.reshape(2, 2), scale, origin).reshape(4),
            landmarks_2d=to_region(res.landmarks[0], scale, origin),
            confidence=res.confidence[0],
            frame_index=frame_index,
        )

    def sample_arrays(self, sample: MFSample, clip_index: int) -> dict[str, np.ndarray]:
        """The on-disk arrays of an MF sample (docs/DESIGN.md)."""
        return {
            "kind": np.int8(1),
            "identity": np.int64(clip_index),
            "box": sample.box,
            "landmarks_2d": sample.landmarks_2d,
            "visible": np.ones(68, dtype=bool),
            "confidence": sample.confidence,
        }
