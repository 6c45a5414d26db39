"""Drawing faces on frames (numpy + Pillow only): boxes, track ids, keypoints, 68 landmarks coloured by
visibility, and head-pose axes.

Head-pose axes follow the head frame of engine/geometry.py (ICT axes, ``X_cam = R @ X_head + t``):
``x`` (drawn red, labelled "right": it points to the image's right on a frontal face; it is the subject's
left), ``up`` (+y, green) and ``forward`` (+z, the facing direction, blue). Two ways to place them:

- :func:`axes_2d` (no intrinsics needed): from a 2D origin (the nose tip, landmark 30), each axis is the
  x/y part of the rotation's column scaled by the face size: an orthographic view of the head frame,
  exact up to perspective for a face far from the camera compared with its size;
- :func:`axes_projected`: the head frame's axes placed at the face's 3D nose tip (``landmarks_3d[30]``,
  else the head origin ``t``) and projected through the pinhole ``K`` the landmark stage assumed for
  the frame (``frame.meta["camera_matrix"]``, see plugins/landmarks/stage.py), so they sit in the
  image exactly where that stage's 3D pose says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.frame import Face

Color = tuple[int, int, int]

VISIBLE_COLOR: Color = (40, 230, 40)
OCCLUDED_COLOR: Color = (255, 60, 60)
KEYPOINT_COLOR: Color = (255, 220, 0)
AXIS_COLORS: dict[str, Color] = {"right": (255, 40, 40), "up": (40, 220, 40), "forward": (40, 120, 255)}
AXIS_COLUMNS: dict[str, int] = {"right": 0, "up": 1, "forward": 2}  # columns of R (head x, y, z)
NOSE_TIP = 30  # iBUG landmark at the tip of the nose
NOSE_KEYPOINT = 2  # CenterFace keypoint order: right eye, left eye, nose, right mouth, left mouth

# Well-separated hues for track ids (tab10-like), cycled.
_TRACK_PALETTE: list[Color] = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]


@dataclass(frozen=True)
class DrawStyle:
    """What to draw and how big. Sizes are pixels; ``axis_scale`` is axis length in face-box widths."""

    boxes: bool = True
    track_ids: bool = True
    scores: bool = False
    keypoints: bool = True
    landmarks: bool = True
    axes: bool = True
    line_width: int = 2
    point_radius: int = 2
    axis_scale: float = 0.6
    font_size: int = 14


def track_color(track_id: int | None) -> Color:
    """A stable colour per track id (white for untracked faces)."""
    return (255, 255, 255) if track_id is None else _TRACK_PALETTE[int(track_id) % len(_TRACK_PALETTE)]


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def draw_box(draw: ImageDraw.ImageDraw, box: Sequence[float], color: Color, width: int = 2) -> None:
    x1, y1, x2, y2 = (float(v) for v in box)
    draw.rectangle([x1, y1, x2, y2], outline=color, width=width)


def draw_label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, color: Color, size: int = 14) -> None:
    """Text on a filled background with its bottom-left corner at ``xy`` (moved below ``xy`` when that
    would leave the image's top), readable on any frame."""
    font = _font(size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x, y = float(xy[0]), float(xy[1]) - (bottom - top) - 4
    if y < 0:
        y = float(xy[1])
    draw.rectangle([x, y, x + right - left + 4, y + bottom - top + 4], fill=color)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    draw.text((x + 2 - left, y + 2 - top), text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255), font=font)


def draw_points(draw: ImageDraw.ImageDraw, points: np.ndarray, colors: Sequence[Color] | Color, radius: int = 2) -> None:
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if isinstance(colors, tuple) and len(colors) == 3 and isinstance(colors[0], int):
        colors = [colors] * len(pts)
    for (x, y), color in zip(pts, colors):
        if np.isfinite(x) and np.isfinite(y):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)


def landmark_colors(visibility: np.ndarray | None, count: int) -> list[Color]:
    """Visible landmarks green, occluded red; all green without a visibility mask."""
    if visibility is None:
        return [VISIBLE_COLOR] * count
    return [VISIBLE_COLOR if v else OCCLUDED_COLOR for v in np.asarray(visibility, bool)]


def axes_2d(rotation: np.ndarray, origin: Sequence[float], length: float) -> dict[str, np.ndarray]:
    """End points (pixels) of the head axes drawn from 2D ``origin``: the x/y parts of R's columns
    (camera x right, y down = image x, y) times ``length`` pixels. Needs no intrinsics."""
    r = np.asarray(rotation, np.float64).reshape(3, 3)
    o = np.asarray(origin, np.float64)
    return {name: o + length * r[:2, col] for name, col in AXIS_COLUMNS.items()}


def axes_projected(
    rotation: np.ndarray, origin_cam: np.ndarray, K: np.ndarray, length_cm: float
) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """(origin pixel, end pixels) of the head axes of ``length_cm`` placed at the camera-space point
    ``origin_cam`` (cm) and projected through ``K``; None when a point is behind the camera."""
    r = np.asarray(rotation, np.float64).reshape(3, 3)
    o = np.asarray(origin_cam, np.float64).reshape(3)
    points = np.vstack([o, o + length_cm * r.T])  # origin, then the 3 axis tips (rows of R.T = columns of R)
    if np.any(points[:, 2] <= 1e-6):
        return None
    p = points @ np.asarray(K, np.float64).T
    p = p[:, :2] / p[:, 2:3]
    return p[0], {name: p[1 + col] for name, col in AXIS_COLUMNS.items()}


def draw_axes(
    draw: ImageDraw.ImageDraw, origin: Sequence[float], ends: dict[str, np.ndarray], width: int = 3
) -> None:
    """Arrows from ``origin`` to each end; forward drawn last so it stays on top."""
    o = np.asarray(origin, np.float64)
    for name in ("right", "up", "forward"):
        end = np.asarray(ends[name], np.float64)
        color = AXIS_COLORS[name]
        draw.line([tuple(o), tuple(end)], fill=color, width=width)
        # arrow head: two short strokes at +-25 degrees back along the shaft
        d = o - end
        n = float(np.hypot(*d))
        if n < 1e-6:
            continue
        d = d / n * min(10.0, 0.3 * n)
        for a in (0.44, -0.44):
            c, s = np.cos(a), np.sin(a)
            tip = end + np.array([c * d[0] - s * d[1], s * d[0] + c * d[1]])
            draw.line([tuple(end), tuple(tip)], fill=color, width=width)


def face_axes(face: Face, style: DrawStyle, K: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """Where to draw ``face``'s pose axes, or None without a rotation. Projected through ``K`` when it
    and the 3D position are known, else drawn from the 2D nose tip (landmark 30, or the nose keypoint)."""
    if face.rotation is None:
        return None
    box = np.asarray(face.box, np.float64)
    size = float(max(box[2] - box[0], box[3] - box[1]))
    if K is not None and (face.landmarks_3d is not None or face.translation is not None):
        # from the 3D nose tip (so both ways draw from the same point), else the head origin t
        origin = np.asarray(face.landmarks_3d if face.landmarks_3d is not None else face.translation, np.float64)
        origin = origin[NOSE_TIP] if origin.ndim == 2 else origin
        # the 3D length that spans about axis_scale box widths at the face's depth
        length_cm = style.axis_scale * size * float(origin[2]) / float(np.asarray(K)[0, 0])
        projected = axes_projected(face.rotation, origin, K, length_cm)
        if projected is not None:
            return projected
    if face.landmarks_2d is not None:
        origin = np.asarray(face.landmarks_2d, np.float64)[NOSE_TIP]
    else:
        origin = np.asarray(face.keypoints, np.float64)[NOSE_KEYPOINT]
    return origin, axes_2d(face.rotation, origin, style.axis_scale * size)


def draw_face(draw: ImageDraw.ImageDraw, face: Face, style: DrawStyle, K: np.ndarray | None = None) -> None:
    color = track_color(face.track_id)
    if style.boxes:
        draw_box(draw, face.box, color, style.line_width)
    if style.landmarks and face.landmarks_2d is not None:
        lm = np.asarray(face.landmarks_2d)
        draw_points(draw, lm, landmark_colors(face.visibility, len(lm)), style.point_radius)
    elif style.keypoints and face.keypoints is not None:
        draw_points(draw, face.keypoints, KEYPOINT_COLOR, style.point_radius + 1)
    if style.axes:
        axes = face_axes(face, style, K)
        if axes is not None:
            draw_axes(draw, axes[0], axes[1], style.line_width + 1)
    label = []
    if style.track_ids and face.track_id is not None:
        label.append(f"#{face.track_id}")
    if style.scores:
        label.append(f"{face.score:.2f}")
    if label:
        draw_label(draw, (float(face.box[0]), float(face.box[1])), " ".join(label), color, style.font_size)


def annotate(image: np.ndarray, faces: Sequence[Face], style: DrawStyle = DrawStyle(), K: np.ndarray | None = None) -> np.ndarray:
    """A copy of the HxWx3 uint8 RGB ``image`` with ``faces`` drawn on it."""
    canvas = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    for face in faces:
        draw_face(draw, face, style, K)
    return np.asarray(canvas)
