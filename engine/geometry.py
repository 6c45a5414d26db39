"""Camera and head-pose conventions shared by engine, training and evaluation.

- Camera space: OpenCV axes (x right, y down, z forward from the camera), centimetres.
- Head frame: ICT FaceKit axes (x = subject's left, y = up, z = where the face looks), centimetres.
- ``R`` maps head frame to camera space: ``X_cam = R @ X_head + t``. A frontal face has ``R = FRONTAL``.
- Projection: ``[x, y, w] = K @ X_cam``, pixel = ``(x / w, y / w)``.
"""

from __future__ import annotations

import numpy as np

from engine.landmarks68 import NOSE_BRIDGE, NUM_LANDMARKS

FRONTAL = np.diag([1.0, -1.0, -1.0])

VISIBLE_THRESHOLD = 0.5
NOSE_BRIDGE_THRESHOLD = -0.1


def visibility_thresholds() -> np.ndarray:
    """(68,) dot-product thresholds: 0.5, and -0.1 for the nose bridge (seed, loss details)."""
    thr = np.full(NUM_LANDMARKS, VISIBLE_THRESHOLD, dtype=np.float32)
    thr[NOSE_BRIDGE] = NOSE_BRIDGE_THRESHOLD
    return thr


def facing_camera(rotation, normals):
    """Dot product of each rotated landmark normal with the vector towards the camera.

    ``rotation``: (..., 3, 3) head -> camera; ``normals``: (68, 3) unit normals in the head frame.
    Works unchanged on numpy arrays and torch tensors (the training loss uses the same function).
    The direction towards the camera is -z in OpenCV axes, so the product is ``-(R n)_z``.
    """
    return -(normals @ rotation[..., 2, :][..., None])[..., 0]


def visibility_mask(rotation, normals, thresholds=None):
    """(..., 68) bool: landmark is visible when its normal faces the camera enough (occlusion mask)."""
    thr = visibility_thresholds() if thresholds is None else thresholds
    dots = facing_camera(rotation, normals)
    if not isinstance(dots, np.ndarray):  # torch: move thresholds next to the data
        import torch

        thr = torch.as_tensor(thr, dtype=dots.dtype, device=dots.device)
    return dots > thr


def project(points_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(..., N, 3) camera-space points -> (..., N, 2) pixels."""
    p = points_cam @ K.T
    return p[..., :2] / p[..., 2:3]


def euler_from_rotation(rotation: np.ndarray) -> np.ndarray:
    """Yaw, pitch, roll in degrees from a head -> camera rotation (..., 3, 3).

    Angles are relative to the frontal pose, in a camera-aligned frame with y up and z towards the
    camera: ``FRONTAL @ R = Ry(yaw) @ Rx(-pitch) @ Rz(roll)``. Yaw > 0: the subject turns to their
    left (nose moves right in the image); pitch > 0: looks up; roll > 0: head tilts counter-clockwise
    as seen from the camera (top of the head moves to the image's left).
    """
    r = FRONTAL @ np.asarray(rotation, dtype=np.float64)
    fwd = r[..., :, 2]
    yaw = np.arctan2(fwd[..., 0], fwd[..., 2])
    pitch = np.arcsin(np.clip(fwd[..., 1], -1.0, 1.0))
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    # Rz(roll) = Rx(-pitch)^T Ry(yaw)^T r; only its first column is needed.
    ry_t_x = cy * r[..., 0, 0] - sy * r[..., 2, 0]
    ry_t_y = r[..., 1, 0]
    ry_t_z = sy * r[..., 0, 0] + cy * r[..., 2, 0]
    rz_10 = cp * ry_t_y - sp * ry_t_z  # Rx(-pitch)^T = Rx(pitch)
    roll = np.arctan2(rz_10, ry_t_x)
    return np.degrees(np.stack([yaw, pitch, roll], axis=-1))


def rotation_from_euler(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Inverse of :func:`euler_from_rotation` (degrees)."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(-p), -np.sin(-p)], [0, np.sin(-p), np.cos(-p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return FRONTAL @ (ry @ rx @ rz)
