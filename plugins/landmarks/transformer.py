"""The FaceLift 3D landmark transformer (one architecture, timm style).

image crop (B, 3, S, S) -> backbone (timm ViT or ResNet, or a face-trained encoder of ``encoders/``)
-> image tokens (B, N, D)
68 landmark tokens + P pose tokens -> 3 x [cross-attention to image tokens, self-attention among the
tokens, MLP] (pre-LayerNorm) -> LayerNorm -> MLP heads:
- ``landmarks_3d`` (B, 68, 3): canonical 3D landmarks, head frame (ICT axes), cm;
- ``scale_tril`` (B, 68, 2, 2): Cholesky factor of each 2.5D landmark's Laplace covariance, in crop
  units (1 = crop side); ``uncertainty`` (B, 68) = |Sigma|^(1/4) (a length, crop units);
- ``rotation`` (B, 3, 3): head -> crop camera, from a 6D vector by Gram-Schmidt;
- ``translation`` (B, 3) cm in the crop camera, parametrised as the head origin's crop position
  (u, v) in [-1, 1] units of the half crop and log depth relative to ``nominal_depth_cm``, unprojected
  through the fixed nominal intrinsics K0 (focal ``focal_ratio * S``, principal point ``(S - 1) / 2``);
- ``landmarks_2d`` (B, 68, 2): the 2.5D landmarks, K0 (R L3D + t) projected, crop pixels;
- ``confidence`` (B, 68) in [0, 1] = exp(-uncertainty / confidence_tau): 1 for a certain landmark,
  exp(-1) ~ 0.37 when the expected error is ``confidence_tau`` of the crop side.

Imported by training and by the engine's torch backend; it must not import ``training``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import timm
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from engine.landmarks68 import NUM_LANDMARKS
from plugins.landmarks.encoders import ENCODERS

OUTPUT_NAMES = (
    "landmarks_3d", "rotation", "translation", "landmarks_2d", "scale_tril", "uncertainty", "confidence"
)


class LandmarkTransformerConfig(BaseModel):
    """Architecture; stored verbatim in checkpoints and bundle manifests."""

    model_config = ConfigDict(extra="forbid")

    # any timm ViT (patch embedding) or ResNet name, or an encoder of plugins/landmarks/encoders/
    backbone: str = "vit_tiny_patch16_224"
    backbone_args: dict = Field(default_factory=dict)  # extra timm.create_model kwargs (tests shrink it)
    # CNNs only: the timm feature index whose map becomes the image tokens (ResNet: 3 = layer3, stride 16,
    # an 8x8 grid at 128 px like a ViT/16; the layers after it are not built). None: the last stage.
    cnn_out_index: int | None = None
    img_size: int = 128
    decoder_dim: int = 192
    decoder_heads: int = 3
    decoder_depth: int = 3
    mlp_ratio: float = 4.0
    pose_tokens: int = 2
    uncertainty: Literal["laplace", "cholesky"] = "laplace"
    # K0 focal = focal_ratio * img_size (crop px). 2.7: a face-width box cropped at BOX_SCALE 1.5 from
    # training/cameras.py renders (face = 1/3 of the image at 60 cm) has f_crop ~ 2.7 S.
    focal_ratio: float = 2.7
    nominal_depth_cm: float = 60.0
    landmark_scale_cm: float = 10.0  # head output units -> cm
    confidence_tau: float = 0.05
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def k0(self) -> np.ndarray:
        """(3, 3) nominal crop intrinsics K0 in crop pixels."""
        f, c = self.focal_ratio * self.img_size, (self.img_size - 1) / 2.0
        return np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])

    @property
    def is_vit(self) -> bool:
        return self.backbone.startswith(("vit_", "deit_"))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out or dim))


class Attention(nn.Module):
    """Multi-head attention of queries ``x`` over ``context`` (self-attention when context is x)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        # a constant, not SDPA's default: the export then has no per-call Shape/Cast/Sqrt/Div for it
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        h = self.heads
        q = self.q(x).reshape(B, N, h, D // h).transpose(1, 2)
        k, v = self.kv(context).reshape(B, context.shape[1], 2, h, D // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class DecoderBlock(nn.Module):
    """Cross-attention to image tokens, self-attention among landmark/pose tokens, MLP (pre-LN)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_ctx = nn.LayerNorm(dim)
        self.cross = Attention(dim, heads)
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.cross(self.norm_q(tokens), self.norm_ctx(image_tokens))
        t = self.norm_self(tokens)
        tokens = tokens + self.self_attn(t, t)
        return tokens + self.mlp(self.norm_mlp(tokens))


class Backbone(nn.Module):
    """timm encoder -> (B, N, C) image tokens. ViTs give their tokens; CNNs their last feature map
    flattened, plus a learned position embedding (a CNN feature map carries no absolute position)."""

    def __init__(self, cfg: LandmarkTransformerConfig):
        super().__init__()
        self.local = cfg.backbone in ENCODERS
        if self.local:  # face-trained encoders of our own (plugins/landmarks/encoders/)
            self.net = ENCODERS[cfg.backbone](cfg.img_size, **cfg.backbone_args)
            self.num_features = self.net.num_features
            self.is_vit, self.truncated, self.pos = False, False, None
            return
        kwargs = dict(pretrained=False, **cfg.backbone_args)  # never pretrained: nothing is downloaded
        if cfg.is_vit:
            kwargs.update(img_size=cfg.img_size, num_classes=0, global_pool="")
        elif cfg.cnn_out_index is not None:
            kwargs.update(features_only=True, out_indices=(cfg.cnn_out_index,))
        else:
            kwargs.update(num_classes=0, global_pool="")
        self.net = timm.create_model(cfg.backbone, **kwargs)
        self.is_vit = cfg.is_vit
        self.truncated = not cfg.is_vit and cfg.cnn_out_index is not None
        last = self.net.feature_info.get_dicts()[-1] if self.truncated else self.net.feature_info[-1]
        self.num_features = last["num_chs"]
        self.pos = None
        if not self.is_vit:
            reduction = last["reduction"]
            grid = math.ceil(cfg.img_size / reduction)
            self.pos = nn.Parameter(torch.zeros(1, grid * grid, self.num_features))
            nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.local:
            return self.net(x)  # tokens, positions embedded
        feats = self.net(x)[-1] if self.truncated else self.net.forward_features(x)
        if self.is_vit:
            return feats  # (B, prefix + patches, C), position already embedded
        tokens = feats.flatten(2).transpose(1, 2)
        return tokens + self.pos


def rotation_from_6d(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3) rotation; the 6 numbers are its first two columns (Gram-Schmidt)."""
    a1, a2 = x[..., 0:3], x[..., 3:6]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


class LandmarkTransformer(nn.Module):
    def __init__(self, cfg: LandmarkTransformerConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.decoder_dim
        self.backbone = Backbone(cfg)
        self.image_proj = nn.Linear(self.backbone.num_features, D)
        self.landmark_tokens = nn.Parameter(torch.zeros(1, NUM_LANDMARKS, D))
        self.pose_tokens = nn.Parameter(torch.zeros(1, cfg.pose_tokens, D))
        nn.init.trunc_normal_(self.landmark_tokens, std=0.02)
        nn.init.trunc_normal_(self.pose_tokens, std=0.02)
        self.blocks = nn.ModuleList(
            DecoderBlock(D, cfg.decoder_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth)
        )
        self.norm = nn.LayerNorm(D)
        self.head_3d = Mlp(D, D, 3)
        self.head_unc = Mlp(D, D, 1 if cfg.uncertainty == "laplace" else 3)
        self.head_rot = Mlp(D * cfg.pose_tokens, D, 6)
        self.head_trans = Mlp(D * cfg.pose_tokens, D, 3)
        self.register_buffer("k0", torch.tensor(cfg.k0(), dtype=torch.float32), persistent=False)
        self._init_heads()

    def _init_heads(self) -> None:
        # Start from a frontal head (R = diag(1, -1, -1)) at the crop centre and nominal depth,
        # with a moderate uncertainty: the first steps then see sane projections.
        for head in (self.head_rot, self.head_trans, self.head_unc):
            nn.init.zeros_(head[-1].weight)
        with torch.no_grad():
            self.head_rot[-1].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, -1.0, 0.0]))
            self.head_trans[-1].bias.zero_()
            self.head_unc[-1].bias.zero_()
            self.head_unc[-1].bias[:2] = math.log(math.expm1(0.05))  # softplus^-1(5% of the crop)

    def translation(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, 3) raw (u, v, log depth ratio) -> t in cm in the K0 crop camera."""
        S = self.cfg.img_size
        c = (S - 1) / 2.0
        f = self.k0[0, 0]
        z = self.cfg.nominal_depth_cm * torch.exp(raw[:, 2].clamp(-5.0, 5.0))
        px = c + raw[:, 0] * S / 2.0
        py = c + raw[:, 1] * S / 2.0
        return torch.stack([(px - c) / f * z, (py - c) / f * z, z], dim=-1)

    def scale_tril(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, 68, 1|3) -> (B, 68, 2, 2) lower-triangular Cholesky factor, positive diagonal."""
        if self.cfg.uncertainty == "laplace":  # a config constant, not a traced shape test
            b = F.softplus(raw[..., 0]) + 1e-4
            zero = torch.zeros_like(b)
            rows = [torch.stack([b, zero], -1), torch.stack([zero, b], -1)]
        else:
            d0, d1 = F.softplus(raw[..., 0]) + 1e-4, F.softplus(raw[..., 1]) + 1e-4
            rows = [torch.stack([d0, torch.zeros_like(d0)], -1), torch.stack([raw[..., 2], d1], -1)]
        return torch.stack(rows, dim=-2)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        B = image.shape[0]
        memory = self.image_proj(self.backbone(image))
        tokens = torch.cat(
            [self.landmark_tokens.expand(B, -1, -1), self.pose_tokens.expand(B, -1, -1)], dim=1
        )
        for block in self.blocks:
            tokens = block(tokens, memory)
        tokens = self.norm(tokens)
        lm_tok, pose_tok = tokens[:, :NUM_LANDMARKS], tokens[:, NUM_LANDMARKS:].reshape(B, -1)

        landmarks_3d = self.head_3d(lm_tok) * self.cfg.landmark_scale_cm
        rotation = rotation_from_6d(self.head_rot(pose_tok))
        translation = self.translation(self.head_trans(pose_tok))
        cam = landmarks_3d @ rotation.transpose(1, 2) + translation[:, None, :]
        proj = cam @ self.k0.T
        landmarks_2d = proj[..., :2] / proj[..., 2:3].clamp(min=1e-3)
        tril = self.scale_tril(self.head_unc(lm_tok))
        uncertainty = torch.sqrt(tril[..., 0, 0] * tril[..., 1, 1])  # |Sigma|^(1/4)
        confidence = torch.exp(-uncertainty / self.cfg.confidence_tau)
        return {
            "landmarks_3d": landmarks_3d,
            "rotation": rotation,
            "translation": translation,
            "landmarks_2d": landmarks_2d,
            "scale_tril": tril,
            "uncertainty": uncertainty,
            "confidence": confidence,
        }


class TupleOutputs(nn.Module):
    """Wraps the model so it returns ``OUTPUT_NAMES`` as a tuple (ONNX export, tracing)."""

    def __init__(self, model: LandmarkTransformer):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(image)
        return tuple(out[name] for name in OUTPUT_NAMES)


def create_model(cfg: LandmarkTransformerConfig | dict) -> LandmarkTransformer:
    if isinstance(cfg, dict):
        cfg = LandmarkTransformerConfig.model_validate(cfg)
    return LandmarkTransformer(cfg)
