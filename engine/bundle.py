"""Model bundle loader and validator (docs/DESIGN.md, written by training/bundle.py).

A bundle is a directory with ``manifest.json``, ``model.onnx`` (fp32 graph, dynamic batch, weights stored
fp16: engine/onnx_weights.py) and ``model.safetensors`` (fp16). ``load_bundle`` checks the manifest
schema, the major version and every listed file's sha256. It imports neither torch nor training: the engine runs the ONNX model with
onnxruntime (``Bundle.session()``); the torch backend is optional.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

BUNDLE_VERSION = "1.0.0"
SUPPORTED_MAJOR = 1


class BundleError(ValueError):
    """A bundle that this engine cannot use; the message says which file/key and what to do."""


class CropSpec(BaseModel):
    box_scale: float
    box_shift: float
    landmark_scale: float
    pixel_centers: str = "integer"


class InputSpec(BaseModel):
    name: str = "image"
    size: int = Field(gt=0)
    layout: str = "NCHW"
    channels: str = "RGB"
    scale: float = 1 / 255
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[float] = Field(min_length=3, max_length=3)
    crop: CropSpec
    K0: list[list[float]]


class LandmarkSpec(BaseModel):
    names: list[str] = Field(min_length=68, max_length=68)
    regions: dict[str, list[int]]


class FileSpec(BaseModel):
    sha256: str
    bytes: int


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    bundle_version: str
    name: str
    model: dict
    input: InputSpec
    landmarks: LandmarkSpec
    normals_template: list[list[float]] = Field(min_length=68, max_length=68)
    outputs: dict[str, list]
    training: dict = Field(default_factory=dict)
    validation: dict = Field(default_factory=dict)
    files: dict[str, FileSpec]

    @field_validator("bundle_version")
    @classmethod
    def _semver(cls, v: str) -> str:
        parts = v.split(".")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"bundle_version {v!r} is not semver MAJOR.MINOR.PATCH")
        return v


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    @property
    def weights_path(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def input_size(self) -> int:
        return self.manifest.input.size

    @property
    def output_names(self) -> list[str]:
        return list(self.manifest.outputs)

    @property
    def normals(self) -> np.ndarray:
        return np.asarray(self.manifest.normals_template, dtype=np.float32)

    @property
    def K0(self) -> np.ndarray:
        return np.asarray(self.manifest.input.K0, dtype=np.float64)

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB crops (engine.crop.warp_crop) -> (N, 3, S, S) float32 model input."""
        spec = self.manifest.input
        if crops.ndim != 4 or crops.shape[1:] != (spec.size, spec.size, 3):
            raise ValueError(f"expected (N, {spec.size}, {spec.size}, 3) crops, got {crops.shape}")
        x = crops.astype(np.float32) * np.float32(spec.scale)
        x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def session(self, providers: list[str] | None = None):
        """onnxruntime InferenceSession of ``model.onnx`` (CPU unless providers say otherwise)."""
        import onnxruntime as ort

        return ort.InferenceSession(str(self.onnx_path), providers=providers or ["CPUExecutionProvider"])


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (bundles, shards and engines are checked with it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_bundle(path: str | Path, verify_hashes: bool = True) -> Bundle:
    """Validate and open a bundle directory; raises ``BundleError`` with what to fix."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path} not found: a bundle directory needs manifest.json (training/bundle.py writes it)")
    try:
        raw = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from e
    version = str(raw.get("bundle_version", "")) if isinstance(raw, dict) else ""
    major = version.split(".")[0]
    if not major.isdigit():
        raise BundleError(f"{manifest_path}: bundle_version missing or not semver ({version!r})")
    if int(major) != SUPPORTED_MAJOR:
        raise BundleError(
            f"{manifest_path}: bundle_version {version} is not supported by this engine (it reads "
            f"{SUPPORTED_MAJOR}.x); export the model again with this version's training/bundle.py "
            "or use an engine release that reads it"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"{manifest_path}: {where}: {first['msg']} ({e.error_count()} error(s))") from e
    for required in ("model.onnx",):
        if required not in manifest.files:
            raise BundleError(f"{manifest_path}: files lacks {required}")
    for name, spec in manifest.files.items():
        f = path / name
        if not f.is_file():
            raise BundleError(f"{f}: listed in manifest.json files but missing")
        if verify_hashes and sha256_file(f) != spec.sha256:
            raise BundleError(f"{f}: sha256 differs from manifest.json (corrupt or replaced file); re-export the bundle")
    return Bundle(path=path, manifest=manifest)
