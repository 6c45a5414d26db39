"""The pseudo-label dataset on disk (docs/DESIGN.md "Training dataset on disk"): the writer.

A dataset folder holds ``manifest.json`` and ``shards/shard-NNNNN.tar`` in WebDataset layout: per
sample key ``000000123`` a ``.jpg`` (RGB, JPEG q=95) and a ``.npz`` (numpy arrays, no pickle). A shard
is written to ``shard-NNNNN.tar.tmp`` and renamed when complete, together with a small
``shard-NNNNN.json`` of its counts and sha256, so an interrupted run can resume shard by shard.

The reader (``ShardReader``, ``iter_samples``, ``iter_shard``, the format constants) is
engine/dataset_format.py, so that calibration reads these folders without importing training; it is
re-exported here.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.bundle import sha256_file
from engine.dataset_format import (  # noqa: F401  (the reader, re-exported)
    FORMAT_VERSION, KIND_MF, KIND_MV, ShardReader, decode_member, iter_samples, iter_shard, read_image, shard_name,
)

log = logging.getLogger(__name__)

JPEG_QUALITY = 95

# Required arrays and their shapes (None: any length) per kind; DESIGN.md's table.
COMMON_KEYS = {
    "kind": (),
    "identity": (),
    "box": (4,),
    "landmarks_2d": (68, 2),
    "visible": (68,),
    "confidence": (68,),
}
MV_KEYS = {"landmarks_3d": (68, 3), "landmarks_3d_true": (68, 3), "R": (3, 3), "t": (3,), "K": (3, 3)}
DTYPES = {"kind": np.int8, "identity": np.int64, "visible": np.bool_}


def sample_key(shard_index: int, local_index: int) -> str:
    """Globally unique, deterministic key: shard index then position (shards hold < 10,000 samples)."""
    return f"{shard_index * 10_000 + local_index:09d}"


def validate_sample(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast to the on-disk dtypes and check keys/shapes; raises ValueError naming the bad key."""
    kind = int(arrays.get("kind", -1))
    if kind not in (KIND_MV, KIND_MF):
        raise ValueError(f"sample key 'kind' must be {KIND_MV} (MV) or {KIND_MF} (MF), got {arrays.get('kind')!r}")
    spec = dict(COMMON_KEYS) | (MV_KEYS if kind == KIND_MV else {})
    out = {}
    for key, shape in spec.items():
        if key not in arrays:
            raise ValueError(f"sample is missing array {key!r} (kind {kind})")
        a = np.asarray(arrays[key], dtype=DTYPES.get(key, np.float32))
        if a.shape != shape:
            raise ValueError(f"sample array {key!r} has shape {a.shape}, expected {shape}")
        out[key] = a
    return out


def encode_sample(image_rgb: np.ndarray, arrays: dict[str, np.ndarray]) -> tuple[bytes, bytes]:
    """-> (jpeg bytes, npz bytes)."""
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"sample image must be HxWx3 uint8 RGB, got {image_rgb.shape} {image_rgb.dtype}")
    jpg = io.BytesIO()
    Image.fromarray(image_rgb).save(jpg, format="JPEG", quality=JPEG_QUALITY)
    npz = io.BytesIO()
    np.savez(npz, **validate_sample(arrays))
    return jpg.getvalue(), npz.getvalue()




class ShardWriter:
    """Writes one shard to a temp name; :meth:`commit` renames it into place and writes its sidecar."""

    def __init__(self, shards_dir: Path, index: int) -> None:
        self.dir = Path(shards_dir)
        self.index = index
        self.final = self.dir / f"{shard_name(index)}.tar"
        self.tmp = self.dir / f"{shard_name(index)}.tar.tmp"
        self.meta = self.dir / f"{shard_name(index)}.json"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._tar = tarfile.open(self.tmp, "w")
        self.count = 0

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0  # deterministic bytes for the same content
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, image_rgb: np.ndarray, arrays: dict[str, np.ndarray]) -> str:
        key = sample_key(self.index, self.count)
        jpg, npz = encode_sample(image_rgb, arrays)
        self._add(f"{key}.jpg", jpg)
        self._add(f"{key}.npz", npz)
        self.count += 1
        return key

    def commit(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Close, hash, write the sidecar (temp + rename) and rename the tar: the shard is then done."""
        self._tar.close()
        stats = dict(stats, index=self.index, file=f"shards/{self.final.name}", samples=self.count,
                     sha256=sha256_file(self.tmp), bytes=self.tmp.stat().st_size)
        meta_tmp = self.meta.with_suffix(".json.tmp")
        meta_tmp.write_text(json.dumps(stats, indent=1))
        os.replace(meta_tmp, self.meta)
        os.replace(self.tmp, self.final)  # last step: a shard counts as finished only once this exists
        return stats

    def abort(self) -> None:
        self._tar.close()
        self.tmp.unlink(missing_ok=True)


def finished_shard(shards_dir: Path, index: int) -> dict[str, Any] | None:
    """The sidecar stats of a completed shard, or None (missing, partial or inconsistent)."""
    tar = Path(shards_dir) / f"{shard_name(index)}.tar"
    meta = Path(shards_dir) / f"{shard_name(index)}.json"
    if not (tar.exists() and meta.exists()):
        return None
    try:
        stats = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return None
    return stats if stats.get("bytes") == tar.stat().st_size else None


def clean_partial(shards_dir: Path, index: int) -> None:
    """Remove what an interrupted run left for this shard so it is redone from scratch."""
    for suffix in (".tar.tmp", ".json.tmp", ".tar", ".json"):
        (Path(shards_dir) / f"{shard_name(index)}{suffix}").unlink(missing_ok=True)
