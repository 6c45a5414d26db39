"""Masked multi-view lifting: 2D teacher detections in N calibrated views -> 68 3D points (head frame).

method.md section 4.3: the 3D points whose projections through the known rig cameras match the teacher's
detections, counting only landmarks visible in each view. Ours: a DLT triangulation start, then an
iteratively reweighted Gauss-Newton on pixel reprojection error with a Huber loss (IRLS), vectorised
over all 68 landmarks at once (each landmark is an independent 3-parameter problem, so the normal
equations are a batch of 3x3 systems - far faster than a generic solver).
An identity whose fit is bad is rejected with a reason, so the writer can count why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

REASON_TOO_FEW_VIEWS = "too_few_views"
REASON_HIGH_RESIDUAL = "high_residual"
REASON_OUTLIER_LANDMARK = "outlier_landmark"


class LiftingConfig(BaseModel):
    """Solver and rejection settings. Residual thresholds are fractions of the face size in each view
    (``sqrt(w h)`` of the reprojected landmark box), so they do not depend on the render size."""

    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(12, ge=0, le=100)
    huber: float = Field(0.02, gt=0, description="Huber threshold, fraction of face size")
    min_views: int = Field(3, ge=2, description="every landmark must be visible in this many views")
    max_mean_residual: float = Field(0.04, gt=0, description="mean over landmarks of the median residual")
    max_landmark_residual: float = Field(0.10, gt=0, description="largest per-landmark median residual")


@dataclass
class LiftResult:
    points: np.ndarray  # (68, 3) head frame, cm
    residuals_px: np.ndarray  # (V, 68) reprojection error in pixels, NaN where not used
    landmark_residual: np.ndarray  # (68,) median over used views of residual / face size
    n_views: np.ndarray  # (68,) number of views used per landmark
    ok: bool
    reason: str | None  # None when ok, else one of the REASON_* constants


def projection_matrices(K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(V,3,3), (V,3,3), (V,3) -> (V,3,4) ``K [R | t]``."""
    return K @ np.concatenate([R, t[:, :, None]], axis=2)


def triangulate_dlt(P: np.ndarray, points_2d: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Linear triangulation of every landmark from the views where ``mask`` is set.

    ``P`` (V,3,4), ``points_2d`` (V,L,2), ``mask`` (V,L) -> (L,3). Rows are normalised per view so
    that near and far cameras count alike; masked views contribute zero rows.
    """
    u, v = points_2d[..., 0], points_2d[..., 1]  # (V, L)
    rows_x = u[..., None] * P[:, None, 2, :] - P[:, None, 0, :]  # (V, L, 4)
    rows_y = v[..., None] * P[:, None, 2, :] - P[:, None, 1, :]
    A = np.stack([rows_x, rows_y], axis=2)  # (V, L, 2, 4)
    A = A / np.linalg.norm(A, axis=-1, keepdims=True).clip(min=1e-12)
    A = A * mask[..., None, None]
    A = A.transpose(1, 0, 2, 3).reshape(A.shape[1], -1, 4)  # (L, 2V, 4)
    _, _, vt = np.linalg.svd(A, full_matrices=False)
    X = vt[:, -1, :]
    return X[:, :3] / np.where(np.abs(X[:, 3:]) < 1e-12, 1e-12, X[:, 3:])


def _project_with_jacobian(K, R, t, X):
    """Pixels (V,L,2) of head points X (L,3) and their Jacobian d(pixel)/dX (V,L,2,3)."""
    Xc = np.einsum("vij,lj->vli", R, X) + t[:, None, :]  # (V, L, 3)
    p = np.einsum("vij,vlj->vli", K, Xc)  # (V, L, 3)
    w = p[..., 2:3]
    uv = p[..., :2] / w
    # d(p_i / p_2)/dXc = (K_i - uv_i K_2) / p_2, then chain with R.
    dK = (K[:, None, :2, :] - uv[..., None] * K[:, None, 2:3, :]) / w[..., None]  # (V, L, 2, 3)
    return uv, dK @ R[:, None]


def face_sizes(uv: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(V,L,2) -> (V,) sqrt(w h) of each view's landmark box (all landmarks: size is a scale only)."""
    span = uv.max(axis=1) - uv.min(axis=1)
    return np.sqrt(np.prod(span.clip(min=1e-6), axis=1))


def lift(
    K: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    points_2d: np.ndarray,
    mask: np.ndarray,
    config: LiftingConfig | None = None,
) -> LiftResult:
    """Lift one identity's detections: ``K``, ``R`` (V,3,3), ``t`` (V,3), ``points_2d`` (V,68,2) pixels,
    ``mask`` (V,68) bool (visible in that view and detected). Returns points in the head frame."""
    cfg = config or LiftingConfig()
    K, R, t = (np.asarray(a, dtype=np.float64) for a in (K, R, t))
    obs = np.asarray(points_2d, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool) & np.isfinite(obs).all(axis=-1)
    obs = np.where(mask[..., None], obs, 0.0)
    n_views = mask.sum(axis=0)

    X = triangulate_dlt(projection_matrices(K, R, t), obs, mask)
    X = np.where(np.isfinite(X), X, 0.0)
    uv, J = _project_with_jacobian(K, R, t, X)
    scale = face_sizes(uv)[:, None]  # (V, 1) px per unit face size
    for _ in range(cfg.iterations):
        r = uv - obs  # (V, L, 2)
        norm = np.linalg.norm(r, axis=-1)
        delta = cfg.huber * scale
        w = np.where(norm <= delta, 1.0, delta / np.maximum(norm, 1e-12)) * mask  # Huber IRLS weights
        H = np.einsum("vl,vlki,vlkj->lij", w, J, J) + 1e-9 * np.eye(3)
        g = np.einsum("vl,vlki,vlk->li", w, J, r)
        X = X - np.linalg.solve(H, g[..., None])[..., 0]
        uv, J = _project_with_jacobian(K, R, t, X)

    residuals = np.linalg.norm(uv - obs, axis=-1)
    residuals = np.where(mask, residuals, np.nan)
    with np.errstate(all="ignore"):
        landmark_residual = np.nanmedian(residuals / scale, axis=0)
    landmark_residual = np.where(n_views > 0, landmark_residual, np.inf)

    reason = None
    if (n_views < cfg.min_views).any():
        reason = REASON_TOO_FEW_VIEWS
    elif landmark_residual.mean() > cfg.max_mean_residual:
        reason = REASON_HIGH_RESIDUAL
    elif landmark_residual.max() > cfg.max_landmark_residual:
        reason = REASON_OUTLIER_LANDMARK
    return LiftResult(
        points=X.astype(np.float32),
        residuals_px=residuals.astype(np.float32),
        landmark_residual=landmark_residual.astype(np.float32),
        n_views=n_views.astype(np.int32),
        ok=reason is None,
        reason=reason,
    )


def lift_cameras(cameras: list, points_2d: np.ndarray, mask: np.ndarray, config: LiftingConfig | None = None) -> LiftResult:
    """:func:`lift` for a list of generator ``Camera`` objects (``.K``, ``.R``, ``.t``)."""
    return lift(
        np.stack([c.K for c in cameras]), np.stack([c.R for c in cameras]), np.stack([c.t for c in cameras]),
        points_2d, mask, config,
    )
