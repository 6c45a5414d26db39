"""FaceLift training losses (docs/method.md section 3): ``L = L_mf + L_mv``.

- ``L_mv = w_3d MSE(L3D) + w_t MSE(t) + w_2d LLL(2.5D) + w_rot geodesic(R)`` on multi-view samples;
- ``L_mf = w_mf sum_n m_n c_n LLL(l2D_n, pi(l3D_n))`` on multi-frame samples, ``m`` the occlusion mask
  from the PREDICTED rotation (engine.geometry.visibility_mask, normals template), ``c`` the teacher
  confidence (a soft weight; 1 for MV).

Scale-free units so the weights transfer between crop sizes: 2D coordinates are divided by the crop
side, 3D landmarks by ``norm_3d_cm`` and translations by the nominal depth. Each term is a mean over the
samples of its kind in the batch (0 when the batch has none). The LLL goes negative as the
predicted scale shrinks (log|Sigma| < 0 for scales below one crop side): a negative total is normal.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from engine.geometry import visibility_mask


class LossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loss_2d: Literal["lll", "l1", "mse"] = "lll"
    mode: Literal["both", "mf_only", "mv_only"] = "both"
    w_3d: float = 1.0
    w_t: float = 1.0
    w_2d_mv: float = 1.0
    w_rot: float = 1.0
    w_2d_mf: float = 1.0
    norm_3d_cm: float = 10.0
    # "fixed": the w_* weights alone. "learned": the 3D, rotation and translation terms become Laplace
    # negative log-likelihoods with a learned scale each (``LossScales``), like the 2D LLL whose
    # gradient grows as 1/scale: every term's gradient then grows as its own error shrinks, so the 2D
    # term cannot win by tilting the canonical shape instead of rotating the head (issue 12, item 5).
    balance: Literal["fixed", "learned"] = "fixed"
    min_scale: float = 1e-3  # floor of the learned scales (normalised units; rotation in radians)


class LossScales(nn.Module):
    """Learned Laplace scales of the MV 3D, rotation and translation terms (homoscedastic uncertainty
    weighting, Kendall et al. 2018). Optimised with the model, no weight decay; not part of a bundle.

    A term with residual norm ``r`` in ``d`` dimensions costs ``r / b + d log b``: at the optimum
    ``b = r / d`` and the gradient with respect to ``r`` is ``d / r``, the same law as the 2D LLL."""

    TERMS = {"mv_3d": 3, "mv_rot": 1, "mv_t": 3}

    def __init__(self, init: float = 0.1) -> None:
        super().__init__()
        self.log_b = nn.ParameterDict({k: nn.Parameter(torch.tensor(math.log(init))) for k in self.TERMS})

    def nll(self, term: str, residual: torch.Tensor, floor: float) -> torch.Tensor:
        b = self.log_b[term].exp().clamp(min=floor)
        return residual / b + self.TERMS[term] * torch.log(b)

    def values(self) -> dict[str, float]:
        return {f"scale_{k}": float(v.detach().exp()) for k, v in self.log_b.items()}


def laplace_nll(diff: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    """Bivariate Laplacian negative log-likelihood per point, constants dropped.

    ``diff`` (..., 2) prediction - target, ``scale_tril`` (..., 2, 2) Cholesky factor L of Sigma = L L^T:
    ``log|Sigma| / 2 + sqrt(3 diff^T Sigma^-1 diff)`` (docs/method.md). ``|Sigma|^(1/2) = L00 L11`` and
    ``diff^T Sigma^-1 diff = |L^-1 diff|^2`` (forward substitution, no matrix inverse).
    """
    l00, l10, l11 = scale_tril[..., 0, 0], scale_tril[..., 1, 0], scale_tril[..., 1, 1]
    z0 = diff[..., 0] / l00
    z1 = (diff[..., 1] - l10 * z0) / l11
    maha = z0 * z0 + z1 * z1
    return torch.log(l00 * l11) + torch.sqrt(3.0 * maha + 1e-12)


def loss_2d(diff: torch.Tensor, scale_tril: torch.Tensor, kind: str) -> torch.Tensor:
    """(..., 2) normalised differences -> (...) per-landmark loss of the chosen form."""
    if kind == "lll":
        return laplace_nll(diff, scale_tril)
    if kind == "l1":
        return diff.abs().sum(-1)
    if kind == "mse":
        return (diff * diff).sum(-1)
    raise ValueError(f"loss_2d must be lll, l1 or mse, got {kind!r}")


def geodesic(r_pred: torch.Tensor, r_true: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) x2 -> (...) rotation angle of R_pred R_true^T in radians.

    atan2(sin, cos) instead of acos((tr - 1) / 2): acos has an infinite gradient at angle 0.
    """
    m = r_pred @ r_true.transpose(-1, -2)
    cos = (m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2] - 1.0) / 2.0
    axis = torch.stack(
        [m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], dim=-1
    )
    sin = torch.sqrt((axis * axis).sum(-1) + 1e-12) / 2.0
    return torch.atan2(sin, cos)


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample values over samples with weight > 0 (0 when none)."""
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def facelift_loss(
    pred: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    normals: torch.Tensor,
    cfg: LossConfig,
    crop_size: int,
    nominal_depth_cm: float,
    scales: LossScales | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its named terms (floats, for logging).

    ``batch``: ``kind`` (B,) 0 = MV, 1 = MF; ``landmarks_2d`` (B, 68, 2) crop px; ``weight_2d`` (B, 68)
    (teacher confidence, 1 for MV); MV also ``landmarks_3d`` (B, 68, 3) cm, ``rotation`` (B, 3, 3),
    ``translation`` (B, 3) cm in the K0 crop camera (zeros for MF rows).
    """
    pred = {k: v.float() for k, v in pred.items()}  # losses in fp32 even under autocast
    is_mv = (batch["kind"] == 0).float()
    is_mf = 1.0 - is_mv
    if cfg.mode == "mf_only":
        is_mv = torch.zeros_like(is_mv)
    elif cfg.mode == "mv_only":
        is_mf = torch.zeros_like(is_mf)

    diff = (pred["landmarks_2d"] - batch["landmarks_2d"]) / crop_size
    per_lm = loss_2d(diff, pred["scale_tril"], cfg.loss_2d)  # (B, 68)
    w2d = batch["weight_2d"]

    terms: dict[str, torch.Tensor] = {}
    # MV: full 3D labels, every landmark counts.
    d3 = (pred["landmarks_3d"] - batch["landmarks_3d"]) / cfg.norm_3d_cm
    dt = (pred["translation"] - batch["translation"]) / nominal_depth_cm
    angle = geodesic(pred["rotation"], batch["rotation"])
    if cfg.balance == "learned":
        if scales is None:
            raise ValueError("loss.balance = 'learned' needs the LossScales module (training.losses.LossScales)")
        e3 = torch.sqrt((d3 * d3).sum(-1) + 1e-12)  # (B, 68) per-landmark 3D distance
        terms["mv_3d"] = cfg.w_3d * _masked_mean(scales.nll("mv_3d", e3, cfg.min_scale).mean(-1), is_mv)
        et = torch.sqrt((dt * dt).sum(-1) + 1e-12)
        terms["mv_t"] = cfg.w_t * _masked_mean(scales.nll("mv_t", et, cfg.min_scale), is_mv)
        terms["mv_rot"] = cfg.w_rot * _masked_mean(scales.nll("mv_rot", angle, cfg.min_scale), is_mv)
    else:
        terms["mv_3d"] = cfg.w_3d * _masked_mean((d3 * d3).sum(-1).mean(-1), is_mv)
        terms["mv_t"] = cfg.w_t * _masked_mean((dt * dt).sum(-1), is_mv)
        terms["mv_rot"] = cfg.w_rot * _masked_mean(angle, is_mv)
    terms["mv_2d"] = cfg.w_2d_mv * _masked_mean(per_lm.mean(-1), is_mv)
    # MF: only landmarks visible under the predicted rotation (no gradient through the mask).
    mask = visibility_mask(pred["rotation"].detach(), normals.to(pred["rotation"])).float() * w2d
    per_sample = (per_lm * mask).sum(-1) / mask.sum(-1).clamp(min=1e-6)
    terms["mf_2d"] = cfg.w_2d_mf * _masked_mean(per_sample, is_mf * (mask.sum(-1) > 0).float())

    total = sum(terms.values())
    logs = {k: float(v.detach()) for k, v in terms.items()}
    logs["total"] = float(total.detach())
    if scales is not None:
        logs.update(scales.values())
    return total, logs

