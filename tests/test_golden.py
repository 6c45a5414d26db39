"""Nothing lost by the fast per-frame path: the default stages on the sample clip against the committed
golden run (tests/golden.py writes it and explains replay vs closed loop; regenerate the fixture with
``python tests/golden.py`` when the default bundle changes)."""

import numpy as np
import pytest

from golden import CONFIGS, FIXTURE, run_golden

LANDMARK_TOL_PX = 0.05
# Closed loop: mean landmark distance bounds, a few times what the golden code itself drifts when every
# crop is moved by 0.001 px (0.09 px with the detector on every frame, 0.30 px tracked every 10th).
CLOSED_LOOP_MEAN_PX = {"every": 0.5, "tracked": 1.5}


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    if not FIXTURE.is_file():
        pytest.fail(f"{FIXTURE} missing: write it with 'python tests/golden.py'")
    return dict(np.load(FIXTURE))


def golden(fixture: dict[str, np.ndarray], config: str) -> dict[str, np.ndarray]:
    return {k.split("/", 1)[1]: v for k, v in fixture.items() if k.startswith(config + "/")}


def check_same_faces(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> np.ndarray:
    np.testing.assert_array_equal(got["detected"], want["detected"])  # the same frames were detected
    np.testing.assert_array_equal(got["track_id"], want["track_id"])
    faces = np.isfinite(want["confidence"])
    np.testing.assert_array_equal(np.isfinite(got["confidence"]), faces)
    return faces


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_replayed_crops_give_the_golden_landmarks(fixture, config):
    want = golden(fixture, config)
    got = run_golden(config, replay=want["crop_matrices"])
    assert len(got["crop_matrices"]) == len(want["crop_matrices"])  # a crop for every golden face, no more
    faces = check_same_faces(got, want)
    err = np.abs(got["landmarks_2d"][faces] - want["landmarks_2d"][faces]).max()
    assert err <= LANDMARK_TOL_PX, f"landmarks_2d moved by up to {err:.4f} px"
    if "landmarks_3d" in want:
        err3 = np.abs(got["landmarks_3d"][faces] - want["landmarks_3d"][faces]).max()
        assert err3 <= 0.05, f"landmarks_3d moved by up to {err3:.4f} cm"
    np.testing.assert_allclose(got["euler"][faces], want["euler"][faces], atol=0.05)  # degrees
    np.testing.assert_allclose(got["translation"][faces], want["translation"][faces], atol=0.05)  # cm
    np.testing.assert_allclose(got["confidence"][faces], want["confidence"][faces], atol=1e-3)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_closed_loop_tracks_like_the_golden_run(fixture, config):
    want = golden(fixture, config)
    got = run_golden(config)
    faces = check_same_faces(got, want)
    dist = np.linalg.norm(got["landmarks_2d"][faces] - want["landmarks_2d"][faces], axis=-1)
    assert dist.mean() <= CLOSED_LOOP_MEAN_PX[config], f"mean landmark distance {dist.mean():.3f} px"
