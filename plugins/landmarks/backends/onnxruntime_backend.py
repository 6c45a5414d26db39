"""ONNX Runtime backend: the bundle's fp32 ``model.onnx`` (dynamic batch axis), CPU by default.

No batch padding: on CPU the cost of a call grows with the batch, so fixed buckets would only add
work (measured in benchmarks/bench_landmarks.py). IO binding is not needed on CPU (inputs are host
arrays already).
"""

from __future__ import annotations

import logging

import numpy as np

from engine.bundle import Bundle
from plugins.landmarks.backends import BackendError, run_chunked

log = logging.getLogger(__name__)


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, device: str = "cpu", precision: str = "fp32", max_batch: int = 32,
                 intra_op_threads: int | None = None):
        import onnxruntime as ort

        if precision != "fp32":
            raise BackendError(f"onnxruntime runs the bundle's fp32 model.onnx; precision {precision!r} needs "
                               "backend = 'torch' or 'tensorrt' on CUDA")
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError("onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu), "
                                   "or use backend = 'torch' / 'tensorrt' for CUDA")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        self.session = ort.InferenceSession(str(bundle.onnx_path), opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.device, self.precision, self.max_batch = device, precision, int(max_batch)

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        out = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(x, np.float32)})
        return dict(zip(self.output_names, out))

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return run_chunked(self._run, x, self.max_batch)

    def close(self) -> None:
        self.session = None
