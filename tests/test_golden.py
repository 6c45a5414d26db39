"""Nothing lost by the fast per-frame path: the default stages on the sample clip give the landmarks of the
committed fixture (tests/golden.py writes it; regenerate with ``python tests/golden.py`` when the default
bundle changes)."""

import numpy as np
import pytest

from golden import CONFIGS, FIXTURE, run_golden

LANDMARK_TOL_PX = 0.05


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    if not FIXTURE.is_file():
        pytest.fail(f"{FIXTURE} missing: write it with 'python tests/golden.py'")
    return dict(np.load(FIXTURE))


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_landmarks_match_the_golden_run(fixture, config):
    got = run_golden(config)
    want = {k.split("/", 1)[1]: v for k, v in fixture.items() if k.startswith(config + "/")}
    np.testing.assert_array_equal(got["detected"], want["detected"])  # the same frames were detected
    np.testing.assert_array_equal(got["track_id"], want["track_id"])
    faces = np.isfinite(want["confidence"])
    np.testing.assert_array_equal(np.isfinite(got["confidence"]), faces)
    err = np.abs(got["landmarks_2d"][faces] - want["landmarks_2d"][faces]).max()
    assert err <= LANDMARK_TOL_PX, f"landmarks_2d moved by up to {err:.4f} px"
    if "landmarks_3d" in want:
        err3 = np.abs(got["landmarks_3d"][faces] - want["landmarks_3d"][faces]).max()
        assert err3 <= 0.05, f"landmarks_3d moved by up to {err3:.4f} cm"
    np.testing.assert_allclose(got["euler"][faces], want["euler"][faces], atol=0.1)  # degrees
    np.testing.assert_allclose(got["translation"][faces], want["translation"][faces], atol=0.05)  # cm
    np.testing.assert_allclose(got["confidence"][faces], want["confidence"][faces], atol=2e-3)
