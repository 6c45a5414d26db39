"""ONNX Runtime backend: the bundle's fp32 ``model.onnx`` (dynamic batch axis), CPU by default.

No batch padding: on CPU the cost of a call grows with the batch, so fixed buckets would only add
work (measured in benchmarks/bench_landmarks.py). IO binding is not needed on CPU (inputs are host
arrays already, outputs are a few kB).

:func:`session_options` is shared with the CenterFace detector: full graph optimisation, sequential
execution (one model call at a time per stage: no inter-op pool), ``threads`` intra-op threads (ORT's
default: the physical cores) and no spinning. Spinning workers keep their cores busy between calls,
which on a small machine takes them from the decoder and the other stages' threads: on the 2-core
test machine a batch-1 landmark call took 34 ms with 2 spinning threads and 17.5 ms without, under
load (benchmarks/bench_stage.py prints the comparison).

Threads by batch size: without spinning, a second intra-op thread slows a one-face call down (the
hand-off costs more than the split saves: 2.97 vs 2.36 ms per face for facelift_mbv1_fast_128 at batch
1) while it speeds up a batch of 8 (622 vs 473 faces/s; benchmarks/bench_landmarks.py with and without
``--threads 1``). So when the thread count is left to the backend, calls of up to
:data:`SINGLE_THREAD_MAX_BATCH` faces (a tracked face, a frame or two) go to a one-thread session and
bigger batches to one with ORT's default threads (the second session costs the weights again: 3-6 MB).
"""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from engine.bundle import Bundle
from plugins.landmarks.backends import BackendError, run_chunked

log = logging.getLogger(__name__)


ALLOW_SPINNING = False  # see the module docstring
SINGLE_THREAD_MAX_BATCH = 2  # see the module docstring


def session_options(threads: int | None = None, spinning: bool = ALLOW_SPINNING) -> ort.SessionOptions:
    """ONNX Runtime session options for a CPU stage of this engine (see the module docstring)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return opts


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, device: str = "cpu", precision: str = "fp32", max_batch: int = 32,
                 intra_op_threads: int | None = None):
        if precision != "fp32":
            raise BackendError(f"onnxruntime runs the bundle's fp32 model.onnx; precision {precision!r} needs "
                               "backend = 'torch' or 'tensorrt' on CUDA")
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError("onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu), "
                                   "or use backend = 'torch' / 'tensorrt' for CUDA")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        path = str(bundle.onnx_path)
        self.session = ort.InferenceSession(path, session_options(intra_op_threads), providers=providers)
        # small batches on one thread when the count is ours to choose (see the module docstring)
        self.small_session = (ort.InferenceSession(path, session_options(1), providers=providers)
                              if device == "cpu" and intra_op_threads is None else self.session)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.device, self.precision, self.max_batch = device, precision, int(max_batch)

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        session = self.small_session if len(x) <= SINGLE_THREAD_MAX_BATCH else self.session
        out = session.run(self.output_names, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(self.output_names, out))

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return run_chunked(self._run, x, self.max_batch)

    def close(self) -> None:
        self.session = self.small_session = None
