import re
import struct
import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from calibration.dataset import CropSetConfig, balanced_indices, keypoint_yaw, split_videos, video_face_crops
from calibration.qdq import (
    QuantConfig, calibrate, read_calibration_cache, sensitive_nodes, trt_version_tag, write_calibration_cache,
)
from calibration.ranges import kl_threshold, percentile_threshold
from engine.geometry import project, rotation_from_euler
from plugins.landmarks.transformer import OUTPUT_NAMES, LandmarkTransformerConfig, create_model
from tiny_dataset import landmark_template
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
