"""The 41-view lifting rig and the augmented training camera space (docs/method.md section 4).

Angles follow engine/geometry.py: azimuth > 0 puts the camera on the subject's left (+X of the head
frame), elevation > 0 above (+Y); (0, 0) is frontal. Cameras orbit ``LOOK_AT``, the centroid of the
ICT neutral 68 landmarks, so the face stays centred in every view.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from training.generators.base import Camera

# Centroid of the ICT neutral mesh's 68 landmarks (head frame, cm; measured: (0.0, -0.26, 9.44)).
LOOK_AT = np.array([0.0, -0.26, 9.44])
# Width of the landmark box of the neutral face (cm, contour 0 to 16), used to frame the face.
FACE_WIDTH_CM = 14.7
# The face box covers about this fraction of the image width (DESIGN.md: images larger than the crop).
FACE_FRACTION = 1.0 / 3.0
DEFAULT_DISTANCE_CM = 60.0


def rig_views(
    az_range: tuple[float, float] = (-60.0, 60.0),
    el_range: tuple[float, float] = (-30.0, 30.0),
    n: int = 7,
    drop: int = 8,
) -> list[tuple[float, float]]:
    """n x n (azimuth, elevation) grid without the ``drop`` views farthest from frontal.

    Distance from frontal is the angle between the view direction and the frontal one,
    ``arccos(cos az * cos el)``; by default this drops (±60, ±30) and (±60, ±20): 41 views.
    Ordered row by row (elevation from top to bottom, azimuth left to right in the image).
    """
    azs = np.linspace(*az_range, n)
    els = np.linspace(*el_range, n)[::-1]
    grid = [(float(a), float(e)) for e in els for a in azs]
    angle = [np.arccos(np.clip(np.cos(np.radians(a)) * np.cos(np.radians(e)), -1, 1)) for a, e in grid]
    if drop:
        # Ties are broken by the index so the result is deterministic; the default drop never splits a tie.
        worst = set(np.argsort(-np.round(np.asarray(angle), 9), kind="stable")[:drop].tolist())
        grid = [v for i, v in enumerate(grid) if i not in worst]
    return grid


def focal_for_face_fraction(size: int, distance: float, fraction: float = FACE_FRACTION) -> float:
    """Focal length (px) at which the face box covers ``fraction`` of a ``size``-pixel-wide image."""
    return fraction * size * distance / FACE_WIDTH_CM


def look_at_rotation(eye: np.ndarray, target: np.ndarray, roll_deg: float = 0.0) -> np.ndarray:
    """Head -> camera rotation for a camera at ``eye`` looking at ``target`` with head +Y up.

    Rows are the camera's x (image right), y (image down) and z (forward) axes in the head frame;
    a camera on +Z looking at the origin gives ``engine.geometry.FRONTAL``. Roll > 0 turns the image
    so that the head tilts counter-clockwise on screen (as ``euler_from_rotation``'s roll).
    """
    z = target - eye
    z = z / np.linalg.norm(z)
    up = np.array([0.0, 1.0, 0.0])
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-8:  # looking straight up or down: any horizontal x will do
        x = np.array([1.0, 0.0, 0.0])
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    if roll_deg:
        c, s = np.cos(np.radians(roll_deg)), np.sin(np.radians(roll_deg))
        # Rotating the camera clockwise about its axis makes the scene turn counter-clockwise.
        R = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]]) @ R
    return R


def view_direction(az_deg: float, el_deg: float) -> np.ndarray:
    """Unit vector from the look-at point towards the camera, head frame."""
    a, e = np.radians(az_deg), np.radians(el_deg)
    return np.array([np.sin(a) * np.cos(e), np.sin(e), np.cos(a) * np.cos(e)])


def orbit_camera(
    az: float,
    el: float,
    width: int,
    height: int,
    focal_px: float,
    distance: float,
    target: np.ndarray = LOOK_AT,
    roll: float = 0.0,
    offset: np.ndarray | None = None,
    principal: tuple[float, float] | None = None,
) -> Camera:
    """Camera on a sphere around ``target``; ``offset`` (cm) shifts it in its own image plane."""
    eye = np.asarray(target, dtype=np.float64) + distance * view_direction(az, el)
    R = look_at_rotation(eye, np.asarray(target, dtype=np.float64), roll)
    if offset is not None:
        eye = eye + R.T @ np.array([offset[0], offset[1], 0.0])
    t = -R @ eye
    cx, cy = principal if principal is not None else ((width - 1) / 2.0, (height - 1) / 2.0)
    K = np.array([[focal_px, 0.0, cx], [0.0, focal_px, cy], [0.0, 0.0, 1.0]])
    return Camera(K=K, R=R, t=t, width=int(width), height=int(height))


def rig_camera(
    az: float,
    el: float,
    size: int = 256,
    focal_px: float | None = None,
    distance: float = DEFAULT_DISTANCE_CM,
) -> Camera:
    """A rig view: square image, looking at the face centre, face box about a third of the width."""
    f = focal_for_face_fraction(size, distance) if focal_px is None else focal_px
    return orbit_camera(az, el, size, size, f, distance)


def rig_cameras(size: int = 256, **kwargs) -> list[Camera]:
    return [rig_camera(a, e, size) for a, e in rig_views(**kwargs)]


class AugmentedCameraSpace(BaseModel):
    """Ranges of the training cameras (method.md section 4): uniform draws within each range."""

    model_config = ConfigDict(extra="forbid")

    azimuth: tuple[float, float] = (-75.0, 75.0)
    elevation: tuple[float, float] = (-35.0, 35.0)
    roll: tuple[float, float] = (-30.0, 30.0)
    look_at_jitter_cm: float = Field(1.5, ge=0, description="uniform per axis around LOOK_AT")
    offset_cm: float = Field(2.5, ge=0, description="camera shift in its image plane, per axis")
    distance_cm: tuple[float, float] = (35.0, 150.0)
    face_fraction: tuple[float, float] = (0.26, 0.42)
    size: int = Field(256, ge=16, description="image width and height when sample() gets no size")

    def sample(self, rng: np.random.Generator, size: int | None = None) -> Camera:
        size = self.size if size is None else int(size)
        az = rng.uniform(*self.azimuth)
        el = rng.uniform(*self.elevation)
        roll = rng.uniform(*self.roll)
        target = LOOK_AT + rng.uniform(-self.look_at_jitter_cm, self.look_at_jitter_cm, 3)
        offset = rng.uniform(-self.offset_cm, self.offset_cm, 2)
        # Distance and framing are drawn separately, so the focal length (perspective strength) varies.
        distance = float(np.exp(rng.uniform(*np.log(self.distance_cm))))
        focal = focal_for_face_fraction(size, distance, rng.uniform(*self.face_fraction))
        return orbit_camera(az, el, size, size, focal, distance, target, roll, offset)
