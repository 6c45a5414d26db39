import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from engine.trt_manifest import (
    EngineIncompatible, EngineManifest, FileRef, SourceBundle, check_batch, check_engine_compatible,
    check_source_bundle, load_engine_manifest, profile_for, sha256_file,
)
from training.trt_build import INSTALL_MESSAGE, TensorRTUnavailable, builder_settings, import_tensorrt

REPO = Path(__file__).resolve().parent.parent


def test_profile_shapes():
    p = profile_for(128, max_batch=32, opt_batch=8)
    assert p.min == [1, 3, 128, 128] and p.opt == [8, 3, 128, 128] and p.max == [32, 3, 128, 128]
    assert p.batch_range == (1, 32) and profile_for(64, 16).opt == [16, 3, 64, 64]
    with pytest.raises(ValueError, match="min <= opt <= max"):
        profile_for(128, max_batch=8, opt_batch=16)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        profile_for(128, max_batch=0)


def test_builder_settings_per_tensorrt_version():
    assert builder_settings(10, "fp32") .flags == () and not builder_settings(10, "fp32").strongly_typed
    fp16 = builder_settings(10, "fp16")
    assert fp16.onnx_variant == "fp32" and fp16.flags == ("FP16",) and "NORMALIZATION" in fp16.fp32_layer_types
    int8 = builder_settings(10, "int8")
    assert int8.onnx_variant == "qdq" and set(int8.flags) == {"INT8", "FP16"} and not int8.use_calibrator
    implicit = builder_settings(10, "int8", "calibrator")
    assert implicit.onnx_variant == "fp32" and implicit.use_calibrator
    # TensorRT 11: always strongly typed, the ONNX carries the precision, no precision flags
    for precision, variant in (("fp32", "fp32"), ("fp16", "fp16"), ("int8", "qdq")):
        s = builder_settings(11, precision)
        assert s.strongly_typed and s.flags == () and s.onnx_variant == variant
    with pytest.raises(ValueError, match="TensorRT 11 removed implicit"):
        builder_settings(11, "int8", "calibrator")
    with pytest.raises(ValueError, match="precision"):
        builder_settings(10, "int4")


def test_missing_tensorrt_gives_install_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    with pytest.raises(TensorRTUnavailable) as e:
        import_tensorrt()
    assert "pip install '.[tensorrt]'" in str(e.value) and "NVIDIA" in str(e.value)
    assert str(e.value).startswith(INSTALL_MESSAGE)


def _manifest(tmp_path: Path, **kw) -> EngineManifest:
    (tmp_path / "model.engine").write_bytes(b"plan")
    (tmp_path / "manifest.json").write_text("{}")
    base = dict(
        tensorrt_version="10.8.0.43", gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0), precision="int8",
        quantization="qdq", profile=profile_for(128, 32, 8), inputs=["image"], outputs=["landmarks_2d"],
        engine=FileRef(file="model.engine", sha256=sha256_file(tmp_path / "model.engine"), bytes=4),
        onnx=FileRef(file="model.int8.qdq.onnx", sha256="0" * 64, bytes=1),
        source_bundle=SourceBundle(path=str(tmp_path), name="x", manifest_sha256=sha256_file(tmp_path / "manifest.json")),
        validation={"onnx_int8_qdq": {"nme_delta": 0.3}},
    )
    return EngineManifest(**(base | kw))


def test_manifest_roundtrip_and_schema_errors(tmp_path):
    m = _manifest(tmp_path)
    (tmp_path / "engine_manifest.json").write_text(m.model_dump_json(indent=1))
    back = load_engine_manifest(tmp_path)  # a directory is accepted
    assert back == m and back.profile.opt == [8, 3, 128, 128]
    raw = json.loads(m.model_dump_json())
    raw["precision"] = "int4"
    (tmp_path / "engine_manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="precision"):
        load_engine_manifest(tmp_path / "engine_manifest.json")
    raw["precision"], raw["manifest_version"] = "int8", "2.0.0"
    (tmp_path / "engine_manifest.json").write_text(json.dumps(raw))
    with pytest.raises(EngineIncompatible, match="manifest_version"):
        load_engine_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="build the engine first"):
        load_engine_manifest(tmp_path / "nowhere")


def test_version_and_gpu_checks(tmp_path):
    m = _manifest(tmp_path)
    check_engine_compatible(m, "10.8.0.43", "NVIDIA H100 80GB HBM3", (9, 0))
    check_engine_compatible(m, "10.8.0", "H100 80GB HBM3")  # build number and 'NVIDIA' prefix ignored
    with pytest.raises(EngineIncompatible, match="TensorRT 10.8.0.43, this machine has 10.9.0"):
        check_engine_compatible(m, "10.9.0", "NVIDIA H100 80GB HBM3")
    with pytest.raises(EngineIncompatible, match="this GPU is 'NVIDIA A100"):
        check_engine_compatible(m, "10.8.0", "NVIDIA A100-SXM4-80GB", (8, 0))
    with pytest.raises(EngineIncompatible, match="compute capability"):
        check_engine_compatible(m, "10.8.0", "NVIDIA H100 80GB HBM3", (8, 9))
    vc = _manifest(tmp_path, version_compatible=True)
    check_engine_compatible(vc, "10.11.0", "NVIDIA H100 80GB HBM3")
    with pytest.raises(EngineIncompatible, match="version-compatible"):
        check_engine_compatible(vc, "10.7.0", "NVIDIA H100 80GB HBM3")
    with pytest.raises(EngineIncompatible, match="version-compatible"):
        check_engine_compatible(vc, "11.0.0", "NVIDIA H100 80GB HBM3")
    hw = _manifest(tmp_path, hardware_compatibility="AMPERE_PLUS")
    check_engine_compatible(hw, "10.8.0", "NVIDIA L4", (8, 9))
    with pytest.raises(EngineIncompatible, match="AMPERE_PLUS"):
        check_engine_compatible(hw, "10.8.0", "Tesla T4", (7, 5))


def test_batch_and_stale_bundle_checks(tmp_path):
    m = _manifest(tmp_path)
    check_batch(m, 1)
    check_batch(m, 32)
    with pytest.raises(ValueError, match="outside the engine profile 1..32"):
        check_batch(m, 33)
    check_source_bundle(m, tmp_path)
    (tmp_path / "manifest.json").write_text('{"changed": 1}')
    with pytest.raises(EngineIncompatible, match="stale"):
        check_source_bundle(m, tmp_path)


@pytest.mark.gpu
def test_real_tensorrt_build_and_inference(tmp_path):
    """Builds an fp16 engine of a tiny model and compares it with onnxruntime (needs TensorRT + CUDA)."""
    pytest.importorskip("tensorrt", reason="TensorRT not installed (pip install '.[tensorrt]' on an NVIDIA machine)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but no CUDA device is visible")
    import onnxruntime as ort

    from plugins.landmarks.transformer import OUTPUT_NAMES, LandmarkTransformerConfig, create_model
    from training.bundle import export_onnx
    from training.trt_build import BuildOptions, TrtRunner, build_serialized_engine

    raw = tomllib.loads((REPO / "training" / "configs" / "tiny.toml").read_text())
    cfg = LandmarkTransformerConfig.model_validate(raw["model"])
    onnx_path = tmp_path / "model.fp32.onnx"
    export_onnx(create_model(cfg).eval(), cfg, onnx_path)
    options = BuildOptions(precision="fp16", profile=profile_for(cfg.img_size, 8, 4), workspace_gib=1)
    engine, info = build_serialized_engine({"fp32": onnx_path}, options)
    runner = TrtRunner(engine)
    x = np.random.default_rng(0).normal(size=(5, 3, cfg.img_size, cfg.img_size)).astype(np.float32)
    got = runner.run(x)
    ref = ort.InferenceSession(str(onnx_path)).run(list(OUTPUT_NAMES), {"image": x})
    assert got["landmarks_2d"].shape == (5, 68, 2)
    assert np.abs(got["landmarks_2d"] - ref[3]).max() < 0.5  # fp16, crop px of a 32 px crop
