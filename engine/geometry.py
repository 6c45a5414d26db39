"""Camera and head-pose conventions shared by engine, training and evaluation.

- Camera space: OpenCV axes (x right, y down, z forward from the camera), centimetres.
- Head frame: ICT FaceKit axes (x = subject's left, y = up, z = where the face looks), centimetres.
- ``R`` maps head frame to camera space: ``X_cam = R @ X_head + t``. A frontal face has ``R = FRONTAL``.
- Projection: ``[x, y, w] = K @ X_cam``, pixel = ``(x / w, y / w)``.
"""

from __future__ import annotations

import numpy as np

from engine.crop import invert_affine
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


def orthonormalize(m: np.ndarray) -> np.ndarray:
    """Nearest rotation matrix (Frobenius) to (..., 3, 3) matrices: SVD, with the determinant forced to +1."""
    u, _, vt = np.linalg.svd(np.asarray(m, np.float64))
    d = np.sign(np.linalg.det(u @ vt))
    u = u.copy()
    u[..., :, 2] *= np.where(d == 0, 1.0, d)[..., None]  # u @ diag(1, 1, d) without the matrix
    return u @ vt


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation taking unit vector ``a`` to unit vector ``b`` (3,) (Rodrigues)."""
    v, c = np.cross(a, b), float(a @ b)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def rotation_from_z(b: np.ndarray) -> np.ndarray:
    """Smallest rotations taking +z to the unit vectors ``b`` (..., 3), (..., 3, 3): Rodrigues with
    v = z x b = (-b1, b0, 0), written out (I + [v]x + [v]x^2 / (1 + c), c = b2), vectorised."""
    b0, b1, c = b[..., 0], b[..., 1], b[..., 2]
    parallel = b0 * b0 + b1 * b1 < 1e-24  # |v| < 1e-12: the identity (as for b = +z)
    k = 1.0 / np.where(parallel, 1.0, 1.0 + c)
    R = np.zeros(b.shape[:-1] + (3, 3))
    R[..., 0, 0] = 1.0 - b0 * b0 * k
    R[..., 0, 1] = R[..., 1, 0] = -b0 * b1 * k
    R[..., 1, 1] = 1.0 - b1 * b1 * k
    R[..., 0, 2], R[..., 1, 2] = b0, b1
    R[..., 2, 0], R[..., 2, 1] = -b0, -b1
    R[..., 2, 2] = 1.0 - (b0 * b0 + b1 * b1) * k
    return np.where(parallel[..., None, None], np.eye(3), R)


def image_intrinsics(width: int, height: int, focal_px: float | None = None) -> np.ndarray:
    """Assumed (3, 3) camera matrix of a frame: focal = ``focal_px`` or the image diagonal, centred."""
    f = float(focal_px) if focal_px else float(np.hypot(width, height))
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def pose_to_image(R_crop: np.ndarray, t_crop: np.ndarray, M: np.ndarray, K0: np.ndarray, K: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pose in a crop's nominal camera K0 -> pose in the image camera K (perspective-crop approximation).

    The crop is a virtual camera turned towards the crop centre: depth scales by ``f_K / f_crop``
    (f_crop = K0's focal in image pixels), the head origin stays on the ray through its image position,
    and the rotation turns by the rotation between the optical axis and the ray through the crop
    centre. ``M``: image -> crop affine. Returns (R, t) with ``X_cam = R @ X_head + t``. Vectorised:
    ``R_crop`` (..., 3, 3), ``t_crop`` (..., 3), ``M`` and ``K`` (..., 3, 3) (``K`` may be one (3, 3)).
    """
    return pose_from_crop(R_crop, t_crop, invert_affine(M), K0, invert_affine(K), K[..., 0, 0])


def pose_from_crop(R_crop: np.ndarray, t_crop: np.ndarray, Minv: np.ndarray, K0: np.ndarray, Kinv: np.ndarray,
                   focal: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pose_to_image` given the inverses (crop -> image ``Minv``, ``Kinv``) and K's focal."""
    A = Minv[..., :2, :2]
    px_per_crop_px = np.sqrt(np.abs(A[..., 0, 0] * A[..., 1, 1] - A[..., 0, 1] * A[..., 1, 0]))
    f_crop = K0[0, 0] * px_per_crop_px  # the crop camera's focal, in image pixels
    centre = Minv @ np.array([K0[0, 2], K0[1, 2], 1.0])  # crop principal point in the image
    ray = (Kinv @ centre[..., None])[..., 0]
    R_ray = rotation_from_z(ray / np.linalg.norm(ray, axis=-1, keepdims=True))
    # virtual camera (focal K's, axis through the crop centre): lateral cm kept, depth rescaled
    t_virtual = t_crop.copy()
    t_virtual[..., 2] *= focal / f_crop
    origin = t_crop @ K0.T
    origin /= origin[..., 2:]  # the head origin in crop pixels (homogeneous)
    direction = (Kinv @ (Minv @ origin[..., None]))[..., 0]
    scale = np.linalg.norm(t_virtual, axis=-1, keepdims=True) / np.linalg.norm(direction, axis=-1, keepdims=True)
    return R_ray @ R_crop, scale * direction  # origin exactly on its ray
