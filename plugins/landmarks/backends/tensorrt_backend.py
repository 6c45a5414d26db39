"""TensorRT backend: runs a serialized engine built by ``python -m training.build_engine``.

The engine folder holds ``model.engine`` and ``engine_manifest.json`` (TensorRT version, GPU name,
precision, optimisation profile min/opt/max batch). A TensorRT engine only runs on the GPU model and
TensorRT version it was built with, so both are checked first and a mismatch says how to rebuild.
Device buffers are torch CUDA tensors (no pycuda needed); the TensorRT 10+ tensor API is used:
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from plugins.landmarks.backends import BackendError, run_chunked

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install .[tensorrt] (NVIDIA TensorRT 10+ for your CUDA version)"


def read_engine_manifest(engine_dir: Path) -> dict:
    path = engine_dir / "engine_manifest.json"
    if not (engine_dir / "model.engine").is_file():
        raise BackendError(f"{engine_dir / 'model.engine'} not found: build it on this GPU with "
                           f"python -m training.build_engine <bundle> {engine_dir}")
    if not path.is_file():
        raise BackendError(f"{path} not found: the engine folder needs the manifest that training.build_engine writes")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BackendError(f"{path}: not valid JSON ({exc})") from exc


def check_compatible(manifest: dict, trt_version: str, gpu_name: str, path: Path) -> None:
    """Refuse an engine built for another TensorRT version or GPU (it would fail or be wrong)."""
    built_trt = str(manifest.get("tensorrt_version") or manifest.get("trt_version") or "")
    built_gpu = str(manifest.get("gpu_name") or manifest.get("gpu") or "")
    rebuild = f"rebuild it here: python -m training.build_engine <bundle> {path}"
    if built_trt != trt_version:
        raise BackendError(f"{path}: engine built with TensorRT {built_trt or '?'}, this is TensorRT {trt_version}; {rebuild}")
    if built_gpu != gpu_name:
        raise BackendError(f"{path}: engine built for GPU {built_gpu or '?'!r}, this is {gpu_name!r}; {rebuild}")


def profile_max_batch(manifest: dict) -> int | None:
    profile = manifest.get("profile") or {}
    value = profile.get("max_batch", profile.get("max"))
    if isinstance(value, list):  # a shape like [max, 3, S, S]
        value = value[0]
    return int(value) if value else None


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
        check_compatible(manifest, trt.__version__, torch.cuda.get_device_name(), engine_dir / "engine_manifest.json")
        self.precision = str(manifest.get("precision", "fp16"))
        limit = profile_max_batch(manifest)
        self.max_batch = min(int(max_batch), limit) if limit else int(max_batch)
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        self.engine = self.runtime.deserialize_cuda_engine((engine_dir / "model.engine").read_bytes())
        if self.engine is None:
            raise BackendError(f"{engine_dir / 'model.engine'}: TensorRT could not deserialize it; rebuild the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1:
            raise BackendError(f"{engine_dir}: expected one input tensor, found {self.inputs}")
        self.stream = torch.cuda.Stream()

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        n = len(x)
        with torch.cuda.stream(self.stream):
            inp = torch.from_numpy(np.ascontiguousarray(x, np.float32)).pin_memory().cuda(non_blocking=True)
            name = self.inputs[0]
            self.context.set_input_shape(name, tuple(inp.shape))
            self.context.set_tensor_address(name, inp.data_ptr())
            outs = {}
            for out_name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(out_name))
                outs[out_name] = torch.empty(shape, dtype=torch.float32, device="cuda")
                self.context.set_tensor_address(out_name, outs[out_name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
        self.stream.synchronize()
        return {k: v[:n].cpu().numpy() for k, v in outs.items()}

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return run_chunked(self._run, x, self.max_batch)

    def close(self) -> None:
        self.context = None
        self.engine = None
