"""The unit of data that flows through a pipeline: one decoded frame and the faces found on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Face:
    """One face on one frame. Coordinates are image pixels (x right, y down) of the full frame.

    Fields after ``keypoints`` are filled by later stages (landmarks, tracking) and stay ``None``
    until then, so a sink can always tell what a pipeline computed.
    """

    box: np.ndarray  # (4,) float32: x1, y1, x2, y2
    score: float
    keypoints: np.ndarray  # (5, 2) float32: right eye, left eye, nose, right mouth, left mouth (subject's)
    track_id: int | None = None
    landmarks_2d: np.ndarray | None = None  # (68, 2) image pixels
    landmarks_3d: np.ndarray | None = None  # (68, 3) camera space, centimetres
    landmarks_canonical: np.ndarray | None = None  # (68, 3) head frame, centimetres
    rotation: np.ndarray | None = None  # (3, 3) head frame -> camera (OpenCV axes)
    euler: np.ndarray | None = None  # (3,) yaw, pitch, roll in degrees
    translation: np.ndarray | None = None  # (3,) centimetres, camera space
    confidence: np.ndarray | None = None  # (68,) in [0, 1]
    visibility: np.ndarray | None = None  # (68,) bool, occlusion mask
    # per-face outputs of other plugins (name -> array, any numeric/bool dtype), carried by the messages
    # (schema 1.4) so a plugin adds an output without editing the engine core
    extra: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Frame:
    """A decoded frame. ``image`` is HxWx3 uint8 RGB; ``pts`` is seconds (None when unknown)."""

    stream_id: str
    index: int
    pts: float | None
    time: float  # wall-clock seconds (time.time()) when the frame was decoded
    image: np.ndarray
    faces: list[Face] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.image.shape[1]), int(self.image.shape[0])
