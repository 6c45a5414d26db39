"""Masked multi-view lifting on synthetic projections of known 3D points through known cameras."""

import time

import numpy as np

from engine.assets import shared_asset
from training.lifting import REASON_TOO_FEW_VIEWS, LiftingConfig, lift
from training.masks import landmark_visibility


def look_at_camera(az_deg: float, el_deg: float, dist: float = 60.0, f: float = 600.0, size: int = 256):
    """Camera on a sphere around the head looking at its origin (az > 0: subject's left, el > 0: above)."""
    az, el = np.radians([az_deg, el_deg])
    centre = dist * np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
    z = -centre / np.linalg.norm(centre)
    x = np.cross([0.0, -1.0, 0.0], z)
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    return K, R, -R @ centre


def rig(n_az: int = 7):
    views = [(az, el) for az in np.linspace(-75, 75, n_az) for el in np.linspace(-30, 30, 5)]
    K, R, t = (np.stack(a) for a in zip(*(look_at_camera(az, el) for az, el in views)))
    return K, R, t


def truth() -> np.ndarray:
    m = np.load(shared_asset("ict_facekit", "ict_face_model.npz"))
    return m["neutral"][m["landmarks68"]].astype(np.float64)


def observe(K, R, t, X):
    Xc = np.einsum("vij,lj->vli", R, X) + t[:, None]
    p = np.einsum("vij,vlj->vli", K, Xc)
    return p[..., :2] / p[..., 2:]


def test_recovers_points_from_noisy_detections_with_outliers():
    rng = np.random.default_rng(0)
    K, R, t = rig()
    X = truth()
    obs = observe(K, R, t, X) + rng.normal(0, 1.0, (len(K), 68, 2))
    outliers = rng.random((len(K), 68)) < 0.1
    obs[outliers] += rng.uniform(-40, 40, (outliers.sum(), 2))  # gross teacher mistakes
    mask = landmark_visibility(R)
    t0 = time.perf_counter()
    res = lift(K, R, t, obs, mask)
    elapsed = time.perf_counter() - t0
    err = np.linalg.norm(res.points - X, axis=1)
    assert res.ok, res.reason
    assert err.mean() < 0.1 and err.max() < 0.4, err  # cm; outliers of up to 40 px are ~3 cm off
    assert np.nanmedian(res.residuals_px) < 1.5
    assert elapsed < 0.5, elapsed  # vectorised: one identity in a few ms (generous bound for loaded CI)
    # The robust loss matters: plain least squares (huge Huber threshold) is visibly worse.
    plain = lift(K, R, t, obs, mask, LiftingConfig(huber=1e6, max_mean_residual=1, max_landmark_residual=1))
    assert np.linalg.norm(plain.points - X, axis=1).mean() > 1.5 * err.mean()


def test_masking_ignores_hidden_views():
    rng = np.random.default_rng(1)
    K, R, t = rig()
    X = truth()
    obs = observe(K, R, t, X) + rng.normal(0, 0.5, (len(K), 68, 2))
    mask = landmark_visibility(R)
    garbage = obs.copy()
    garbage[~mask] = rng.uniform(0, 256, ((~mask).sum(), 2))  # hidden landmarks: teacher guesses
    res = lift(K, R, t, garbage, mask)
    assert res.ok
    assert np.linalg.norm(res.points - X, axis=1).max() < 0.3
    assert (res.n_views == mask.sum(0)).all()
    assert np.isnan(res.residuals_px[~mask]).all()


def test_rejects_landmark_seen_in_too_few_views():
    K, R, t = rig()
    X = truth()
    obs = observe(K, R, t, X)
    mask = landmark_visibility(R).copy()
    mask[:, 30] = False
    mask[0, 30] = True  # one view only: cannot be triangulated
    res = lift(K, R, t, obs, mask)
    assert not res.ok and res.reason == REASON_TOO_FEW_VIEWS
    assert res.n_views[30] == 1


def test_rejects_inconsistent_detections_with_a_reason():
    rng = np.random.default_rng(2)
    K, R, t = rig()
    obs = observe(K, R, t, truth())
    obs += rng.normal(0, 25.0, obs.shape)  # a teacher that is lost in every view (~10 % of the face)
    res = lift(K, R, t, obs, landmark_visibility(R))
    assert not res.ok and res.reason in ("high_residual", "outlier_landmark")
    assert res.landmark_residual.mean() > LiftingConfig().max_mean_residual
