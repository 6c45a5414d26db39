"""TensorRT backend: runs a serialized engine built by ``python -m training.build_engine``.

The engine folder holds ``model.engine`` and ``engine_manifest.json`` (TensorRT version, GPU name,
precision, optimisation profile min/opt/max batch). A TensorRT engine only runs on the GPU model and
TensorRT version it was built with, so both are checked first and a mismatch says how to rebuild.
Device buffers are torch CUDA tensors (no pycuda needed); the TensorRT 10+ tensor API is used:
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from engine.trt_manifest import (
    ENGINE_FILE, MANIFEST_FILE, EngineIncompatible, EngineManifest, check_engine_compatible, load_engine_manifest,
)
from plugins.landmarks.backends import BackendError, run_chunked

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install .[tensorrt] (NVIDIA TensorRT 10+ for your CUDA version)"


def read_engine_manifest(engine_dir: Path) -> EngineManifest:
    """The folder's validated ``engine_manifest.json`` (engine/trt_manifest.py); BackendError if absent."""
    if not (engine_dir / ENGINE_FILE).is_file():
        raise BackendError(f"{engine_dir / ENGINE_FILE} not found: build it on this GPU with "
                           f"python -m training.build_engine --bundle <bundle dir> --out {engine_dir}")
    try:
        return load_engine_manifest(engine_dir / MANIFEST_FILE)
    except (FileNotFoundError, ValueError) as exc:
        raise BackendError(str(exc)) from exc


def check_compatible(manifest: EngineManifest, trt_version: str, gpu_name: str,
                     compute_capability: tuple[int, int] | None = None) -> None:
    """Refuse an engine built for another TensorRT version or GPU (engine/trt_manifest.py rules)."""
    try:
        check_engine_compatible(manifest, trt_version, gpu_name, compute_capability)
    except EngineIncompatible as exc:
        raise BackendError(str(exc)) from exc


class TensorRTBackend:
    name = "tensorrt"
    device = "cuda"

    def __init__(self, engine_dir: str | Path, max_batch: int = 32):
        engine_dir = Path(engine_dir)
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendError(f"backend 'tensorrt' needs the tensorrt package: {INSTALL_HINT}") from None
        import torch

        if not torch.cuda.is_available():
            raise BackendError("backend 'tensorrt' needs a CUDA GPU visible to torch (pip install .[gpu])")
        manifest = read_engine_manifest(engine_dir)
        check_compatible(manifest, trt.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())
        self.precision = manifest.precision
        self.max_batch = min(int(max_batch), manifest.profile.batch_range[1])  # the profile's max batch
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        self.engine = self.runtime.deserialize_cuda_engine((engine_dir / ENGINE_FILE).read_bytes())
        if self.engine is None:
            raise BackendError(f"{engine_dir / ENGINE_FILE}: TensorRT could not deserialize it; rebuild the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1:
            raise BackendError(f"{engine_dir}: expected one input tensor, found {self.inputs}")
        self.stream = torch.cuda.Stream()
        to_torch = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.bool: torch.bool}
        if hasattr(trt, "bfloat16"):
            to_torch[trt.bfloat16] = torch.bfloat16
        # I/O dtypes as built (a strongly typed fp16 engine may take and return fp16 tensors)
        self.dtypes = {n: to_torch[self.engine.get_tensor_dtype(n)] for n in names}

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        n = len(x)
        with torch.cuda.stream(self.stream):
            name = self.inputs[0]
            inp = torch.from_numpy(np.ascontiguousarray(x, np.float32)).pin_memory().cuda(non_blocking=True)
            inp = inp.to(self.dtypes[name])
            self.context.set_input_shape(name, tuple(inp.shape))
            self.context.set_tensor_address(name, inp.data_ptr())
            outs = {}
            for out_name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(out_name))
                outs[out_name] = torch.empty(shape, dtype=self.dtypes[out_name], device="cuda")
                self.context.set_tensor_address(out_name, outs[out_name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
        self.stream.synchronize()
        return {k: v[:n].float().cpu().numpy() for k, v in outs.items()}

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return run_chunked(self._run, x, self.max_batch)

    def close(self) -> None:
        self.context = None
        self.engine = None
