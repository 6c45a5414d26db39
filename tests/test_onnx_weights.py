"""fp16 weight storage in ONNX (engine/onnx_weights.py): half the bytes, same outputs, reversible."""

import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from engine.onnx_weights import SUFFIX, fp32_copy, store_weights_fp16, widen_weights
from plugins.landmarks.transformer import OUTPUT_NAMES, LandmarkTransformerConfig, create_model
from training.bundle import export_onnx, round_to_fp16

REPO = Path(__file__).resolve().parent.parent


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString()).run(list(OUTPUT_NAMES), {"image": x})


def test_fp16_storage_round_trip(tmp_path):
    raw = tomllib.loads((REPO / "training" / "configs" / "tiny.toml").read_text())
    cfg = LandmarkTransformerConfig.model_validate(raw["model"])
    model = create_model(cfg).eval()
    round_to_fp16(model)  # fp16-representable weights: storage then loses nothing
    path = tmp_path / "tiny.onnx"
    export_onnx(model, cfg, path)
    fp32 = onnx.load(str(path))
    x = np.random.default_rng(0).normal(size=(3, 3, cfg.img_size, cfg.img_size)).astype(np.float32)
    ref = _run(fp32, x)

    stored = onnx.load(str(path))
    n = store_weights_fp16(stored)
    assert n > 5
    weight_bytes = lambda m: sum(i.ByteSize() for i in m.graph.initializer)  # noqa: E731
    assert weight_bytes(stored) < 0.6 * weight_bytes(fp32)
    onnx.checker.check_model(stored)
    for r, g in zip(ref, _run(stored, x)):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)

    onnx.save(stored, str(tmp_path / "stored.onnx"))
    widened_path = fp32_copy(tmp_path / "stored.onnx", tmp_path / "out")
    assert widened_path != tmp_path / "stored.onnx" and fp32_copy(path, tmp_path / "out") == path
    widened = onnx.load(str(widened_path))
    assert not any(i.data_type == onnx.TensorProto.FLOAT16 for i in widened.graph.initializer)
    assert not any(SUFFIX in i for node in widened.graph.node for i in node.input)
    assert widen_weights(widened) == 0
    for r, g in zip(ref, _run(widened, x)):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
