"""The 68-point iBUG / Multi-PIE landmark definition shared by engine, training and evaluation."""

from __future__ import annotations

import numpy as np

NUM_LANDMARKS = 68

# Regions used in every report (docs/method.md section 1).
REGIONS: dict[str, slice] = {
    "contour": slice(0, 17),
    "brows": slice(17, 27),
    "nose": slice(27, 36),
    "eyes": slice(36, 48),
    "mouth": slice(48, 68),
}

NOSE_BRIDGE = np.arange(27, 31)  # visible down to a dot product of -0.1 (seed, masks)

NAMES: list[str] = (
    [f"contour_{i}" for i in range(17)]
    + [f"brow_right_{i}" for i in range(5)]
    + [f"brow_left_{i}" for i in range(5)]
    + [f"nose_bridge_{i}" for i in range(4)]
    + [f"nose_lower_{i}" for i in range(5)]
    + [f"eye_right_{i}" for i in range(6)]
    + [f"eye_left_{i}" for i in range(6)]
    + [f"mouth_outer_{i}" for i in range(12)]
    + [f"mouth_inner_{i}" for i in range(8)]
)


def _mirror_permutation() -> np.ndarray:
    """Index map for a horizontal flip: flipped[i] = original[FLIP[i]]."""
    perm = np.arange(NUM_LANDMARKS)
    pairs = (
        [(i, 16 - i) for i in range(17)]  # jaw
        + [(17 + i, 26 - i) for i in range(5)]  # brows
        + [(31, 35), (32, 34)]  # nostrils
        + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
        + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lip
        + [(60, 64), (61, 63), (65, 67)]  # inner lip
    )
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


FLIP_PERMUTATION = _mirror_permutation()


def region_of(index: int) -> str:
    for name, sl in REGIONS.items():
        if sl.start <= index < sl.stop:
            return name
    raise IndexError(index)


# 5 CenterFace-style keypoints from 68 iBUG points (subject's right eye, left eye, nose tip, mouth corners)
_EYE_R, _EYE_L, _NOSE, _MOUTH_R, _MOUTH_L = slice(36, 42), slice(42, 48), 30, 48, 54


def _keypoint_weights() -> np.ndarray:
    w = np.zeros((5, NUM_LANDMARKS))
    w[0, _EYE_R], w[1, _EYE_L] = 1.0 / 6.0, 1.0 / 6.0
    w[2, _NOSE], w[3, _MOUTH_R], w[4, _MOUTH_L] = 1.0, 1.0, 1.0
    return w


_KEYPOINT_WEIGHTS = _keypoint_weights()  # (5, 68): one matrix product per call (a per-frame path)


def keypoints_from_landmarks(lm: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (..., 5, 2) in CenterFace order (subject's right eye, left eye, nose, right/left mouth):
    the eye centres are the means of their 6 points."""
    return (_KEYPOINT_WEIGHTS @ np.asarray(lm, np.float64)).astype(np.float32)
