"""Activation ranges of every float tensor of an ONNX model over calibration batches.

Two methods, both on the same 2048-bin |x| histograms (:func:`collect_histograms`):
- ``entropy``: the clipping threshold minimising the KL divergence between the tensor's histogram and
  its 8-bit quantised version (TensorRT's entropy calibration, the IInt8EntropyCalibrator2 idea);
- ``percentile``: the |x| percentile (99.999 by default), robust to rare outliers.

Ranges are saved in onnxruntime's JSON calibration cache (``save_tensors_data``), which
``quantize_static(calibration_cache_path=...)`` reads back without calibrating again; ``amax``
turns them into the symmetric per-tensor maxima that TensorRT's calibration cache stores.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
from onnxruntime.quantization.calibrate import TensorData, TensorsData, load_tensors_data, save_tensors_data

log = logging.getLogger(__name__)

Method = Literal["entropy", "percentile"]
HIST_BINS = 2048  # as TensorRT's entropy calibrator: 2048 bins searched for a 128-level clip
METHODS: dict[str, CalibrationMethod] = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}


class BatchReader(CalibrationDataReader):
    """Feeds (N, 3, S, S) float32 model inputs to a calibrator in batches; rewindable."""

    def __init__(self, inputs: np.ndarray, batch_size: int = 16, input_name: str = "image"):
        self.inputs, self.batch_size, self.input_name = inputs, batch_size, input_name
        self._it: Iterator | None = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.inputs), self.batch_size):
            yield {self.input_name: np.ascontiguousarray(self.inputs[i : i + self.batch_size])}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None

    def __len__(self) -> int:
        return -(-len(self.inputs) // self.batch_size)


def kl_threshold(hist: np.ndarray, edges: np.ndarray, quant_bins: int = 128) -> float:
    """Entropy calibration of an |x| histogram: the clipping edge minimising KL(P || Q), P the
    histogram clipped at that edge (outliers added to its last bin), Q its ``quant_bins``-level
    quantisation expanded back (TensorRT's entropy algorithm). Candidates are searched coarse
    (every 16th edge) then fine around the best, which keeps it fast in numpy."""
    hist = np.asarray(hist, dtype=np.float64)
    n = len(hist)
    if n <= quant_bins or hist.sum() == 0:
        return float(edges[-1])
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = hist[i:].sum()

    def kl(i: int) -> float:
        p = hist[:i].copy()
        p[-1] += tail[i]
        nonzero = hist[:i] > 0
        group = np.arange(i) * quant_bins // i
        sums = np.bincount(group, weights=hist[:i], minlength=quant_bins)
        counts = np.bincount(group, weights=nonzero, minlength=quant_bins)
        q = np.where(nonzero, sums[group] / np.maximum(counts[group], 1), 0.0)
        p, q = p / p.sum(), q / max(q.sum(), 1e-30)
        mask = p > 0
        return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))

    coarse = list(range(quant_bins, n + 1, 16)) + [n]
    best = min(coarse, key=kl)
    fine = range(max(quant_bins, best - 15), min(n, best + 15) + 1)
    return float(edges[min(fine, key=kl)])


def _augmented(onnx_path: str | Path, op_types: list[str] | None) -> tuple[bytes, list[str]]:
    """The model with every float activation (or those around ``op_types`` nodes) as an output."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    graph = model.graph
    floats = {v.name for v in [*graph.value_info, *graph.input, *graph.output]
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    initializers = {i.name for i in graph.initializer}
    names: list[str] = []
    for node in graph.node:
        if node.op_type == "Constant" or (op_types is not None and node.op_type not in op_types):
            continue
        for t in (*node.input, *node.output):
            if t in floats and t not in initializers and t not in names:
                names.append(t)
    existing = {o.name for o in graph.output}
    for t in names:
        if t not in existing:
            graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    return model.SerializeToString(), names


def collect_histograms(onnx_path: str | Path, inputs: np.ndarray, batch_size: int = 16,
                       op_types: list[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tensor name -> (|x| histogram with HIST_BINS bins over [0, amax], its edges).

    Two passes over the inputs (amax, then histograms on that fixed range): exact, and robust to
    constant or near-constant tensors (onnxruntime's own collector fails on those with "Too many
    bins for data range").
    """
    model_bytes, names = _augmented(onnx_path, op_types)
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    reader = BatchReader(inputs, batch_size, input_name)

    def batches():
        reader.rewind()
        while (feed := reader.get_next()) is not None:
            yield dict(zip(names, session.run(names, feed)))

    amax_ = dict.fromkeys(names, 0.0)
    for out in batches():
        for n, v in out.items():
            amax_[n] = max(amax_[n], float(np.nanmax(np.abs(v))) if v.size else 0.0)
    hists = {n: np.zeros(HIST_BINS, np.int64) for n in names}
    edges = {n: np.linspace(0.0, max(amax_[n], 1e-12), HIST_BINS + 1) for n in names}
    for out in batches():
        for n, v in out.items():
            hists[n] += np.histogram(np.abs(v.astype(np.float64)), bins=edges[n])[0]
    return {n: (hists[n], edges[n]) for n in names}


def percentile_threshold(hist: np.ndarray, edges: np.ndarray, percentile: float) -> float:
    """The upper edge of the bin where the |x| cumulative distribution reaches ``percentile``."""
    total = hist.sum()
    if total == 0:
        return float(edges[-1])
    i = int(np.searchsorted(np.cumsum(hist) / total, percentile / 100.0))
    return float(edges[min(i + 1, len(edges) - 1)])


def compute_ranges(
    onnx_path: str | Path, inputs: np.ndarray, percentile: float = 99.999, batch_size: int = 16,
    op_types: list[str] | None = None,
) -> dict[str, TensorsData]:
    """{"entropy": ..., "percentile": ...} symmetric ranges of the float activations of ``onnx_path``
    over ``inputs`` ((N, 3, S, S) float32): all of them, or those around ``op_types`` nodes."""
    histograms = collect_histograms(onnx_path, inputs, batch_size, op_types)
    out = {}
    for method, threshold in (("entropy", kl_threshold), ("percentile", lambda h, e: percentile_threshold(h, e, percentile))):
        data = {}
        for name, (hist, edges) in histograms.items():
            t = threshold(hist, edges)
            data[name] = TensorData(lowest=np.array(-t, np.float32), highest=np.array(t, np.float32))
        out[method] = TensorsData(METHODS[method], data)
    log.info("entropy and percentile ranges computed for %d tensors over %d inputs", len(histograms), len(inputs))
    return out


def amax(ranges: TensorsData) -> dict[str, float]:
    """Tensor name -> max(|lowest|, |highest|) (symmetric int8: scale = amax / 127)."""
    out = {}
    for name, data in ranges.data.items():
        lo, hi = data.range_value
        out[name] = float(max(abs(float(np.max(lo))), abs(float(np.max(hi)))))
    return out


def save_ranges(ranges: TensorsData, path: str | Path) -> Path:
    save_tensors_data(ranges, path)
    return Path(path)


def load_ranges(path: str | Path) -> TensorsData:
    return load_tensors_data(path)


def compare(entropy: dict[str, float], percentile: dict[str, float]) -> dict[str, float]:
    """Summary of how the two methods' amax differ (for the report): median and max ratio."""
    names = [n for n in entropy if n in percentile and entropy[n] > 0 and percentile[n] > 0]
    ratio = np.array([entropy[n] / percentile[n] for n in names]) if names else np.ones(1)
    return {"tensors": len(names), "entropy_over_percentile_median": float(np.median(ratio)),
            "entropy_over_percentile_min": float(ratio.min()), "entropy_over_percentile_max": float(ratio.max())}
