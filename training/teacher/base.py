"""The 2D landmark teacher plug-in interface: anything that maps a face box to 68 2D points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class TeacherResult:
    """Teacher output for N faces of one image (or N faces across a batch of images)."""

    landmarks: np.ndarray  # (N, 68, 2) f32 image pixels
    params: np.ndarray  # (N, P) f32 the regressor's own parameters (3DDFA: 62 de-normalised)
    roi: np.ndarray  # (N, 4) f32 crop box [sx, sy, ex, ey] in image pixels
    pose: np.ndarray  # (N, 3) f32 yaw, pitch, roll in degrees (regressor's convention)
    confidence: np.ndarray | None = None  # (N, 68) f32 in (0, 1], only from two-pass prediction

    def __len__(self) -> int:
        return len(self.landmarks)

    def select(self, index: int | slice | np.ndarray) -> TeacherResult:
        conf = None if self.confidence is None else self.confidence[index]
        return TeacherResult(self.landmarks[index], self.params[index], self.roi[index], self.pose[index], conf)


@runtime_checkable
class LandmarkTeacher(Protocol):
    """A fixed 2D landmark regressor used for pseudo-labels. Images are HxWx3 uint8 RGB."""

    name: str

    def predict(self, image_rgb: np.ndarray, boxes: np.ndarray) -> TeacherResult:
        """One pass from face boxes (N, 4) x1y1x2y2."""
        ...

    def predict_from_landmarks(self, image_rgb: np.ndarray, landmarks: np.ndarray) -> TeacherResult:
        """One pass re-cropped from previous landmarks (N, 68, 2)."""
        ...

    def predict_refined(self, image_rgb: np.ndarray, boxes: np.ndarray) -> TeacherResult:
        """Box pass then landmark pass; fills ``confidence`` (per landmark, in (0, 1])."""
        ...
