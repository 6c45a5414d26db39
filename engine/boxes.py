"""Box helpers shared by the trackers, the evaluation and the training writers (defined once)."""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) x1y1x2y2 boxes -> (N, M) intersection over union."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def landmark_box(landmarks) -> np.ndarray:
    """(..., K, 2) points -> (..., 4) their tight x1y1x2y2 bounding box (float64)."""
    p = np.asarray(landmarks, np.float64)
    # ufunc reductions directly (a per-frame path: ndarray.min/max add a wrapper call each)
    return np.concatenate([np.minimum.reduce(p, axis=-2), np.maximum.reduce(p, axis=-2)], axis=-1)
