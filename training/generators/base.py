"""Generator contract (docs/DESIGN.md, "Generator API"): identities from seeds, renders from cameras.

A generator is a plug-in: the embedded ICT head (``ict_head.py``) implements it, and a 3D-aware GAN
(IDE-3D, EG3D) can implement it too (docs/generator.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from engine.geometry import project


@dataclass
class Camera:
    """Pinhole camera, OpenCV axes, centimetres: ``X_cam = R @ X_head + t``, pixels = ``K @ X_cam``."""

    K: np.ndarray  # (3,3) pixels
    R: np.ndarray  # (3,3) head -> camera
    t: np.ndarray  # (3,) cm
    width: int
    height: int

    def project(self, points_head: np.ndarray) -> np.ndarray:
        """(N,3) head-frame points -> (N,2) pixels."""
        return project(self.to_camera(points_head), self.K)

    def to_camera(self, points_head: np.ndarray) -> np.ndarray:
        return points_head @ self.R.T + self.t

    @property
    def centre(self) -> np.ndarray:
        """Camera position in the head frame."""
        return -self.R.T @ self.t


@dataclass
class Identity:
    """One generated subject. ``seed`` makes it reproducible; ``params`` are generator-specific."""

    seed: int
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Render:
    image: np.ndarray  # (H,W,3) uint8 RGB
    camera: Camera
    landmarks_head: np.ndarray  # (68,3) exact landmark vertices, head frame, cm
    landmarks_2d: np.ndarray  # (68,2) their projections, pixels
    vertices_cam: np.ndarray  # (V,3) mesh in camera space
    faces: np.ndarray  # (F,3) triangles
    depth: np.ndarray | None = None  # (H,W) f32 camera z in cm, inf on background
    mask: np.ndarray | None = None  # (H,W) bool head foreground


@runtime_checkable
class Generator(Protocol):
    name: str

    def identity(self, seed: int) -> Identity:
        """Deterministic by seed."""
        ...

    def render(self, identity: Identity, camera: Camera) -> Render: ...
