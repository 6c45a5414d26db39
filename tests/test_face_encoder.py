"""Issue 12 pieces: the face-trained MobileNet encoder, its init from a local file, the learned loss
balance, mirror-averaged teacher labels, landmark-driven training crops and photos as MF samples."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from engine.assets import shared_asset
from engine.crop import roi_from_landmarks
from plugins.landmarks.transformer import create_model
from tiny_dataset import normals_template
from training.data import landmark_roi
from training.losses import LossConfig, LossScales, facelift_loss
from training.mf import IMAGE_SUFFIXES, count_frames, iter_frames, list_clips
from training.teacher import Teacher
from training.train import OptimConfig, init_backbone, param_groups, resolve_weights

MB_CFG = {"backbone": "mobilenetv1_050_3ddfa", "img_size": 128, "decoder_dim": 64, "decoder_heads": 2,
          "decoder_depth": 1, "mean": [0.5] * 3, "std": [0.50196] * 3}


def test_mobilenet_encoder_tokens_and_outputs():
    model = create_model(MB_CFG).eval()
    tokens = model.backbone(torch.zeros(2, 3, 128, 128))
    assert tokens.shape == (2, 64 + 16, 256)  # 8x8 stride-16 + 4x4 stride-32 tokens
    single = create_model(dict(MB_CFG, backbone="mobilenetv1_050_3ddfa_s16")).eval()
    assert single.backbone(torch.zeros(1, 3, 128, 128)).shape == (1, 64, 256)
    out = model(torch.zeros(2, 3, 128, 128))
    assert out["landmarks_2d"].shape == (2, 68, 2) and torch.isfinite(out["rotation"]).all()


def test_init_backbone_loads_the_teacher_trunk_exactly():
    """The encoder's trunk computes what the teacher's network computes on the same (BGR) input."""
    model = create_model(MB_CFG).eval()
    spec = "shared:teacher_3ddfa_v2/mb05_120x120.safetensors"
    init_backbone(model, spec)
    state = load_file(str(resolve_weights(spec)))
    trunk = model.backbone.net.trunk
    checked = 0
    for k, v in trunk.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, state[k]), k
            checked += 1
    assert checked == len(state) - 4  # all but the teacher's two unused heads
    with pytest.raises(FileNotFoundError, match="init_backbone"):
        resolve_weights("/nonexistent/weights.safetensors")


def test_param_groups_scale_the_encoder_lr():
    model = create_model(MB_CFG)
    tc = OptimConfig(lr=1e-3, backbone_lr_scale=0.5)
    groups = param_groups(model, LossScales(), tc)
    assert groups[0]["lr"] == pytest.approx(5e-4) and groups[1]["lr"] == pytest.approx(1e-3)
    assert groups[2]["weight_decay"] == 0.0
    n = sum(p.numel() for g in groups[:2] for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())


def _batch(B=4):
    g = torch.Generator().manual_seed(0)
    return {
        "kind": torch.tensor([0, 0, 1, 1][:B]),
        "landmarks_2d": torch.rand(B, 68, 2, generator=g) * 32,
        "weight_2d": torch.ones(B, 68),
        "landmarks_3d": torch.randn(B, 68, 3, generator=g) * 5,
        "rotation": torch.eye(3).repeat(B, 1, 1),
        "translation": torch.tensor([[0.0, 0.0, 60.0]]).repeat(B, 1),
    }


def test_learned_balance_gradient_grows_as_the_error_shrinks():
    """With learned scales, the 3D and rotation terms are Laplace NLLs: at the optimal scale their
    gradient is inversely proportional to the error (like the 2D LLL), unlike MSE's, which vanishes."""
    normals = torch.tensor(normals_template())
    batch = _batch()
    cfg = LossConfig(balance="learned")
    grads = []
    for err_cm in (2.0, 0.2):
        scales = LossScales(init=err_cm / 10 / 3)  # optimum b = r / d for d = 3 dimensions
        l3 = (batch["landmarks_3d"] + torch.tensor([err_cm, 0.0, 0.0])).requires_grad_(True)
        pred = {"landmarks_2d": batch["landmarks_2d"], "landmarks_3d": l3, "rotation": batch["rotation"],
                "translation": batch["translation"], "scale_tril": torch.eye(2).expand(4, 68, 2, 2) * 0.05}
        total, terms = facelift_loss(pred, batch, normals, cfg, crop_size=32, nominal_depth_cm=60, scales=scales)
        total.backward()
        grads.append(l3.grad.abs().sum().item())
        assert math.isfinite(total.item()) and "scale_mv_3d" in terms
    assert grads[1] == pytest.approx(10 * grads[0], rel=1e-3)
    with pytest.raises(ValueError, match="LossScales"):
        facelift_loss(pred, batch, normals, cfg, crop_size=32, nominal_depth_cm=60)


def test_mirror_averaged_teacher_is_flip_consistent():
    image = np.asarray(Image.open(shared_asset("images", "pyfeat_single_face.jpg")).convert("RGB"))
    from plugins.detectors.centerface import CenterFace

    box = CenterFace().detect(image).boxes[:1]
    teacher = Teacher(runtime="onnxruntime")
    res = teacher.predict_refined_batch([image], box, mirror=True)
    flipped = np.ascontiguousarray(image[:, ::-1])
    w = image.shape[1]
    fbox = np.array([[w - 1 - box[0, 2], box[0, 1], w - 1 - box[0, 0], box[0, 3]]])
    res_f = teacher.predict_refined_batch([flipped], fbox, mirror=True)
    from engine.landmarks68 import FLIP_PERMUTATION

    back = res_f.landmarks[0][FLIP_PERMUTATION]
    back[:, 0] = w - 1 - back[:, 0]
    # averaging over the image and its mirror makes the labels (nearly) equivariant to the flip
    size = np.sqrt(np.prod(np.ptp(res.landmarks[0], axis=0)))
    assert np.abs(back - res.landmarks[0]).max() / size < 0.01
    assert res.confidence.shape == (1, 68) and (res.confidence > 0).all() and (res.confidence <= 1).all()
    torch_res = Teacher().predict_refined_batch([image], box)
    onnx_res = teacher.predict_refined_batch([image], box)
    assert np.abs(torch_res.landmarks - onnx_res.landmarks).max() < 0.05


def test_landmark_roi_disturbs_around_the_engine_crop():
    rng = np.random.default_rng(0)
    lm = np.stack(np.meshgrid(np.linspace(100, 200, 17), np.linspace(100, 220, 4)), -1).reshape(-1, 2)[:68]
    exact = roi_from_landmarks(lm)
    rois = np.stack([landmark_roi(lm, rng, 0.02, 0.03) for _ in range(200)])
    side = exact[2] - exact[0]
    assert np.abs(rois.mean(0) - exact).max() < 0.05 * side
    assert 0.005 * side < rois[:, 0].std() < 0.1 * side


def test_photos_are_one_frame_clips(tmp_path):
    src = shared_asset("images", "pyfeat_single_face.jpg")
    (tmp_path / "a.jpg").write_bytes(src.read_bytes())
    (tmp_path / "preview.jpg").write_bytes(src.read_bytes())
    (tmp_path / "notes.txt").write_text("x")
    clips = list_clips(tmp_path, [])
    assert [c.name for c in clips] == ["a.jpg"] and ".jpg" in IMAGE_SUFFIXES
    assert count_frames(clips[0]) == 1
    frames = list(iter_frames(clips[0], 3))
    assert len(frames) == 1 and frames[0][1].ndim == 3
