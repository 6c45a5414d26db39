import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.geometry import project
from engine.landmarks68 import FLIP_PERMUTATION
from plugins.landmarks.transformer import create_model
from tiny_dataset import normals_template, write_tiny_dataset
from training.data import FaceCrops, index_dataset, mirror_sample, split_refs
from training.losses import LossConfig, facelift_loss
from training.train import TrainConfig, apply_overrides, train

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "training" / "configs" / "tiny.toml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


def tiny_config(dataset: Path, **train_overrides) -> TrainConfig:
    raw = tomllib.loads(TINY.read_text())
    raw["data"]["train"] = [str(dataset)]
    raw["train"].update(train_overrides)
    return TrainConfig.model_validate(raw)


def test_crop_camera_labels_match_pixels_and_mirror(dataset):
    cfg = tiny_config(dataset)
    m = cfg.model
    refs = index_dataset(dataset)
    ds = FaceCrops(refs, m.img_size, m.k0(), m.mean, m.std)
    mv = [i for i, r in enumerate(refs) if r.kind == 0]
    for i in mv[:6]:
        s = ds.crop_sample(*ds.load(i), rng=None)
        k0_proj = project(s["landmarks_3d"] @ s["rotation"].T + s["translation"], m.k0())
        # K0 re-expression of the render camera stays within 1% of the crop of the exact projection
        assert np.abs(k0_proj - s["landmarks_2d"]).max() < 0.01 * m.img_size
        f = mirror_sample(s, m.img_size)
        assert np.allclose(f["image"], s["image"][:, ::-1])
        # index i of the mirror is the mirrored FLIP_PERMUTATION[i] of the original
        for a in (0, 36, 48, 30):
            b = FLIP_PERMUTATION[a]
            assert np.allclose(f["landmarks_2d"][a], [m.img_size - 1 - s["landmarks_2d"][b, 0], s["landmarks_2d"][b, 1]])
            assert np.allclose(f["landmarks_3d"][a], s["landmarks_3d"][b] * [-1, 1, 1])
        assert np.linalg.det(f["rotation"]) == pytest.approx(1.0)
        f_proj = project(f["landmarks_3d"] @ f["rotation"].T + f["translation"], m.k0())
        assert np.allclose(f_proj, mirror_sample({**s, "landmarks_2d": k0_proj}, m.img_size)["landmarks_2d"], atol=1e-6)


def test_split_holds_out_identities_and_filters(dataset):
    cfg = tiny_config(dataset)
    refs = index_dataset(dataset)
    train_refs, val_refs = split_refs(refs, cfg.data, "both")
    assert {r.identity for r in val_refs}.isdisjoint({r.identity for r in train_refs})
    assert {r.kind for r in split_refs(refs, cfg.data, "mf_only")[0]} == {1}
    assert {r.kind for r in split_refs(refs, cfg.data, "mv_only")[0]} == {0}
    cfg.data.max_identities = 2
    kept = split_refs(refs, cfg.data, "both")[0]
    assert len({r.identity for r in kept if r.kind == 0}) == 2


@pytest.mark.parametrize("loss_2d,mode", [("lll", "both"), ("l1", "both"), ("mse", "both"),
                                          ("lll", "mf_only"), ("lll", "mv_only")])
def test_loss_switches_train_and_decrease(dataset, loss_2d, mode):
    cfg = tiny_config(dataset)
    cfg.loss = LossConfig(loss_2d=loss_2d, mode=mode)
    m = cfg.model
    train_refs, _ = split_refs(index_dataset(dataset), cfg.data, mode)
    ds = FaceCrops(train_refs, m.img_size, m.k0(), m.mean, m.std, cfg.data.augment, seed=0)
    batch = torch.utils.data.default_collate([ds[(k, k)] for k in range(min(8, len(ds)))])
    torch.manual_seed(0)
    model = create_model(m)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    normals = torch.tensor(normals_template())
    losses = []
    for _ in range(12):
        loss, _ = facelift_loss(model(batch["image"]), batch, normals, cfg.loss, m.img_size, m.nominal_depth_cm)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


def test_resume_is_bit_identical(dataset, tmp_path):
    cfg = tiny_config(dataset, max_steps=6, ckpt_every=100, val_every=100, warmup_steps=2)
    full = torch.load(train(cfg, tmp_path / "full"), weights_only=False)
    train(cfg, tmp_path / "cut", stop_after=3)
    cut_ck = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)
    assert cut_ck["step"] == 3
    resumed = torch.load(train(cfg, tmp_path / "cut", resume=True), weights_only=False)
    assert resumed["step"] == full["step"] == 6
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert not all(torch.equal(v, cut_ck["model"][k]) for k, v in full["model"].items())


def test_init_from_starts_a_new_stage_from_checkpoint_weights(dataset, tmp_path):
    first = train(tiny_config(dataset, max_steps=2, ckpt_every=100, val_every=100), tmp_path / "a")
    # lr 0 (AdamW's decay scales with lr too): the weights stay those of the first run, the step count restarts
    stage = torch.load(train(tiny_config(dataset, max_steps=1, lr=0.0, warmup_steps=0, val_every=100, init_from=str(first)),
                             tmp_path / "b"), weights_only=False)
    src = torch.load(first, weights_only=False)
    assert stage["step"] == 1 and stage["config"]["train"]["init_from"] == str(first)
    for k, v in src["model"].items():
        assert torch.equal(v, stage["model"][k]), k


def test_init_from_resizes_position_embeddings_to_another_input_size():
    # a 128 px model's learned positions start a 96 px one (4x4 -> 3x3 stride-32 grid, 8x8 -> 6x6 stride-16):
    # resized, not dropped; every other tensor copied as it is
    from plugins.landmarks.transformer import LandmarkTransformerConfig
    from training.train import init_from, resample_grid

    base = dict(backbone="mobilenetv1_050_3ddfa", decoder_dim=32, decoder_heads=2, decoder_depth=1, mlp_ratio=1.0)
    src = create_model(LandmarkTransformerConfig(img_size=128, **base))
    dst = create_model(LandmarkTransformerConfig(img_size=96, **base))
    pos = src.backbone.net.pos16.detach()
    resized = resample_grid(pos, dst.backbone.net.pos16.shape)
    assert resized.shape == dst.backbone.net.pos16.shape == (1, 36, pos.shape[2])
    # a constant embedding stays constant; a tensor that is no square grid comes back unchanged
    assert torch.allclose(resample_grid(torch.ones(1, 64, 8), torch.Size((1, 36, 8))), torch.ones(1, 36, 8), atol=1e-5)
    odd = torch.zeros(1, 68, 8)
    assert resample_grid(odd, torch.Size((1, 36, 8))) is odd
    with tempfile.TemporaryDirectory() as d:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, f"{d}/w.safetensors")
        init_from(dst, None, f"{d}/w.safetensors")
    assert torch.allclose(dst.backbone.net.pos16, resized)
    assert torch.equal(dst.backbone.net.trunk.conv1.weight, src.backbone.net.trunk.conv1.weight)
    assert torch.equal(dst.blocks[0].mlp[0].weight, src.blocks[0].mlp[0].weight)


def test_cli_runs_and_validates(dataset, tmp_path):
    cfg_text = TINY.read_text().replace('train = ["../../data/tiny"]', f'train = ["{dataset}"]')
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(cfg_text)
    out = tmp_path / "run"
    overrides = ["--set", "train.max_steps=4", "--set", "train.val_every=4", "--set", "loss.loss_2d=l1"]
    r = subprocess.run([sys.executable, "-m", "training.train", "--config", str(cfg_path), "--out", str(out), *overrides],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "checkpoints" / "last.pt").is_file()
    ck = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert ck["config"]["loss"]["loss_2d"] == "l1" and ck["config"]["train"]["max_steps"] == 4
    import json

    val = json.loads((out / "val.json").read_text())
    assert val["step"] == 4 and {"mv_nme", "mv_3d_cm", "mv_pose_deg", "mf_nme"} <= set(val)
    assert list((out / "tb").glob("events.out.tfevents.*"))


def test_overrides_parse_toml_values():
    raw = apply_overrides({"train": {"lr": 1e-3}}, ["train.lr=5e-4", "loss.loss_2d=mse", "data.train=['a', 'b']"])
    assert raw == {"train": {"lr": 5e-4}, "loss": {"loss_2d": "mse"}, "data": {"train": ["a", "b"]}}
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides({}, ["train.lr"])
