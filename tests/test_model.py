import numpy as np
import pytest
import torch

from engine.geometry import FRONTAL, project
from plugins.landmarks.transformer import LandmarkTransformerConfig, create_model, rotation_from_6d

TINY_VIT = dict(img_size=32, decoder_dim=32, decoder_heads=2, mlp_ratio=2.0,
                backbone_args=dict(embed_dim=32, depth=1, num_heads=2, patch_size=8))


@pytest.mark.parametrize("cfg", [
    LandmarkTransformerConfig(**TINY_VIT),
    LandmarkTransformerConfig(**{**TINY_VIT, "uncertainty": "cholesky", "pose_tokens": 1}),
    LandmarkTransformerConfig(backbone="resnet50", img_size=64, decoder_dim=32, decoder_heads=2),
    LandmarkTransformerConfig(backbone="resnet18", cnn_out_index=3, img_size=64, decoder_dim=32, decoder_heads=2),
], ids=["vit", "vit_cholesky", "resnet50", "resnet18_stride16"])
def test_forward_shapes_and_outputs(cfg):
    torch.manual_seed(0)
    model = create_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, cfg.img_size, cfg.img_size))
    shapes = {"landmarks_3d": (3, 68, 3), "rotation": (3, 3, 3), "translation": (3, 3),
              "landmarks_2d": (3, 68, 2), "scale_tril": (3, 68, 2, 2), "uncertainty": (3, 68), "confidence": (3, 68)}
    for name, shape in shapes.items():
        assert tuple(out[name].shape) == shape, name
        assert torch.isfinite(out[name]).all(), name
    R = out["rotation"].double()
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand(3, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(3, dtype=R.dtype), atol=1e-5)
    assert (out["confidence"] >= 0).all() and (out["confidence"] <= 1).all()
    # the 2.5D output is the K0 projection of the posed 3D landmarks
    cam = out["landmarks_3d"][0].numpy() @ out["rotation"][0].numpy().T + out["translation"][0].numpy()
    assert np.allclose(project(cam, cfg.k0()), out["landmarks_2d"][0].numpy(), atol=1e-3)
    # untrained heads start frontal at nominal depth
    assert np.allclose(out["rotation"][0].numpy(), FRONTAL, atol=1e-6)
    assert out["translation"][0, 2].item() == pytest.approx(cfg.nominal_depth_cm)


def test_rotation_from_6d_orthonormal_on_random_input():
    R = rotation_from_6d(torch.randn(100, 6, dtype=torch.float64))
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3, dtype=R.dtype).expand(100, 3, 3), atol=1e-10)
    assert torch.allclose(torch.linalg.det(R), torch.ones(100, dtype=R.dtype))


def test_any_vit_size_and_img_size():
    cfg = LandmarkTransformerConfig(backbone="vit_tiny_patch16_224", img_size=48, decoder_dim=32, decoder_heads=2,
                                    backbone_args=dict(depth=1))
    out = create_model(cfg)(torch.randn(1, 3, 48, 48))
    assert out["landmarks_2d"].shape == (1, 68, 2)


def test_cnn_cut_at_a_feature_index():
    """cnn_out_index=3 on ResNet-18: layer3 (256 ch, stride 16) gives the tokens; layer4 is not built."""
    full = create_model(LandmarkTransformerConfig(backbone="resnet18", img_size=128))
    cut = create_model(LandmarkTransformerConfig(backbone="resnet18", cnn_out_index=3, img_size=128))
    assert cut.backbone(torch.randn(2, 3, 128, 128)).shape == (2, 64, 256)  # an 8x8 grid, like a ViT/16
    assert full.backbone(torch.randn(2, 3, 128, 128)).shape == (2, 16, 512)
    assert not any("layer4" in name for name, _ in cut.named_parameters())
    assert sum(p.numel() for p in cut.parameters()) < 0.4 * sum(p.numel() for p in full.parameters())
