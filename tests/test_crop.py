import numpy as np
import pytest

from engine.crop import (
    crop_matrix, crop_to_image, invert_affine, jitter_roi, roi_from_box, roi_from_landmarks, transform_points, warp_crop,
)


def test_roi_from_box_is_square_shifted_down():
    roi = roi_from_box([100, 50, 200, 170])
    assert roi[2] - roi[0] == pytest.approx(roi[3] - roi[1]) == pytest.approx(1.5 * 110)
    assert (roi[0] + roi[2]) / 2 == pytest.approx(150)
    assert (roi[1] + roi[3]) / 2 == pytest.approx(110 + 0.1 * 110)  # below the box centre


def test_roi_from_landmarks_contains_points():
    rng = np.random.default_rng(0)
    pts = rng.uniform([40, 60], [120, 160], (68, 2))
    roi = roi_from_landmarks(pts)
    assert roi[2] - roi[0] == pytest.approx(roi[3] - roi[1])
    assert (pts >= roi[:2]).all() and (pts <= roi[2:]).all()
    batch = roi_from_landmarks(np.stack([pts, pts + 5]))
    assert np.allclose(batch[1] - batch[0], 5)


def test_crop_matrix_maps_roi_edges_and_inverts():
    M = crop_matrix([10, 20, 110, 120], 50)
    # roi edges -> crop edges (-0.5, size - 0.5); centre -> (size - 1) / 2
    assert np.allclose(transform_points(M, [[10, 20], [110, 120], [60, 70]]), [[-0.5, -0.5], [49.5, 49.5], [24.5, 24.5]])
    pts = np.random.default_rng(1).uniform(0, 200, (68, 2))
    assert np.allclose(crop_to_image(M, transform_points(M, pts)), pts)


def test_invert_affine_equals_the_general_inverse():
    # crop affines, camera matrices and any 2D affine, one or a stack (the per-frame path's inverse)
    rng = np.random.default_rng(2)
    M = np.tile(np.eye(3), (6, 1, 1))
    M[:, :2] = rng.normal(0, 3, (6, 2, 3))
    M[0] = crop_matrix([10.3, -20.1, 300.7, 270.5], 96)
    M[1] = [[700.0, 0.0, 255.5], [0.0, 700.0, 199.5], [0.0, 0.0, 1.0]]
    np.testing.assert_allclose(invert_affine(M), np.linalg.inv(M), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(invert_affine(M[0]), np.linalg.inv(M[0]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("roi,size", [([30.3, 12.7, 90.3, 72.7], 48), ([0, 0, 200, 200], 32), ([-20, -10, 60, 70], 40)])
def test_warp_crop_samples_the_mapped_pixel(roi, size):
    # image whose red channel is x and green is y: a crop pixel must hold its image coordinates
    H, W = 200, 220
    ys, xs = np.mgrid[0:H, 0:W]
    image = np.stack([xs % 256, ys % 256, np.full_like(xs, 200)], -1).astype(np.uint8)
    M = crop_matrix(roi, size)
    crop = warp_crop(image, M, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1).reshape(-1, 2)
    src = crop_to_image(M, grid)
    inside = (src[:, 0] >= 1) & (src[:, 0] < W - 2) & (src[:, 1] >= 1) & (src[:, 1] < H - 2)
    got = crop.reshape(-1, 3)[inside]
    assert np.abs(got[:, 0] - src[inside, 0]).max() <= 1.0
    assert np.abs(got[:, 1] - src[inside, 1]).max() <= 1.0
    outside = (src[:, 0] < -1) | (src[:, 1] < -1)
    assert (crop.reshape(-1, 3)[outside] == 0).all()


def test_jitter_roi_stays_square_and_bounded():
    rng = np.random.default_rng(0)
    base = np.array([0, 0, 100, 100.0])
    for _ in range(20):
        r = jitter_roi(base, rng, 0.05, 0.1)
        side = r[2] - r[0]
        assert side == pytest.approx(r[3] - r[1]) and 90 <= side <= 110
        assert abs((r[0] + r[2]) / 2 - 50) <= 5.01


def _reference_warp(image: np.ndarray, M: np.ndarray, size: int, fill: int = 0) -> np.ndarray:
    """The float numpy warp warp_crop replaced (box pre-filter, then bilinear; kept to check OpenCV's)."""
    Minv = np.linalg.inv(M)
    step = float(np.sqrt(abs(np.linalg.det(Minv[:2, :2]))))
    src, factor = image.astype(np.float64), int(step // 2)
    if factor >= 2:
        ph, pw = -image.shape[0] % factor, -image.shape[1] % factor
        padded = np.pad(src, ((0, ph), (0, pw), (0, 0)), mode="edge")
        h, w = padded.shape[:2]
        src = padded.reshape(h // factor, factor, w // factor, factor, -1).mean(axis=(1, 3))
        Minv = np.array([[1 / factor, 0, 0.5 / factor - 0.5], [0, 1 / factor, 0.5 / factor - 0.5], [0, 0, 1]]) @ Minv
    gx, gy = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    xs = Minv[0, 0] * gx + Minv[0, 1] * gy + Minv[0, 2]
    ys = Minv[1, 0] * gx + Minv[1, 1] * gy + Minv[1, 2]
    H, W = src.shape[:2]
    x0, y0 = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
    fx, fy = (xs - x0)[..., None], (ys - y0)[..., None]

    def tap(yy, xx):
        inside = ((xx >= 0) & (xx < W) & (yy >= 0) & (yy < H))[..., None]
        return np.where(inside, src[np.clip(yy, 0, H - 1), np.clip(xx, 0, W - 1)], float(fill))

    out = (tap(y0, x0) * (1 - fx) * (1 - fy) + tap(y0, x0 + 1) * fx * (1 - fy)
           + tap(y0 + 1, x0) * (1 - fx) * fy + tap(y0 + 1, x0 + 1) * fx * fy)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def test_opencv_warp_matches_the_float_reference():
    # OpenCV >= 5 interpolates in float: without the box filter only .5 values may round the other way
    # (<= 1 level, rare); with it, the block means are rounded to uint8 first: still <= 1 level, more often
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (239, 321, 3), dtype=np.uint8)
    counts = {False: [0, 0], True: [0, 0]}  # box-filtered? -> [pixels that differ, pixels]
    for _ in range(40):  # inside, across the border, outside; up- and downscaled (box filter up to 6x)
        x0, y0 = rng.uniform(-150, 300, 2)
        side, size = rng.uniform(10, 400), int(rng.choice([32, 64, 128]))
        M = crop_matrix([x0, y0, x0 + side, y0 + side], size)
        out = np.empty((size, size, 3), np.uint8)
        got = warp_crop(image, M, size, fill=7, out=out)
        assert got is out
        diff = np.abs(got.astype(int) - _reference_warp(image, M, size, fill=7))
        assert diff.max() <= 1, (side, size)
        c = counts[side / size >= 4]
        c[0], c[1] = c[0] + np.count_nonzero(diff), c[1] + diff.size
    assert counts[True][1] and counts[False][1]
    assert counts[False][0] <= 1e-3 * counts[False][1]
    assert counts[True][0] <= 0.3 * counts[True][1], counts
