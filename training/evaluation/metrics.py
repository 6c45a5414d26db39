"""Landmark and pose metrics: NME (2D/3D), pose errors, per-region and per-category reports.

Conventions (docs/method.md section 5, docs/evaluation.md):
- Boxes are ``(x1, y1, x2, y2)`` pixels; the normaliser is ``sqrt(w_box * h_box)``; NME is x100.
- Every function is vectorised over images and accepts numpy arrays or torch tensors (converted to
  numpy: these metrics are cheap; NMLC, the expensive one, lives in nmlc.py on torch).
- Per-image errors are (I, N) *normalised* distances (not x100); reductions multiply by 100.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from engine.boxes import landmark_box  # noqa: F401  (the AFLW2000-3D / 3DDFA normaliser)

from engine.geometry import euler_from_rotation
from engine.landmarks68 import NUM_LANDMARKS, REGIONS

OUTER_EYE_CORNERS = (36, 45)  # iBUG outer eye corners: the inter-ocular normaliser


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def box_scale(boxes) -> np.ndarray:
    """(I,) ``sqrt(w * h)`` of (I, 4) x1y1x2y2 boxes. Raises on empty boxes (they would divide by 0)."""
    b = _np(boxes).reshape(-1, 4)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    bad = np.flatnonzero(~((w > 0) & (h > 0)))
    if bad.size:
        raise ValueError(f"boxes must be x1y1x2y2 with positive size; image(s) {bad[:5].tolist()} are not")
    return np.sqrt(w * h)


def boxes_from_xywh(boxes) -> np.ndarray:
    b = _np(boxes).reshape(-1, 4).copy()
    b[:, 2:] += b[:, :2]
    return b


def landmark_errors(pred, gt, boxes) -> np.ndarray:
    """(I, N) point-to-point 2D distances divided by each image's ``sqrt(w * h)``."""
    p, g = _np(pred)[..., :2], _np(gt)[..., :2]
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} != ground truth shape {g.shape}")
    return np.linalg.norm(p - g, axis=-1) / box_scale(boxes)[:, None]


def masked_mean(errors, visible=None) -> float:
    e = _np(errors)
    if visible is None:
        return float(e.mean())
    m = _np(visible).astype(bool)
    if not m.any():
        return float("nan")
    return float(e[m].mean())


def nme(pred, gt, boxes, visible=None) -> float:
    """Mean over images and landmarks of the normalised 2D error, x100."""
    return 100.0 * masked_mean(landmark_errors(pred, gt, boxes), visible)


def landmark_errors_3d(pred, gt, normaliser: str = "box", boxes=None) -> np.ndarray:
    """(I, N) 3D distances, normalised by the box (``sqrt(w*h)``, same units as the points) or by the
    ground truth's outer-eye-corner distance (``"interocular"``, landmarks 36 and 45)."""
    p, g = _np(pred), _np(gt)
    d = np.linalg.norm(p - g, axis=-1)
    if normaliser == "box":
        if boxes is None:
            raise ValueError("normaliser='box' needs boxes in the same units as the 3D points")
        return d / box_scale(boxes)[:, None]
    if normaliser == "interocular":
        a, b = OUTER_EYE_CORNERS
        return d / np.linalg.norm(g[:, a] - g[:, b], axis=-1)[:, None]
    raise ValueError(f"normaliser must be 'box' or 'interocular', got {normaliser!r}")


def nme_3d(pred, gt, normaliser: str = "interocular", boxes=None, visible=None) -> float:
    return 100.0 * masked_mean(landmark_errors_3d(pred, gt, normaliser, boxes), visible)


# ---------------------------------------------------------------- pose
def _rot(r) -> np.ndarray:
    return _np(r).reshape(-1, 3, 3)


def pose_frobenius(r_pred, r_gt) -> np.ndarray:
    """(I,) ``||I - R_pred R_gt^T||_F`` (the DAD-3DHeads benchmark's pose error)."""
    d = _rot(r_pred) @ np.swapaxes(_rot(r_gt), -1, -2)
    return np.linalg.norm(np.eye(3) - d, axis=(-2, -1))


def pose_geodesic_deg(r_pred, r_gt) -> np.ndarray:
    """(I,) angle of the relative rotation in degrees."""
    d = _rot(r_pred) @ np.swapaxes(_rot(r_gt), -1, -2)
    cos = (np.trace(d, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def euler_errors_deg(r_pred, r_gt) -> np.ndarray:
    """(I, 3) absolute yaw/pitch/roll differences in degrees (wrapped to [0, 180])."""
    d = euler_from_rotation(_rot(r_pred)) - euler_from_rotation(_rot(r_gt))
    return np.abs((d + 180.0) % 360.0 - 180.0)


def pose_report(r_pred, r_gt) -> dict[str, float]:
    e = euler_errors_deg(r_pred, r_gt)
    return {
        "geodesic_deg": float(pose_geodesic_deg(r_pred, r_gt).mean()),
        "frobenius": float(pose_frobenius(r_pred, r_gt).mean()),
        "yaw_deg": float(e[:, 0].mean()),
        "pitch_deg": float(e[:, 1].mean()),
        "roll_deg": float(e[:, 2].mean()),
        "mae_deg": float(e.mean()),
    }


# ---------------------------------------------------------------- reports
def region_values(errors, visible=None, regions: Mapping[str, slice] = REGIONS) -> dict[str, float]:
    """x100 means over ``full`` and each region of (I, N) normalised errors."""
    e = _np(errors)
    if e.shape[-1] != NUM_LANDMARKS and regions is REGIONS:
        return {"full": 100.0 * masked_mean(e, visible)}
    out = {"full": 100.0 * masked_mean(e, visible)}
    for name, sl in regions.items():
        out[name] = 100.0 * masked_mean(e[..., sl], None if visible is None else _np(visible)[..., sl])
    return out


def per_image(errors, visible=None) -> np.ndarray:
    """(I,) mean normalised error of each image over its (visible) landmarks."""
    e = _np(errors)
    if visible is None:
        return e.mean(-1)
    m = _np(visible).astype(bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (e * m).sum(-1) / m.sum(-1)


def by_category(
    errors, attributes: Mapping[str, Sequence], visible=None
) -> dict[str, dict[str, dict[str, float]]]:
    """``{attribute: {value: region_values}}`` for each per-image attribute column (length I).

    A category's value is the mean over the landmarks of its images (images weigh by landmark count,
    as in the overall NME). ``None`` values are skipped.
    """
    e = _np(errors)
    vis = None if visible is None else _np(visible).astype(bool)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for attr, column in attributes.items():
        col = list(column)
        if len(col) != e.shape[0]:
            raise ValueError(f"attribute {attr!r} has {len(col)} values for {e.shape[0]} images")
        groups: dict[str, list[int]] = {}
        for i, v in enumerate(col):
            if v is not None:
                groups.setdefault(str(v), []).append(i)
        out[attr] = {
            v: {"count": float(len(idx)), **region_values(e[idx], None if vis is None else vis[idx])}
            for v, idx in sorted(groups.items())
        }
    return out


def landmark_report(errors, attributes: Mapping[str, Sequence] | None = None, visible=None) -> dict:
    """The report every evaluation prints: full + regions, per landmark, and per category."""
    e = _np(errors)
    rep = {
        "images": int(e.shape[0]),
        "regions": region_values(e, visible),
        "per_landmark": (100.0 * e.mean(0)).tolist() if visible is None else [
            100.0 * masked_mean(e[:, n], _np(visible)[:, n]) for n in range(e.shape[1])
        ],
    }
    if attributes:
        rep["categories"] = by_category(e, attributes, visible)
    return rep
