"""Inference backends of the landmark stage: one interface, three runtimes, and ``auto`` selection.

Every backend has ``infer(x) -> {output name: (N, ...) float32 array}`` for ``x`` (N, 3, S, S) float32
(``Bundle.preprocess`` output), ``max_batch`` (largest efficient call; ``infer`` chunks larger inputs)
and ``close()``. A backend that can crop on its device also has ``infer_crops(images, items)`` (see
:mod:`.torch_backend`), so only the uint8 frame crosses to the GPU.

- ``onnxruntime``: ``model.onnx`` (fp32) on CPU; the embedded default, no torch needed.
- ``torch``: ``model.safetensors`` in :func:`plugins.landmarks.transformer.create_model`, CPU or CUDA
  (fp16/bf16 autocast, CUDA graphs per batch bucket, GPU-side crops).
- ``tensorrt``: a serialized engine written by ``python -m training.build_engine``.
- ``auto``: tensorrt when an engine exists and tensorrt + CUDA import, else torch on CUDA when
  available, else onnxruntime on CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from engine.bundle import Bundle

log = logging.getLogger(__name__)

BackendName = Literal["auto", "onnxruntime", "torch", "tensorrt"]
Device = Literal["cpu", "cuda"]
Precision = Literal["fp32", "fp16", "bf16"]

# The outputs the landmark stage reads (every backend returns at least these).
REQUIRED_OUTPUTS = ("landmarks_3d", "rotation", "translation", "landmarks_2d", "confidence")
ENGINE_DIR_NAME = "engine"  # training.build_engine's default output: <bundle>/engine/model.engine


class BackendError(RuntimeError):
    """A backend that cannot run here; the message says what to install or change."""


class Backend(Protocol):
    name: str
    device: str
    precision: str
    max_batch: int

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def default_engine_dir(bundle: Bundle) -> Path:
    return bundle.path / ENGINE_DIR_NAME


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return cuda_available()


def resolve_auto(bundle: Bundle, device: Device | None, engine_dir: Path | None) -> tuple[str, str]:
    """(backend, device) that ``auto`` picks; ``device`` None or "cuda" allows the GPU."""
    engine_dir = engine_dir or default_engine_dir(bundle)
    if device != "cpu":
        if (engine_dir / "model.engine").is_file() and tensorrt_available():
            return "tensorrt", "cuda"
        if cuda_available():
            return "torch", "cuda"
        if device == "cuda":
            raise BackendError("device = 'cuda' but torch sees no CUDA GPU (install a CUDA build of torch: pip install .[gpu])")
    return "onnxruntime", "cpu"


def create_backend(
    bundle: Bundle,
    backend: BackendName = "auto",
    device: Device | None = None,
    precision: Precision = "fp32",
    max_batch: int = 32,
    intra_op_threads: int | None = None,
    engine_dir: str | Path | None = None,
    cuda_graphs: bool = True,
) -> Backend:
    """Open ``bundle`` on the named backend (see the module docstring). ``device`` None: the backend's
    natural device (auto: best available; onnxruntime: cpu; torch: cuda if available; tensorrt: cuda)."""
    engine_path = Path(engine_dir) if engine_dir else None
    if backend == "auto":
        backend, device = resolve_auto(bundle, device, engine_path)
        log.info("landmark backend auto -> %s on %s", backend, device)
    if backend == "onnxruntime":
        from plugins.landmarks.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(bundle, device or "cpu", precision, max_batch, intra_op_threads)
    if backend == "torch":
        from plugins.landmarks.backends.torch_backend import TorchBackend

        return TorchBackend(bundle, device or ("cuda" if cuda_available() else "cpu"), precision, max_batch,
                            intra_op_threads, cuda_graphs)
    if backend == "tensorrt":
        from plugins.landmarks.backends.tensorrt_backend import TensorRTBackend

        if device == "cpu":
            raise BackendError("backend 'tensorrt' runs on CUDA only: set device = 'cuda' or another backend")
        return TensorRTBackend(engine_path or default_engine_dir(bundle), max_batch)
    raise BackendError(f"unknown backend {backend!r}: use auto, onnxruntime, torch or tensorrt")


def run_chunked(fn, x: np.ndarray, max_batch: int) -> dict[str, np.ndarray]:
    """Call ``fn`` on chunks of at most ``max_batch`` rows and concatenate the outputs."""
    if len(x) <= max_batch:
        return fn(x)
    parts = [fn(x[i : i + max_batch]) for i in range(0, len(x), max_batch)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
