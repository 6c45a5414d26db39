import math

import numpy as np
import pytest
import torch

from engine.geometry import rotation_from_euler
from tiny_dataset import normals_template
from training.losses import LossConfig, facelift_loss, geodesic, laplace_nll, loss_2d


def test_laplace_nll_isotropic_closed_form():
    diff = torch.tensor([[0.03, -0.04]])
    b = 0.02
    tril = torch.tensor([[[b, 0.0], [0.0, b]]])
    # log|Sigma|/2 + sqrt(3 d^T Sigma^-1 d) with Sigma = b^2 I
    expected = 2 * math.log(b) + math.sqrt(3) * 0.05 / b
    assert laplace_nll(diff, tril).item() == pytest.approx(expected, rel=1e-5)


def test_laplace_nll_full_cholesky_matches_inverse():
    L = torch.tensor([[0.03, 0.0], [0.01, 0.02]], dtype=torch.float64)
    d = torch.tensor([0.02, -0.01], dtype=torch.float64)
    sigma = L @ L.T
    expected = 0.5 * torch.logdet(sigma) + torch.sqrt(3 * d @ torch.linalg.inv(sigma) @ d)
    assert laplace_nll(d, L).item() == pytest.approx(expected.item(), rel=1e-9)


def test_l1_mse_forms():
    d = torch.tensor([0.1, -0.2])
    eye = torch.eye(2)
    assert loss_2d(d, eye, "l1").item() == pytest.approx(0.3)
    assert loss_2d(d, eye, "mse").item() == pytest.approx(0.05)
    with pytest.raises(ValueError):
        loss_2d(d, eye, "huber")


def test_geodesic_angle_and_gradient_at_zero():
    R1 = torch.tensor(rotation_from_euler(10, 0, 0))
    R2 = torch.tensor(rotation_from_euler(40, 0, 0))
    assert math.degrees(geodesic(R1, R2).item()) == pytest.approx(30, abs=1e-6)
    R = R1.clone().requires_grad_(True)
    geodesic(R, R1).backward()
    assert torch.isfinite(R.grad).all()


def _batch(B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = torch.tensor(np.stack([rotation_from_euler(a, 0, 0) for a in np.linspace(-70, 70, B)]), dtype=torch.float32)
    return {
        "kind": torch.tensor([0, 0, 1, 1][:B]),
        "landmarks_2d": torch.rand(B, 68, 2, generator=g) * 32,
        "weight_2d": torch.ones(B, 68),
        "landmarks_3d": torch.randn(B, 68, 3, generator=g) * 5,
        "rotation": R,
        "translation": torch.tensor([[0.0, 0.0, 60.0]]).repeat(B, 1),
    }


def _pred(batch, rotation):
    B = batch["kind"].shape[0]
    return {
        "landmarks_2d": batch["landmarks_2d"] + 1.0,
        "landmarks_3d": batch["landmarks_3d"] + 0.5,
        "rotation": rotation,
        "translation": batch["translation"] + 1.0,
        "scale_tril": torch.eye(2).expand(B, 68, 2, 2) * 0.05,
    }


@pytest.mark.parametrize("kind", ["lll", "l1", "mse"])
@pytest.mark.parametrize("mode", ["both", "mf_only", "mv_only"])
def test_loss_terms_finite_and_mode_switch(kind, mode):
    normals = torch.tensor(normals_template())
    batch = _batch()
    total, terms = facelift_loss(_pred(batch, batch["rotation"]), batch, normals,
                                 LossConfig(loss_2d=kind, mode=mode), crop_size=32, nominal_depth_cm=60)
    assert math.isfinite(total.item())
    mv = ["mv_3d", "mv_t", "mv_2d", "mv_rot"]
    if mode == "mf_only":
        assert all(terms[k] == 0 for k in mv) and terms["mf_2d"] != 0
    if mode == "mv_only":
        assert terms["mf_2d"] == 0 and terms["mv_3d"] > 0
    if mode == "both":
        assert terms["mv_3d"] > 0 and terms["mf_2d"] != 0


def test_mf_mask_follows_predicted_rotation():
    """A landmark hidden under the PREDICTED pose contributes nothing to L_mf."""
    normals = torch.tensor(normals_template())
    batch = _batch()
    batch["kind"][:] = 1
    profile = torch.tensor(np.stack([rotation_from_euler(80, 0, 0)] * 4), dtype=torch.float32)
    pred = _pred(batch, profile)
    pred["landmarks_2d"] = pred["landmarks_2d"].clone().requires_grad_(True)
    total, _ = facelift_loss(pred, batch, normals, LossConfig(), crop_size=32, nominal_depth_cm=60)
    total.backward()
    g = pred["landmarks_2d"].grad.abs().sum(-1)[0]
    hidden = g == 0
    assert 0 < hidden.sum() < 68
    assert hidden[9:17].all() and not hidden[0:8].any()  # yaw 80: the subject turns left, hiding their left jaw
