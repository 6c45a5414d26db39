import re
import struct
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from calibration.dataset import (
    SYNTHETIC_HINT, CropSetConfig, balanced_indices, build_crop_sets, dataset_face_crops, keypoint_yaw, split_videos,
    video_face_crops,
)
from calibration.qdq import (
    QuantConfig, calibrate, read_calibration_cache, sensitive_nodes, trt_version_tag, write_calibration_cache,
)
from calibration.ranges import kl_threshold, percentile_threshold
from engine.crop import LANDMARK_SCALE
from engine.dataset_format import KIND_MV, ShardReader, iter_shard, read_image
from engine.geometry import euler_from_rotation, project, rotation_from_euler
from plugins.landmarks.transformer import OUTPUT_NAMES, LandmarkTransformerConfig, create_model
from tiny_dataset import landmark_template, write_tiny_dataset
from training.bundle import export_onnx, round_to_fp16

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    raw = tomllib.loads((REPO / "training" / "configs" / "tiny.toml").read_text())
    cfg = LandmarkTransformerConfig.model_validate(raw["model"])
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    model = create_model(cfg).eval()
    round_to_fp16(model)
    export_onnx(model, cfg, path, fp16_weights=True)  # as in a bundle: calibrate widens them
    return path


@pytest.fixture(scope="module")
def real_crops(shared):
    videos = sorted((shared / "assets" / "videos").glob("*.mp4"))[:2]
    return video_face_crops(videos, 32, frames_per_video=4)


@pytest.fixture(scope="module")
def mv_dataset(tmp_path_factory) -> Path:
    """A pseudo-label folder in the on-disk format (6 MV identities x 4 views, 8 MF frames, 96 px)."""
    return write_tiny_dataset(tmp_path_factory.mktemp("pseudolabel") / "ds")


def test_dataset_crops_from_a_pseudolabel_folder(mv_dataset):
    samples = {s["__key__"]: s for s in ShardReader(mv_dataset)}
    cfg = CropSetConfig(dataset=[mv_dataset], renders=6)
    calib, held = dataset_face_crops(cfg.dataset, 32, cfg)
    assert len(calib) == len(held) == 6 and not (calib.is_real.any() or held.is_real.any())
    assert calib.crops.shape == (6, 32, 32, 3) and calib.crops.dtype == np.uint8
    ids = {}
    for name, crops in (("calib", calib), ("held", held)):
        keys = [src.split("#")[1] for src in crops.source]
        assert all(src.startswith("mv:ds#") for src in crops.source) and len(set(keys)) == len(keys)
        assert all(int(samples[k]["kind"]) == KIND_MV for k in keys)  # MF samples are not used
        ids[name] = {int(samples[k]["identity"]) for k in keys}
        for i, k in enumerate(keys):  # yaw is the sample camera's; GT landmarks framed as the tracking crop
            assert crops.yaw[i] == pytest.approx(euler_from_rotation(samples[k]["R"].astype(np.float64))[0], abs=1e-4)
            lo, hi = crops.landmarks[i].min(0), crops.landmarks[i].max(0)
            assert np.max(hi - lo) == pytest.approx(32 / LANDMARK_SCALE, rel=1e-3)
            assert np.allclose((lo + hi) / 2, 15.5, atol=1e-3)
            assert crops.norm[i] == pytest.approx(np.sqrt(np.prod(hi - lo)))
    # identities 0..5, seed % 3 == 0 held out; one crop per identity before a second one
    assert ids == {"calib": {1, 2, 4, 5}, "held": {0, 3}}
    assert len({f"{c.mean():.3f}" for c in calib.crops}) == 6  # six different pictures


def test_dataset_reader_spans_give_the_decoded_images(mv_dataset):
    shard = ShardReader(mv_dataset, kind=KIND_MV).shards[0]
    full, lazy = list(iter_shard(shard)), list(iter_shard(shard, images=False))
    assert [s["__key__"] for s in full] == [s["__key__"] for s in lazy] and "image" not in lazy[0]
    for a, b in zip(full[:3], lazy[:3]):
        assert np.array_equal(read_image(shard, b["image_span"]), a["image"])
        assert np.array_equal(a["R"], b["R"])


def test_without_dataset_real_crops_only_and_one_hint(shared, caplog):
    videos = sorted((shared / "assets" / "videos").glob("*.mp4"))[:2]
    cfg = CropSetConfig(videos=[str(v) for v in videos], frames_per_video=2, num_calibration=8, heldout_video_every=2)
    with caplog.at_level("INFO", logger="calibration.dataset"):
        calib, held = build_crop_sets(cfg, 32)
    assert len(calib) and calib.is_real.all() and held.is_real.all()
    assert [r.getMessage() for r in caplog.records].count(SYNTHETIC_HINT) == 1
    assert "--dataset DIR" in SYNTHETIC_HINT and "python -m training.pseudolabel" in SYNTHETIC_HINT


def test_calibration_reads_the_dataset_without_importing_training(mv_dataset):
    code = ("import sys; from calibration.dataset import CropSetConfig, dataset_face_crops; import calibration.qdq, "
            f"calibration.__main__; cfg = CropSetConfig(dataset=[{str(mv_dataset)!r}], renders=2); "
            "c, h = dataset_face_crops(cfg.dataset, 32, cfg); assert len(c) == len(h) == 2; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'training'))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_keypoint_yaw_recovers_known_yaw():
    """CenterFace-like keypoints from the ICT template turned by a known yaw give that yaw back."""
    lm = landmark_template()
    K = np.array([[800.0, 0, 256], [0, 800.0, 256], [0, 0, 1]])
    yaws = (-40, -20, 0, 15, 35)
    got = []
    for yaw in yaws:
        R = rotation_from_euler(yaw, 0, 0)
        p = project(lm @ R.T + np.array([0, 0, 60.0]), K)
        got.append(float(keypoint_yaw(np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]]))))
    # coarse (it only bins), but monotonic, signed right and within 10 degrees up to 40
    assert np.all(np.diff(got) > 0) and abs(got[2]) < 1.0
    assert np.all(np.abs(np.array(got) - yaws) < 10.0), got


def test_balanced_indices_spreads_over_yaw_bins():
    rng = np.random.default_rng(0)
    yaw = np.concatenate([rng.uniform(-5, 5, 200), rng.uniform(40, 50, 10), rng.uniform(-50, -40, 10)])
    idx = balanced_indices(yaw, 30, bin_deg=15)
    assert len(idx) == 30 and len(set(idx.tolist())) == 30
    assert (yaw[idx] > 30).sum() == 10 and (yaw[idx] < -30).sum() == 10  # every rare pose kept


def test_videos_split_disjoint():
    vids = [Path(f"v{i}.mp4") for i in range(7)]
    calib, held = split_videos(vids, CropSetConfig().heldout_video_every)
    assert not set(calib) & set(held) and len(calib) + len(held) == 7 and held


def test_real_video_crops(real_crops):
    assert len(real_crops) >= 6 and real_crops.crops.shape[1:] == (32, 32, 3)
    assert real_crops.crops.dtype == np.uint8 and real_crops.is_real.all()
    # the crop frames the face: the box is about 1/BOX_SCALE of the crop side
    assert np.all((real_crops.norm > 15) & (real_crops.norm < 28))
    assert np.isfinite(real_crops.yaw).all() and np.isnan(real_crops.landmarks).all()


def test_real_crops_from_photos(shared):
    """Photos are one-frame clips (engine.video): a crop each, marked real, named as photos."""
    photos = [shared / "assets" / "images" / n for n in ("3ddfa_v2_emma.jpg", "skimage_astronaut.png")]
    crops = video_face_crops(photos, 32, frames_per_video=4)
    assert len(crops) == 2 and crops.is_real.all()
    assert [s.split("#")[0] for s in crops.source] == ["photo:3ddfa_v2_emma.jpg", "photo:skimage_astronaut.png"]
    assert np.all((crops.norm > 15) & (crops.norm < 28))


def test_entropy_and_percentile_thresholds_clip_outliers():
    rng = np.random.default_rng(0)
    x = np.abs(np.concatenate([rng.normal(0, 1, 200_000), [60.0, -80.0]]))
    hist, edges = np.histogram(x, bins=2048, range=(0, x.max()))
    t_kl, t_pct = kl_threshold(hist, edges), percentile_threshold(hist, edges, 99.99)
    assert 2.5 < t_kl < 20 and 3 < t_pct < 6  # both ignore the two outliers at 60 and 80
    assert kl_threshold(np.zeros(2048), edges) == edges[-1]


def test_calibration_cache_format(tmp_path):
    assert trt_version_tag("8.6.1") == "8601" and trt_version_tag("10.3.0") == "100300"
    path = write_calibration_cache({"image": 2.64, "/model/x": 0.5}, tmp_path / "c.cache", "10.8.0.43")
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-100800-EntropyCalibration2"
    assert all(re.fullmatch(r"\S+: [0-9a-f]{8}", line) for line in lines[1:])
    bits = int(dict(line.split(": ") for line in lines[1:])["image"], 16)
    assert struct.unpack(">f", struct.pack(">I", bits))[0] == pytest.approx(2.64 / 127, rel=1e-6)
    header, scales = read_calibration_cache(path)
    assert header == lines[0] and scales["/model/x"] == pytest.approx(0.5 / 127, rel=1e-6)
    (tmp_path / "bad.cache").write_text("TRT-8601-EntropyCalibration2\nimage 3c0\n")
    with pytest.raises(ValueError, match="bad.cache:2"):
        read_calibration_cache(tmp_path / "bad.cache")


def test_sensitive_nodes_cover_heads_softmax_layernorm(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    groups = sensitive_nodes(model, QuantConfig())
    assert any("/head_3d/" in n for n in groups["heads"]) and "/model/MatMul_1" in groups["heads"]
    assert all("/head_" not in n for n in groups["softmax"] + groups["layernorm"])
    assert sum(n.endswith("Softmax") for n in groups["softmax"]) == 7  # 1 ViT + 3 x 2 decoder attentions
    assert len(groups["layernorm"]) == 16
    none = sensitive_nodes(model, QuantConfig(exclude_heads=False, exclude_softmax=False, exclude_layernorm=False))
    assert not any(none.values())


def test_qdq_model_runs_and_tracks_fp32(tiny_onnx, real_crops, tmp_path):
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = ((real_crops.crops / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    report = calibrate(tiny_onnx, x, tmp_path, QuantConfig(method="percentile"))
    for f in ("model.int8.qdq.onnx", "calibration.cache", "calibration.json", "ranges/entropy.json", "ranges/percentile.json"):
        assert (tmp_path / f).is_file(), f
    assert report["quantize_linear"] > 10 and 0 < report["quantized_nodes"] < report["quantizable_nodes"]
    qdq = onnx.load(str(tmp_path / "model.int8.qdq.onnx"))
    dq_out = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    heads = [n for n in qdq.graph.node if "/head_" in n.name and n.op_type in ("MatMul", "Gemm")]
    assert heads and not any(set(n.input) & dq_out for n in heads)  # heads stay float
    fp32 = ort.InferenceSession(str(tiny_onnx)).run(list(OUTPUT_NAMES), {"image": x})
    int8 = ort.InferenceSession(str(tmp_path / "model.int8.qdq.onnx"))
    for batch in (1, len(x)):  # dynamic batch survives quantisation
        got = int8.run(list(OUTPUT_NAMES), {"image": x[:batch]})
        assert got[3].shape == (batch, 68, 2)
    diff = np.abs(got[3] - fp32[3]).max()  # landmarks_2d, crop px of a 32 px crop
    assert 0 < diff < 1.5
    _, scales = read_calibration_cache(tmp_path / "calibration.cache")
    assert "image" in scales and all(s > 0 for s in scales.values())
