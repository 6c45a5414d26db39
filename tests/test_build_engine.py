import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from calibration.qdq import read_calibration_cache
from plugins.landmarks.transformer import OUTPUT_NAMES
from training.build_engine import main, rotation_angle_deg
from training.bundle import OPSET
from landmark_bundle import tiny_bundle
from tiny_dataset import write_tiny_dataset

REPO = Path(__file__).resolve().parent.parent
VIDEOS = ("liveportrait_d18.mp4", "pyfeat_single_face.mp4")  # first is held out, second calibrates


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A pseudo-label folder (training/dataset.py's format): its MV samples give the synthetic crops."""
    return write_tiny_dataset(tmp_path_factory.mktemp("pseudolabel") / "mv")


def _args(bundle: Path, out: Path, shared: Path, *extra: str) -> list[str]:
    videos = [str(shared / "assets" / "videos" / v) for v in VIDEOS]
    return ["--bundle", str(bundle), "--out", str(out), "--max-batch", "8", "--opt-batch", "4",
            "--frames-per-video", "4", "--renders", "4", "--videos", *videos, *extra]


@pytest.fixture(scope="module")
def int8_run(bundle, dataset, shared, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(_args(bundle, out, shared, "--precision", "int8", "--max-nme-delta", "5", "--max-pose-delta-deg", "5",
                          "--dataset", str(dataset)))
    return code, out, err.getvalue()


def test_int8_build_writes_validated_onnx_pair(int8_run, dataset):
    code, out, _ = int8_run
    assert code == 0
    for f in ("model.fp32.onnx", "model.int8.qdq.onnx", "calibration.cache", "calibration.json", "crops.json", "validation.json"):
        assert (out / f).is_file(), f
    v = json.loads((out / "validation.json").read_text())
    assert v["passed"] and v["opset"] == OPSET == 17 and not v["failures"]
    fp32, int8 = v["figures"]["onnx_fp32"], v["figures"]["onnx_int8_qdq"]
    assert fp32["real"] >= 3 and fp32["synthetic"] == 4  # real video crops and the dataset's MV samples
    assert fp32["max_landmark_px"] < 1e-2 and fp32["nme_delta"] < 1e-2 and fp32["pose_delta_deg"] < 1e-2
    assert int8["nme_delta"] > fp32["nme_delta"] and int8["nme_delta"] < 5  # quantisation changes something
    assert "gt_nme_change" in int8 and "nme_delta_real" in int8
    crops = json.loads((out / "crops.json").read_text())
    assert not set(crops["calibration"]["sources"]) & set(crops["heldout"]["sources"])
    assert all(s.startswith(f"video:{VIDEOS[0]}") for s in crops["heldout"]["sources"] if s.startswith("video:"))
    assert sum(s.startswith("mv:mv#") for s in crops["heldout"]["sources"]) == 4
    assert crops["config"]["dataset"] == [str(dataset)]
    header, scales = read_calibration_cache(out / "calibration.cache")
    assert header.endswith("-EntropyCalibration2") and "image" in scales


def test_both_onnx_run_with_dynamic_batch(int8_run):
    _, out, _ = int8_run
    x = np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32)
    for name in ("model.fp32.onnx", "model.int8.qdq.onnx"):
        model = onnx.load(str(out / name))
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        session = ort.InferenceSession(str(out / name))
        for n in (1, 5):
            got = session.run(list(OUTPUT_NAMES), {"image": x[:n]})
            assert got[3].shape == (n, 68, 2) and np.isfinite(got[3]).all()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT installed: it builds instead")
def test_without_tensorrt_stops_after_onnx_with_install_message(int8_run):
    _, out, err = int8_run
    assert "no TensorRT engine built" in err and "pip install '.[tensorrt]'" in err
    assert not (out / "model.engine").exists() and not (out / "engine_manifest.json").exists()


def test_threshold_failure_exits_nonzero(bundle, shared, tmp_path):
    cmd = [sys.executable, "-m", "training.build_engine",
           *_args(bundle, tmp_path, shared, "--precision", "int8", "--max-nme-delta", "0", "--renders", "0")]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "VALIDATION FAILED" in r.stderr and "onnx_int8_qdq: NME delta" in r.stderr and "--max-nme-delta 0.0%" in r.stderr
    assert json.loads((tmp_path / "validation.json").read_text())["passed"] is False


def test_bad_profile_is_a_clear_error(bundle, tmp_path, capsys):
    assert main(["--bundle", str(bundle), "--out", str(tmp_path), "--max-batch", "4", "--opt-batch", "8"]) == 1
    assert "min <= opt <= max" in capsys.readouterr().err
    assert main(["--bundle", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 1
    assert "manifest.json not found" in capsys.readouterr().err


def test_rotation_angle_is_exact_for_small_angles():
    from engine.geometry import rotation_from_euler

    Ra = np.stack([rotation_from_euler(10, 5, 0)] * 2)
    Rb = np.stack([rotation_from_euler(10.001, 5, 0), rotation_from_euler(40, 5, 0)])
    got = rotation_angle_deg(Ra, Rb)
    assert got[0] == pytest.approx(0.001, rel=1e-3) and got[1] == pytest.approx(30, rel=1e-6)


def test_failed_validation_names_the_next_steps():
    import argparse

    from training.build_engine import next_steps

    args = argparse.Namespace(calib_method="entropy", num_calibration=128, max_nme_delta=1.0, max_pose_delta_deg=1.0,
                              out=None, bundle="models/x")
    text = next_steps(args, ["onnx_int8_qdq: NME delta 1.80 > 1.00"])
    assert "--calib-method percentile" in text and "--precision fp16" in text and "--max-nme-delta" in text
    assert "int8" not in next_steps(args, ["onnx_fp32: pose delta 2.0 > 1.0"]).split("next steps:")[1].split("accept")[0]
