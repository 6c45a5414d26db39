"""Explicitly quantised (Q/DQ) ONNX and a TensorRT calibration cache from calibration crops.

``calibrate(fp32_onnx, inputs, out_dir, cfg)`` computes entropy and percentile ranges
(calibration/ranges.py), writes ``model.int8.qdq.onnx`` with onnxruntime's ``quantize_static``
(QDQ format, symmetric int8 activations and per-channel symmetric int8 weights: what TensorRT's
explicit quantisation expects) and ``calibration.cache`` in TensorRT's text format, so an
``IInt8EntropyCalibrator2`` can reuse the same ranges for implicit quantisation.

Sensitive nodes stay in float (``nodes_to_exclude``), each group switchable in :class:`QuantConfig`:
- ``exclude_heads``: the output MLP heads and the pose/projection arithmetic after them (nodes named
  ``/model/head_*`` and the top-level ``/model/<op>`` nodes: landmarks 3D -> camera -> 2D);
- ``exclude_softmax``: attention softmax and the probabilities x values MatMul it feeds (softmax
  output in [0, 1] loses most of its resolution in symmetric int8);
- ``exclude_layernorm``: LayerNormalization (not a quantised op type by default; listed so that
  adding it to ``op_types`` still leaves it in float unless this is turned off).
"""

from __future__ import annotations

import json
import logging
import re
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field

from calibration.ranges import METHODS, Method, amax, compare, compute_ranges, save_ranges
from engine.onnx_weights import fp32_copy

log = logging.getLogger(__name__)

CACHE_ALGORITHM = "EntropyCalibration2"
DEFAULT_CACHE_TRT_VERSION = "10.3.0"  # header tag when no TensorRT is installed to ask
QDQ_FILE, CACHE_FILE = "model.int8.qdq.onnx", "calibration.cache"


class QuantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # ranges used for the Q/DQ model and the cache. Percentile by default: on the committed bundles the
    # entropy ranges clip too much (facelift_mbv1_fast_96: NME delta 8.3 %, pose 13.3 deg vs fp32) and the
    # 99.999th percentile passes the 1 % / 1 deg validation (0.62 % / 0.83 deg; fast_128: 0.52 % / 0.76 deg)
    method: Method = "percentile"
    percentile: float = Field(99.999, gt=50, le=100)
    per_channel: bool = True
    op_types: list[str] = Field(default_factory=lambda: ["Conv", "MatMul", "Gemm"])
    exclude_heads: bool = True
    exclude_softmax: bool = True
    exclude_layernorm: bool = True
    exclude_patterns: list[str] = Field(default_factory=list)  # extra regexes on node names
    batch_size: int = Field(16, ge=1)


# --- which nodes stay in float ---------------------------------------------------------------------
_HEAD = re.compile(r"^/model/(head_[^/]+/|[^/]+$)")


def sensitive_nodes(model: onnx.ModelProto, cfg: QuantConfig) -> dict[str, list[str]]:
    """Group -> node names kept in float."""
    nodes = list(model.graph.node)
    softmax_out = {o for n in nodes if n.op_type == "Softmax" for o in n.output}
    groups: dict[str, list[str]] = {"heads": [], "softmax": [], "layernorm": [], "patterns": []}
    patterns = [re.compile(p) for p in cfg.exclude_patterns]
    for n in nodes:
        if n.op_type in ("Constant", "Identity"):
            continue
        if cfg.exclude_heads and _HEAD.match(n.name):
            groups["heads"].append(n.name)
        elif cfg.exclude_softmax and (n.op_type == "Softmax" or (n.op_type == "MatMul" and softmax_out & set(n.input))):
            groups["softmax"].append(n.name)
        elif cfg.exclude_layernorm and n.op_type == "LayerNormalization":
            groups["layernorm"].append(n.name)
        elif any(p.search(n.name) for p in patterns):
            groups["patterns"].append(n.name)
    return groups


# --- TensorRT calibration cache --------------------------------------------------------------------
def trt_version_tag(version: str) -> str:
    """TensorRT's integer version as written in cache headers: 8.6.1 -> 8601, 10.3.0 -> 100300."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]] + [0, 0]
    major, minor, patch = parts[:3]
    return str(major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch)


def write_calibration_cache(amax_by_tensor: dict[str, float], path: str | Path, trt_version: str = DEFAULT_CACHE_TRT_VERSION) -> Path:
    """TensorRT text cache: a ``TRT-<version>-EntropyCalibration2`` header, then one
    ``<tensor name>: <scale>`` line per tensor, the scale (amax / 127) as the hex of its float32 bits."""
    lines = [f"TRT-{trt_version_tag(trt_version)}-{CACHE_ALGORITHM}"]
    for name, a in sorted(amax_by_tensor.items()):
        scale = np.float32(max(a, 1e-12) / 127.0)  # a zero scale would divide by zero in TensorRT
        bits = struct.unpack(">I", struct.pack(">f", scale))[0]
        lines.append(f"{name}: {bits:08x}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def read_calibration_cache(path: str | Path) -> tuple[str, dict[str, float]]:
    """(header, tensor name -> scale) of a TensorRT calibration cache; ValueError on a bad line."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines or not re.fullmatch(r"TRT-\d+-\w+", lines[0].strip()):
        raise ValueError(f"{path}: first line must be a 'TRT-<version>-<algorithm>' header, got {lines[:1]}")
    scales = {}
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(":")
        if not sep or not re.fullmatch(r"[0-9a-fA-F]{1,8}", value.strip()):
            raise ValueError(f"{path}:{i}: expected '<tensor>: <hex float32>', got {line!r}")
        scales[name.strip()] = struct.unpack(">f", struct.pack(">I", int(value.strip(), 16)))[0]
    return lines[0].strip(), scales


# --- Q/DQ model ------------------------------------------------------------------------------------
def quantize_qdq(fp32_onnx: str | Path, out_path: str | Path, ranges_json: str | Path, cfg: QuantConfig) -> dict:
    """Write the Q/DQ model from saved ranges; returns which nodes were kept in float and op counts."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32_onnx))
    groups = sensitive_nodes(model, cfg)
    excluded = sorted({n for names in groups.values() for n in names})
    quantize_static(
        str(fp32_onnx), str(out_path), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
        op_types_to_quantize=cfg.op_types, per_channel=cfg.per_channel,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
        calibrate_method=METHODS[cfg.method], calibration_cache_path=str(ranges_json),
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    quantised = onnx.load(str(out_path))
    ops = Counter(n.op_type for n in quantised.graph.node)
    candidates = [n.name for n in model.graph.node if n.op_type in cfg.op_types]
    return {
        "excluded": {k: len(v) for k, v in groups.items()},
        "excluded_nodes": excluded,
        "quantizable_nodes": len(candidates),
        "quantized_nodes": len([n for n in candidates if n not in set(excluded)]),
        "quantize_linear": ops.get("QuantizeLinear", 0),
        "dequantize_linear": ops.get("DequantizeLinear", 0),
    }


def calibrate(fp32_onnx: str | Path, inputs: np.ndarray, out_dir: str | Path, cfg: QuantConfig | None = None,
              trt_version: str = DEFAULT_CACHE_TRT_VERSION) -> dict:
    """Ranges (both methods) -> Q/DQ ONNX + TensorRT cache in ``out_dir``; returns the report dict,
    also written to ``out_dir/calibration.json``.

    ``inputs``: (N, 3, S, S) float32 preprocessed calibration crops (``Bundle.preprocess``).
    """
    cfg = cfg or QuantConfig()
    out_dir = Path(out_dir)
    (out_dir / "ranges").mkdir(parents=True, exist_ok=True)
    fp32_onnx = fp32_copy(fp32_onnx, out_dir)  # a bundle's model.onnx stores fp16 weights: quantise from fp32
    amaxes, paths = {}, {}
    for method, ranges in compute_ranges(fp32_onnx, inputs, cfg.percentile, cfg.batch_size).items():
        paths[method] = save_ranges(ranges, out_dir / "ranges" / f"{method}.json")
        amaxes[method] = amax(ranges)
    qdq_path = out_dir / QDQ_FILE
    quant = quantize_qdq(fp32_onnx, qdq_path, paths[cfg.method], cfg)
    cache = write_calibration_cache(amaxes[cfg.method], out_dir / CACHE_FILE, trt_version)
    report = {
        "method": cfg.method, "config": cfg.model_dump(mode="json"), "inputs": int(len(inputs)),
        "qdq_onnx": qdq_path.name, "calibration_cache": cache.name,
        "ranges": {m: f"ranges/{p.name}" for m, p in paths.items()},
        "range_comparison": compare(amaxes["entropy"], amaxes["percentile"]),
        **{k: v for k, v in quant.items() if k != "excluded_nodes"},
    }
    (out_dir / "calibration.json").write_text(json.dumps({**report, "excluded_nodes": quant["excluded_nodes"]}, indent=1))
    log.info("Q/DQ model %s: %d/%d quantisable nodes quantised (%s kept in float)", qdq_path,
             quant["quantized_nodes"], quant["quantizable_nodes"], quant["excluded"])
    return report
