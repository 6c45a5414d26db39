"""TensorRT builder and runner wrapper (TensorRT 10/11 Python API; ``tensorrt`` imported lazily).

TensorRT is optional (``pip install .[tensorrt]`` on a machine with NVIDIA drivers): everything here
that needs it calls :func:`import_tensorrt`, which raises :class:`TensorRTUnavailable` with what to
install. The TensorRT-free parts (precision plan, profile shapes) are plain functions, unit-tested
without a GPU.

Precision plan (:func:`builder_settings`):
- TensorRT 10 (weakly typed networks): fp16 sets ``BuilderFlag.FP16``; int8 builds the Q/DQ ONNX
  with ``INT8 | FP16`` (explicit quantisation; unquantised layers may use fp16), or, with
  ``int8_mode="calibrator"``, the fp32 ONNX with an ``IInt8EntropyCalibrator2`` that reads
  ``calibration.cache`` (implicit quantisation, deprecated since 10.1). LayerNorm and Softmax layers
  are pinned to fp32 in reduced-precision builds (fp16 overflow in their reductions).
- TensorRT 11 (always strongly typed, precision flags removed): the ONNX carries the precision:
  fp16 builds an fp16 copy of the ONNX (fp32 inputs/outputs kept), int8 the Q/DQ ONNX.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from engine.trt_manifest import ProfileSpec

log = logging.getLogger(__name__)

INSTALL_MESSAGE = (
    "TensorRT is not installed (python module 'tensorrt' not importable). The validated ONNX models are "
    "written; to build model.engine, on a machine with an NVIDIA GPU, its driver and CUDA: "
    "pip install '.[tensorrt]' (NVIDIA's tensorrt-cu13 wheels; their libraries download from NVIDIA's "
    "index) or install TensorRT 10+ from NVIDIA, then run python -m training.build_engine again."
)
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX")


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing; the message says what to install."""


def import_tensorrt():
    """The ``tensorrt`` module, or TensorRTUnavailable with the install message."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: the wheel imports but its .so libraries are missing
        raise TensorRTUnavailable(f"{INSTALL_MESSAGE} ({type(e).__name__}: {e})") from None
    return trt


def cuda_device() -> tuple[str, tuple[int, int]]:
    """(GPU name, compute capability) of CUDA device 0, via torch; TensorRTUnavailable without CUDA."""
    try:
        import torch
    except ImportError as e:
        raise TensorRTUnavailable(f"torch (CUDA build) is needed to run TensorRT engines here: {e}") from None
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA device visible (torch.cuda.is_available() is False): TensorRT needs an NVIDIA GPU and driver")
    return torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0))  # type: ignore[return-value]


def trt_major(version: str) -> int:
    return int(version.split(".")[0])


@dataclass(frozen=True)
class BuilderSettings:
    onnx_variant: Literal["fp32", "fp16", "qdq"]  # which ONNX file the parser reads
    strongly_typed: bool
    flags: tuple[str, ...] = ()  # trt.BuilderFlag names
    use_calibrator: bool = False
    fp32_layer_types: tuple[str, ...] = field(default_factory=tuple)  # trt.LayerType names pinned to fp32


def builder_settings(major: int, precision: str, int8_mode: str = "qdq") -> BuilderSettings:
    """How to build ``precision`` with TensorRT ``major`` (see the module docstring)."""
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision {precision!r}: use fp32, fp16 or int8")
    if int8_mode not in ("qdq", "calibrator"):
        raise ValueError(f"int8_mode {int8_mode!r}: use qdq or calibrator")
    if major >= 11:
        if precision == "int8" and int8_mode == "calibrator":
            raise ValueError("TensorRT 11 removed implicit (calibrator) INT8: use int8_mode='qdq' (the Q/DQ ONNX)")
        variant = {"fp32": "fp32", "fp16": "fp16", "int8": "qdq"}[precision]
        return BuilderSettings(variant, strongly_typed=True)
    if precision == "fp32":
        return BuilderSettings("fp32", strongly_typed=False)
    if precision == "fp16":
        return BuilderSettings("fp32", False, ("FP16",), fp32_layer_types=FP32_LAYER_TYPES)
    if int8_mode == "calibrator":
        return BuilderSettings("fp32", False, ("INT8", "FP16"), use_calibrator=True, fp32_layer_types=FP32_LAYER_TYPES)
    return BuilderSettings("qdq", False, ("INT8", "FP16"), fp32_layer_types=FP32_LAYER_TYPES)


class BuildOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    precision: Literal["fp32", "fp16", "int8"] = "fp16"
    int8_mode: Literal["qdq", "calibrator"] = "qdq"
    profile: ProfileSpec
    workspace_gib: float = Field(4.0, gt=0)
    calibration_cache: str | None = None  # for int8_mode="calibrator"


def to_fp16_onnx(src: str | Path, dst: str | Path) -> Path:
    """fp16 copy of an ONNX model with fp32 inputs/outputs (for strongly typed TensorRT 11 builds)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return Path(dst)


def _make_logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def _cache_calibrator(trt, cache_path: str, input_shape: list[int]):
    """IInt8EntropyCalibrator2 that only replays ``calibration.cache`` (written by calibration.qdq):
    TensorRT reads the cache first and never asks for batches when every tensor is in it."""
    from calibration.qdq import read_calibration_cache, write_calibration_cache

    _, scales = read_calibration_cache(cache_path)
    # Re-write the header for the installed TensorRT so it does not reject the version tag.
    tmp = Path(cache_path).with_suffix(".trt.cache")
    write_calibration_cache({k: v * 127.0 for k, v in scales.items()}, tmp, trt.__version__)
    data = tmp.read_bytes()

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()

        def get_batch_size(self):
            return input_shape[0]

        def get_batch(self, names):
            return None  # no batches: calibration comes from the cache

        def read_calibration_cache(self):
            return data

        def write_calibration_cache(self, cache):
            pass

    return CacheCalibrator()


def build_serialized_engine(onnx_paths: dict[str, Path], options: BuildOptions) -> tuple[bytes, dict]:
    """Parse the ONNX the plan needs (``onnx_paths`` keys fp32/fp16/qdq), build, return
    (serialized engine, build info). Raises TensorRTUnavailable / RuntimeError with parser errors."""
    trt = import_tensorrt()
    settings = builder_settings(trt_major(trt.__version__), options.precision, options.int8_mode)
    onnx_path = onnx_paths.get(settings.onnx_variant)
    if onnx_path is None:
        raise ValueError(f"{settings.onnx_variant} ONNX needed for a {options.precision} build, got {sorted(onnx_paths)}")
    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if settings.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") and trt_major(trt.__version__) < 11:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if trt_major(trt.__version__) < 10:  # explicit batch is the default (and the flag ignored) from 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    for name in settings.flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if settings.fp32_layer_types:
        pinned = {getattr(trt.LayerType, t) for t in settings.fp32_layer_types if hasattr(trt.LayerType, t)}
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type in pinned:
                layer.precision = trt.float32
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    p = options.profile
    profile = builder.create_optimization_profile()
    profile.set_shape(p.input, tuple(p.min), tuple(p.opt), tuple(p.max))
    config.add_optimization_profile(profile)
    if settings.use_calibrator:
        if not options.calibration_cache:
            raise ValueError("int8_mode='calibrator' needs BuildOptions.calibration_cache (calibration.cache)")
        config.int8_calibrator = _cache_calibrator(trt, options.calibration_cache, p.opt)
        config.set_calibration_profile(profile)
    t0 = time.time()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT build failed (see the TensorRT log above)")
    info = {
        "onnx": Path(onnx_path).name, "strongly_typed": settings.strongly_typed, "flags": list(settings.flags),
        "fp32_layer_types": list(settings.fp32_layer_types), "calibrator": settings.use_calibrator,
        "workspace_gib": options.workspace_gib, "build_s": round(time.time() - t0, 1),
    }
    return bytes(serialized), info


class TrtRunner:
    """Deserialised engine + execution context; ``run(x)`` takes (N, 3, S, S) float32 numpy and returns
    {output name: numpy}. Device buffers are torch CUDA tensors (no pycuda needed)."""

    def __init__(self, engine_bytes: bytes):
        import torch

        trt = import_tensorrt()
        self.trt, self.torch = trt, torch
        self.runtime = trt.Runtime(_make_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise RuntimeError("deserialize_cuda_engine failed (TensorRT version or GPU differs from the build?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.stream = torch.cuda.Stream()

    def _torch_dtype(self, name: str):
        dt = self.trt.nptype(self.engine.get_tensor_dtype(name))
        return getattr(self.torch, np.dtype(dt).name)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        (name,) = self.inputs
        xin = torch.from_numpy(np.ascontiguousarray(x)).to("cuda", self._torch_dtype(name))
        self.context.set_input_shape(name, tuple(xin.shape))
        self.context.set_tensor_address(name, xin.data_ptr())
        outs = {}
        for out in self.outputs:
            shape = tuple(self.context.get_tensor_shape(out))
            outs[out] = torch.empty(shape, dtype=self._torch_dtype(out), device="cuda")
            self.context.set_tensor_address(out, outs[out].data_ptr())
        with torch.cuda.stream(self.stream):
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
        self.stream.synchronize()
        return {k: v.float().cpu().numpy() for k, v in outs.items()}
