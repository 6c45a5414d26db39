import numpy as np

from engine.geometry import FRONTAL, euler_from_rotation
from training.cameras import LOOK_AT, AugmentedCameraSpace, rig_camera, rig_views
from training.generators.ict_model import load_ict_model


def test_rig_has_41_symmetric_views_without_extreme_corners():
    views = rig_views()
    assert len(views) == 41 and len(set(views)) == 41
    for a, e in [(60, 30), (60, 20), (-60, 30), (-60, -20), (60, -30)]:
        assert (float(a), float(e)) not in views
    for a, e in views:
        assert (-a, e) in views and (a, -e) in views
    assert (0.0, 0.0) in views and (60.0, 10.0) in views and (40.0, 30.0) in views


def test_frontal_camera_conventions():
    cam = rig_camera(0, 0, 256)
    assert np.allclose(cam.R, FRONTAL)
    m = load_ict_model()
    lm = cam.project(m.neutral[m.landmarks68].astype(float))
    centre = (256 - 1) / 2
    assert np.linalg.norm(lm[30] - centre) < 256 * 0.05  # nose tip near the centre
    assert lm[36, 0] < centre < lm[45, 0]  # subject's right eye corner on the image left
    width = lm[:, 0].max() - lm[:, 0].min()
    assert 0.28 < width / 256 < 0.4  # the face box covers about a third of the image


def test_positive_azimuth_shows_the_left_cheek():
    cam = rig_camera(45, 0, 256)
    assert cam.centre[0] > 0  # camera on the subject's left (+X)
    yaw = euler_from_rotation(cam.R)[0]
    assert yaw < -40  # the subject appears turned to its right
    m = load_ict_model()
    lm = m.neutral[m.landmarks68].astype(float)
    # The left jaw (16) is closer to the camera than the right jaw (0).
    assert np.linalg.norm(lm[16] - cam.centre) < np.linalg.norm(lm[0] - cam.centre)
    assert rig_camera(0, 20, 64).centre[1] > LOOK_AT[1]  # elevation > 0: above


def test_augmented_space_is_reproducible_and_in_range():
    space = AugmentedCameraSpace()
    a = space.sample(np.random.default_rng(1), 128)
    b = space.sample(np.random.default_rng(1), 128)
    assert np.allclose(a.K, b.K) and np.allclose(a.R, b.R) and np.allclose(a.t, b.t) and a.width == 128
    rng = np.random.default_rng(0)
    for _ in range(50):
        c = space.sample(rng)
        yaw, pitch, roll = euler_from_rotation(c.R)
        assert abs(yaw) < 80 and abs(pitch) < 45
        assert np.allclose(c.R @ c.R.T, np.eye(3), atol=1e-9)
        # the face centre projects inside the image
        p = c.project(LOOK_AT[None])[0]
        assert 0 < p[0] < c.width and 0 < p[1] < c.height
