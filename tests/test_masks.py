"""Normals template and the shared occlusion mask (engine.geometry.visibility_mask)."""

import numpy as np

from engine.geometry import facing_camera, rotation_from_euler, visibility_thresholds
from engine.landmarks68 import NOSE_BRIDGE, REGIONS
from training.masks import landmark_visibility, normals_template

RIGHT_EYE, LEFT_EYE = np.arange(36, 42), np.arange(42, 48)  # subject's right / left


def test_normals_template_is_unit_and_faces_forward():
    n = normals_template()
    assert n.shape == (68, 3) and n.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1, atol=1e-5)
    assert (n[27:68, 2] > 0.5).all()  # nose, eyes, mouth look toward +Z
    assert n[0, 0] < -0.7 and n[16, 0] > 0.7  # jaw contour looks sideways (+X is the subject's left)
    # The neutral mesh is mirror-symmetric: mirrored pairs have mirrored normals.
    from engine.landmarks68 import FLIP_PERMUTATION

    mirrored = n[FLIP_PERMUTATION] * np.array([-1, 1, 1])
    np.testing.assert_allclose(mirrored, n, atol=0.05)


def test_frontal_view_hides_only_what_the_thresholds_dictate():
    R = rotation_from_euler(0, 0, 0)
    visible = landmark_visibility(R)
    dots = facing_camera(R, normals_template())
    np.testing.assert_array_equal(visible, dots > visibility_thresholds())
    # Everything inside the face is visible; only the side contour (normals at ~80 deg) is masked.
    assert visible[17:].all()
    assert visible[8] and not visible[0] and not visible[16]


def test_yaw_60_hides_far_contour_keeps_nose_bridge():
    visible = landmark_visibility(rotation_from_euler(60, 0, 0))  # turned to the subject's left
    assert not visible[REGIONS["contour"]][9:].any()  # the subject's left jaw (far side) is hidden
    assert visible[NOSE_BRIDGE].all()  # kept thanks to the -0.1 threshold
    assert visible[RIGHT_EYE].all()
    # Mirror: yaw -60 hides the other side.
    visible = landmark_visibility(rotation_from_euler(-60, 0, 0))
    assert not visible[:8].any() and visible[NOSE_BRIDGE].all() and visible[LEFT_EYE].all()


def test_profile_hides_far_eye():
    visible = landmark_visibility(rotation_from_euler(90, 0, 0))
    assert not visible[LEFT_EYE].any()
    assert visible[NOSE_BRIDGE].any()


def test_batched_rotations_and_torch():
    import torch

    from engine.geometry import visibility_mask

    Rs = np.stack([rotation_from_euler(y, 0, 0) for y in (-60, 0, 60)])
    batch = landmark_visibility(Rs)
    assert batch.shape == (3, 68)
    t = visibility_mask(torch.tensor(Rs, dtype=torch.float32), torch.tensor(normals_template()))
    np.testing.assert_array_equal(t.numpy(), batch)
