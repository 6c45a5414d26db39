"""TensorRT engine manifest (``engine_manifest.json``, written by ``python -m training.build_engine``)
and the checks a runtime makes before deserialising ``model.engine``.

A serialized TensorRT engine only runs with the TensorRT version that built it (unless built
version-compatible) on the same GPU model / compute capability (unless built with a hardware
compatibility level); a mismatch fails deep inside ``deserialize_cuda_engine`` or, worse, runs with
tactics tuned for another GPU. The engine's TensorRT backend therefore calls
:func:`check_engine_compatible` first, which says what differs and what to do. No TensorRT import here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.bundle import sha256_file

ENGINE_MANIFEST_VERSION = "1.0.0"
ENGINE_FILE, MANIFEST_FILE = "model.engine", "engine_manifest.json"
REBUILD_HINT = "rebuild it on this machine: python -m training.build_engine --bundle <bundle dir>"


class EngineIncompatible(RuntimeError):
    """The engine cannot run here; the message says what differs and how to rebuild."""


class ProfileSpec(BaseModel):
    """One optimisation profile: the input's min/opt/max shapes (NCHW, dynamic batch)."""

    model_config = ConfigDict(extra="forbid")

    input: str = "image"
    min: list[int] = Field(min_length=4, max_length=4)
    opt: list[int] = Field(min_length=4, max_length=4)
    max: list[int] = Field(min_length=4, max_length=4)

    @model_validator(mode="after")
    def _ordered(self) -> ProfileSpec:
        for i, (a, b, c) in enumerate(zip(self.min, self.opt, self.max)):
            if not (1 <= a <= b <= c):
                raise ValueError(f"profile dim {i}: need 1 <= min <= opt <= max, got {a}, {b}, {c}")
        if self.min[1:] != self.max[1:]:
            raise ValueError(f"profile: only the batch axis may vary, got min {self.min} max {self.max}")
        return self

    @property
    def batch_range(self) -> tuple[int, int]:
        return self.min[0], self.max[0]


def profile_for(input_size: int, max_batch: int, opt_batch: int | None = None, min_batch: int = 1,
                input_name: str = "image") -> ProfileSpec:
    """Profile for batches ``min_batch..max_batch`` of (3, S, S) crops, tuned for ``opt_batch``."""
    opt = max_batch if opt_batch is None else opt_batch
    shape = [3, input_size, input_size]
    return ProfileSpec(input=input_name, min=[min_batch, *shape], opt=[opt, *shape], max=[max_batch, *shape])


class FileRef(BaseModel):
    file: str
    sha256: str
    bytes: int = Field(ge=0)


class SourceBundle(BaseModel):
    path: str
    name: str
    manifest_sha256: str  # sha256 of the bundle's manifest.json (it lists every file's sha256)


class EngineManifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    manifest_version: str = ENGINE_MANIFEST_VERSION
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: Literal["fp32", "fp16", "int8"]
    quantization: Literal["none", "qdq", "calibrator"] = "none"
    version_compatible: bool = False  # built with BuilderFlag.VERSION_COMPATIBLE
    hardware_compatibility: str = "NONE"  # trt.HardwareCompatibilityLevel name (NONE, AMPERE_PLUS, ...)
    profile: ProfileSpec
    inputs: list[str]
    outputs: list[str]
    engine: FileRef
    onnx: FileRef
    source_bundle: SourceBundle
    validation: dict = Field(default_factory=dict)
    build: dict = Field(default_factory=dict)  # workspace, flags, time, host



def file_ref(path: str | Path) -> FileRef:
    path = Path(path)
    return FileRef(file=path.name, sha256=sha256_file(path), bytes=path.stat().st_size)


def load_engine_manifest(path: str | Path) -> EngineManifest:
    """Read and validate ``engine_manifest.json`` (a directory holding it is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the engine first (python -m training.build_engine)")
    try:
        raw = json.loads(path.read_text())
        major = str(raw.get("manifest_version", "")).split(".")[0]
        if major != ENGINE_MANIFEST_VERSION.split(".")[0]:
            raise EngineIncompatible(
                f"{path}: manifest_version {raw.get('manifest_version')!r} is not {ENGINE_MANIFEST_VERSION.split('.')[0]}.x; {REBUILD_HINT}"
            )
        return EngineManifest.model_validate(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: {where}: {first['msg']} ({e.error_count()} error(s))") from e


def _version(v: str) -> tuple[int, int, int]:
    nums = [int(x) for x in re.findall(r"\d+", v)[:3]]
    if not nums:
        raise ValueError(f"not a TensorRT version: {v!r}")
    return tuple((nums + [0, 0])[:3])  # type: ignore[return-value]


def _gpu(name: str) -> str:
    return " ".join(name.lower().replace("nvidia", "").split())


# Minimum compute capability per hardware compatibility level (TensorRT docs).
_HW_LEVEL_MIN_CC = {"AMPERE_PLUS": (8, 0), "SAME_COMPUTE_CAPABILITY": None}


def check_engine_compatible(manifest: EngineManifest, trt_version: str, gpu_name: str,
                            compute_capability: tuple[int, int] | None = None) -> None:
    """Raise :class:`EngineIncompatible` unless ``model.engine`` can run with this TensorRT on this GPU.

    - TensorRT: the exact build version (major.minor.patch); a version-compatible engine runs with
      the same major version at or after the build version.
    - GPU: the same model name (and compute capability when given); an engine built with a hardware
      compatibility level accepts any GPU that level covers (AMPERE_PLUS: compute capability >= 8.0;
      SAME_COMPUTE_CAPABILITY: the same compute capability).
    """
    built, here = _version(manifest.tensorrt_version), _version(trt_version)
    if manifest.version_compatible:
        if here[0] != built[0] or here < built:
            raise EngineIncompatible(
                f"engine built (version-compatible) with TensorRT {manifest.tensorrt_version} needs TensorRT "
                f"{built[0]}.x >= {manifest.tensorrt_version}, this machine has {trt_version}; {REBUILD_HINT}"
            )
    elif here != built:
        raise EngineIncompatible(
            f"engine built with TensorRT {manifest.tensorrt_version}, this machine has {trt_version}: "
            f"serialized engines only load in the TensorRT version that built them; {REBUILD_HINT}"
        )
    level = manifest.hardware_compatibility.upper()
    built_cc = tuple(manifest.compute_capability)
    if level == "NONE":
        if _gpu(gpu_name) != _gpu(manifest.gpu_name):
            raise EngineIncompatible(
                f"engine built for GPU {manifest.gpu_name!r} (compute capability {built_cc[0]}.{built_cc[1]}), "
                f"this GPU is {gpu_name!r}: engines are tuned per GPU model; {REBUILD_HINT}"
            )
        if compute_capability is not None and tuple(compute_capability) != built_cc:
            raise EngineIncompatible(
                f"engine built for compute capability {built_cc}, this GPU has {tuple(compute_capability)}; {REBUILD_HINT}"
            )
        return
    if level not in _HW_LEVEL_MIN_CC:
        raise EngineIncompatible(f"engine hardware_compatibility {level!r} is unknown to this runtime; {REBUILD_HINT}")
    if compute_capability is None:
        raise EngineIncompatible(f"engine built with hardware compatibility {level}: the compute capability of this GPU is needed to check it")
    cc = tuple(compute_capability)
    need = _HW_LEVEL_MIN_CC[level]
    ok = cc == built_cc if need is None else cc >= need
    if not ok:
        raise EngineIncompatible(
            f"engine built with hardware compatibility {level} (from compute capability {built_cc}) does not "
            f"cover this GPU {gpu_name!r} (compute capability {cc}); {REBUILD_HINT}"
        )


def check_batch(manifest: EngineManifest, batch: int) -> None:
    """ValueError unless ``batch`` lies in the engine's optimisation profile."""
    lo, hi = manifest.profile.batch_range
    if not lo <= batch <= hi:
        raise ValueError(f"batch {batch} is outside the engine profile {lo}..{hi}: split the batch, or rebuild with --max-batch {batch}")


def check_source_bundle(manifest: EngineManifest, bundle_dir: str | Path) -> None:
    """EngineIncompatible when the bundle changed since the engine was built (stale engine)."""
    got = sha256_file(Path(bundle_dir) / "manifest.json")
    if got != manifest.source_bundle.manifest_sha256:
        raise EngineIncompatible(
            f"{bundle_dir}: bundle manifest sha256 {got[:12]}... differs from the one the engine was built "
            f"from ({manifest.source_bundle.manifest_sha256[:12]}...): the engine is stale; {REBUILD_HINT}"
        )
