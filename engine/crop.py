"""The face-crop convention shared by training and the engine.

A crop is a square region of interest ``roi = (x0, y0, x1, y1)`` in image pixels, resampled to a
``size x size`` model input. Pixel coordinates follow OpenCV: the centre of pixel ``(i, j)`` is at
``(x=j, y=i)``, so an image of width W spans ``[-0.5, W - 0.5]``. The roi edges map onto the crop's
edges ``-0.5`` and ``size - 0.5``; the crop camera's principal point is therefore ``(size - 1) / 2``.

Two ways to get a roi (constants chosen so both frame brows to chin with a margin, and roughly agree):
- from a detector box (CenterFace ``x1y1x2y2``): centre shifted down by ``BOX_SHIFT`` of the box size
  (detector boxes include the forehead, landmarks end at the chin), side ``BOX_SCALE`` x box size;
- from previous-frame landmarks: the bounding box of the 68 points (brows to chin), side
  ``LANDMARK_SCALE`` x its larger side, centred on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

# Detector box -> square: 3DDFA_V2 uses 1.58 and 0.14 for FaceBoxes; CenterFace boxes are slightly
# taller (they reach the hairline), so a smaller shift keeps the brows inside.
BOX_SCALE = 1.5
BOX_SHIFT = 0.1
# The 68-point bbox is smaller than a detector box (no forehead): a larger factor gives about the
# same framing as BOX_SCALE on a detector box.
LANDMARK_SCALE = 1.6


@dataclass(frozen=True)
class CropConvention:
    """The constants above, as stored in a model bundle's manifest."""

    box_scale: float = BOX_SCALE
    box_shift: float = BOX_SHIFT
    landmark_scale: float = LANDMARK_SCALE
    pixel_centers: str = "integer"  # OpenCV: pixel (i, j) centre at (j, i)

    def as_dict(self) -> dict:
        return asdict(self)


def roi_from_box(box, scale: float = BOX_SCALE, shift: float = BOX_SHIFT) -> np.ndarray:
    """(..., 4) x1y1x2y2 detector box(es) -> (..., 4) square roi(s)."""
    b = np.asarray(box, dtype=np.float64)
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    size = (w + h) / 2.0
    cx = (b[..., 0] + b[..., 2]) / 2.0
    cy = (b[..., 1] + b[..., 3]) / 2.0 + shift * size
    return _square(cx, cy, scale * size)


def roi_from_landmarks(landmarks, scale: float = LANDMARK_SCALE) -> np.ndarray:
    """(..., 68, 2) landmarks in image pixels -> (..., 4) square roi(s) around their bounding box."""
    p = np.asarray(landmarks, dtype=np.float64)
    # ufunc reductions directly (a per-frame path: ndarray.min/max add a wrapper call each)
    lo, hi = np.minimum.reduce(p, axis=-2), np.maximum.reduce(p, axis=-2)
    half = scale * np.maximum.reduce(hi - lo, axis=-1)[..., None] / 2.0
    centre = (lo + hi) / 2.0
    return np.concatenate([centre - half, centre + half], axis=-1)


def _square(cx, cy, side) -> np.ndarray:
    half = np.asarray(side) / 2.0
    return np.stack([cx - half, cy - half, cx + half, cy + half], axis=-1)


def jitter_roi(roi, rng: np.random.Generator, shift: float, scale: float) -> np.ndarray:
    """Random square roi around ``roi``: centre moved by up to ``shift`` x side, side x U(1-scale, 1+scale)."""
    r = np.asarray(roi, dtype=np.float64)
    side = r[2] - r[0]
    cx, cy = (r[0] + r[2]) / 2 + rng.uniform(-shift, shift, 2) * side
    return _square(cx, cy, side * rng.uniform(1.0 - scale, 1.0 + scale))


def crop_matrix(roi, size: int) -> np.ndarray:
    """(3, 3) affine mapping image pixels -> crop pixels for a square ``roi`` resampled to ``size``."""
    x0, y0, x1, y1 = (float(v) for v in roi)
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    # image edge x0 -> crop edge -0.5 (integer pixel centres on both sides)
    return np.array(
        [[sx, 0.0, -0.5 - x0 * sx], [0.0, sy, -0.5 - y0 * sy], [0.0, 0.0, 1.0]], dtype=np.float64
    )


def invert_affine(M: np.ndarray) -> np.ndarray:
    """Inverse of (..., 3, 3) matrices whose last row is ``[0, 0, 1]`` (crop affines, camera matrices) in
    closed form: a per-frame call costs a few array operations instead of a general LU inverse."""
    M = np.asarray(M, dtype=np.float64)
    a, b, c = M[..., 0, 0], M[..., 0, 1], M[..., 0, 2]
    d, e, f = M[..., 1, 0], M[..., 1, 1], M[..., 1, 2]
    inv = np.empty(M.shape)
    det = a * e - b * d
    inv[..., 0, 0], inv[..., 0, 1] = e / det, -b / det
    inv[..., 1, 0], inv[..., 1, 1] = -d / det, a / det
    inv[..., 0, 2] = (b * f - c * e) / det
    inv[..., 1, 2] = (c * d - a * f) / det
    inv[..., 2, :] = (0.0, 0.0, 1.0)
    return inv


def transform_points(M: np.ndarray, points) -> np.ndarray:
    """Apply a (3, 3) affine to (..., 2) points."""
    p = np.asarray(points, dtype=np.float64)
    return p @ M[:2, :2].T + M[:2, 2]


def crop_to_image(M: np.ndarray, points) -> np.ndarray:
    """Map (..., 2) crop-pixel points back to image pixels (inverse of ``crop_matrix``)."""
    return transform_points(invert_affine(M), points)


def box_factor(Minv: np.ndarray) -> int:
    """Integer box-filter factor :func:`warp_crop` applies before sampling with crop->image ``Minv``:
    ``step // 2`` for ``step`` image pixels per crop pixel, 1 (no filter) below 4x downscaling."""
    step = float(np.sqrt(abs(Minv[0, 0] * Minv[1, 1] - Minv[0, 1] * Minv[1, 0])))
    factor = int(step // 2)
    return factor if factor >= 2 else 1


def warp_crop(image: np.ndarray, M: np.ndarray, size: int, fill: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """Bilinear resample of an HxWx3 uint8 image into a ``size x size`` crop given image->crop ``M``.

    Pixels outside the image get ``fill``. When the crop is much smaller than the roi (downscaling by
    more than 2x, :func:`box_factor`) the image is first box-filtered (edge-padded to a multiple of the
    factor, block means rounded to uint8) so the bilinear samples do not alias. OpenCV does the work
    (INTER_AREA for the box filter, warpAffine for the bilinear taps; OpenCV >= 5 interpolates in
    float, so it matches a float bilinear to the rounding of .5 values). ``out``: an optional
    contiguous (size, size, 3) uint8 array to write into (no allocation per crop).
    """
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"warp_crop expects an HxWxC uint8 image, got {image.shape} {image.dtype}")
    return _warp(image, invert_affine(M), size, fill, out)


def _warp(image: np.ndarray, Minv: np.ndarray, size: int, fill: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`warp_crop` given the crop -> image affine ``Minv``."""
    factor = box_factor(Minv)
    src = image
    if factor > 1:  # integer box-downscale, then adjust the mapping to the smaller image
        # pad (edge values) to a multiple of the factor rather than trim: trimming would put a
        # black border inside the image
        ph, pw = -image.shape[0] % factor, -image.shape[1] % factor
        if ph or pw:
            src = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
        # block means, rounded to uint8 (INTER_AREA at an integer factor is the block mean): the
        # bilinear taps then run on uint8 too. Float means would differ by at most one grey level in
        # the crop (tests/test_crop.py) at 3-4x the cost on a large face, on the per-frame path.
        h, w = src.shape[:2]
        src = cv2.resize(src, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
        down = np.array([[1 / factor, 0, 0.5 / factor - 0.5], [0, 1 / factor, 0.5 / factor - 0.5], [0, 0, 1]])
        Minv = down @ Minv
    channels = image.shape[2]
    border = (float(fill),) * min(channels, 4)
    if out is None:
        out = np.empty((size, size, channels), np.uint8)
    cv2.warpAffine(src, Minv[:2], (size, size), dst=out, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                   borderMode=cv2.BORDER_CONSTANT, borderValue=border)
    return out


def crop_face(image: np.ndarray, M: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`warp_crop` of one face, at a cost proportional to the face, not the frame.

    The bilinear warp only reads the pixels it needs. When downscaling, warp_crop box-filters the whole
    image it gets; slicing the region first (its start aligned to the filter's block grid, so the
    blocks are the same) gives the identical crop. ``out``: optional (size, size, 3) uint8 to fill.
    """
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"crop_face expects an HxWxC uint8 image, got {image.shape} {image.dtype}")
    Minv = invert_affine(M)
    block = box_factor(Minv)
    if block == 1:
        return _warp(image, Minv, size, out=out)
    corners = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    pts = transform_points(Minv, corners)
    margin = 2 * block + 2  # bilinear taps of the (downscaled) source
    H, W = image.shape[:2]
    x0 = max(int(np.floor(pts[:, 0].min())) - margin, 0) // block * block
    y0 = max(int(np.floor(pts[:, 1].min())) - margin, 0) // block * block
    x1 = min(-(-(int(np.ceil(pts[:, 0].max())) + margin) // block) * block, W)
    y1 = min(-(-(int(np.ceil(pts[:, 1].max())) + margin) // block) * block, H)
    if x1 <= x0 or y1 <= y0:  # the crop is entirely outside the image: warp_crop's fill
        if out is None:
            return np.zeros((size, size, image.shape[2]), np.uint8)
        out.fill(0)
        return out
    shifted = Minv.copy()  # crop -> region: the image affine moved by the region's origin
    shifted[0, 2] -= x0
    shifted[1, 2] -= y0
    return _warp(image[y0:y1, x0:x1], shifted, size, out=out)
