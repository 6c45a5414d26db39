"""Landmark and pose metrics (training/evaluation/metrics.py) on hand-computed examples."""

import numpy as np
import pytest
import torch

from engine.geometry import rotation_from_euler
from training.evaluation.metrics import (
    box_scale,
    boxes_from_xywh,
    by_category,
    euler_errors_deg,
    landmark_box,
    landmark_report,
    nme,
    nme_3d,
    pose_frobenius,
    pose_geodesic_deg,
    pose_report,
    region_values,
)


def test_nme_hand_computed():
    # Box 100 x 25 -> sqrt(w*h) = 50. Two landmarks off by (3, 4) = 5 px and 0 px.
    gt = np.array([[[10.0, 10.0], [20.0, 20.0]]])
    pred = np.array([[[13.0, 14.0], [20.0, 20.0]]])
    boxes = np.array([[0.0, 0.0, 100.0, 25.0]])
    assert box_scale(boxes)[0] == pytest.approx(50.0)
    # mean(5/50, 0/50) * 100 = 5.0
    assert nme(pred, gt, boxes) == pytest.approx(5.0)
    assert nme(torch.tensor(pred), torch.tensor(gt), torch.tensor(boxes)) == pytest.approx(5.0)
    # Only the visible landmark counts.
    assert nme(pred, gt, boxes, visible=np.array([[True, False]])) == pytest.approx(10.0)
    np.testing.assert_allclose(boxes_from_xywh([[5, 6, 10, 20]]), [[5, 6, 15, 26]])
    np.testing.assert_allclose(landmark_box(gt), [[10, 10, 20, 20]])
    with pytest.raises(ValueError, match="positive size"):
        box_scale([[0, 0, 0, 10]])


def test_nme_3d_interocular_and_box():
    gt = np.zeros((1, 68, 3))
    gt[0, 36] = [-5.0, 0, 0]
    gt[0, 45] = [5.0, 0, 0]  # inter-ocular distance 10
    pred = gt.copy()
    pred[0, :, 2] += 1.0  # every landmark 1 unit off in depth
    assert nme_3d(pred, gt, "interocular") == pytest.approx(10.0)
    assert nme_3d(pred, gt, "box", boxes=[[0, 0, 20, 5]]) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="normaliser"):
        nme_3d(pred, gt, "bogus")


def test_pose_errors():
    r_gt = np.stack([rotation_from_euler(10, 5, -3), rotation_from_euler(-30, 0, 0)])
    r_pred = np.stack([rotation_from_euler(10, 5, -3), rotation_from_euler(-20, 0, 0)])
    geo = pose_geodesic_deg(r_pred, r_gt)
    np.testing.assert_allclose(geo, [0.0, 10.0], atol=1e-5)
    # ||I - R||_F for a rotation by theta is 2 sqrt(2) sin(theta / 2).
    np.testing.assert_allclose(pose_frobenius(r_pred, r_gt), [0.0, 2 * np.sqrt(2) * np.sin(np.radians(5))],
                               atol=1e-7)
    np.testing.assert_allclose(euler_errors_deg(r_pred, r_gt), [[0, 0, 0], [10, 0, 0]], atol=1e-6)
    # Angle differences wrap: 179 vs -179 roll is 2 degrees apart.
    wrap = euler_errors_deg(rotation_from_euler(0, 0, 179), rotation_from_euler(0, 0, -179))
    np.testing.assert_allclose(wrap, [[0, 0, 2]], atol=1e-6)
    rep = pose_report(r_pred, r_gt)
    assert rep["geodesic_deg"] == pytest.approx(5.0, abs=1e-5) and rep["yaw_deg"] == pytest.approx(5.0)


def test_regions_and_categories():
    errors = np.zeros((4, 68))
    errors[:, 0:17] = 0.01  # contour 1.0
    errors[:, 48:68] = 0.03  # mouth 3.0
    errors[3] += 0.02  # one image worse everywhere
    reg = region_values(errors[:3])
    assert reg["contour"] == pytest.approx(1.0) and reg["mouth"] == pytest.approx(3.0)
    assert reg["nose"] == 0.0
    assert reg["full"] == pytest.approx(100 * (17 * 0.01 + 20 * 0.03) / 68)
    cats = by_category(errors, {"light": ["std", "std", "std", "dark"], "age": [None, "young", "young", "old"]})
    assert cats["light"]["std"]["mouth"] == pytest.approx(3.0)
    assert cats["light"]["dark"]["mouth"] == pytest.approx(5.0)
    assert cats["light"]["dark"]["count"] == 1 and "None" not in cats["age"]
    rep = landmark_report(errors, {"light": ["a", "a", "b", "b"]})
    assert rep["images"] == 4 and len(rep["per_landmark"]) == 68
    with pytest.raises(ValueError, match="3 values for 4 images"):
        by_category(errors, {"x": [1, 2, 3]})
