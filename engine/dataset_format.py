"""Reader of the pseudo-label dataset format (docs/DESIGN.md "Training dataset on disk").

A dataset folder holds ``manifest.json`` and ``shards/shard-NNNNN.tar`` in WebDataset layout: per
sample key ``000000123`` a ``.jpg`` (RGB) and a ``.npz`` (numpy arrays, no pickle).

Why this lives in engine/ and not in training/: ``calibration`` must not import ``training`` (layering,
tests/test_import_graph.py) but takes its synthetic crops from the folders ``python -m
training.pseudolabel`` writes. The reader is small and needs only the standard library, numpy and
Pillow (all engine dependencies), so it is kept here once; ``training.dataset`` keeps the writer and
re-exports these names, so the format is read by one piece of code.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.bundle import sha256_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KIND_MV, KIND_MF = 0, 1


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def decode_member(name: str, data: bytes) -> Any:
    if name.endswith(".jpg"):
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    if name.endswith(".npz"):
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    raise ValueError(f"unexpected shard member {name!r}")


def iter_shard(path: Path, images: bool = True) -> Iterator[dict[str, Any]]:
    """Samples of one shard: dicts with ``__key__``, ``image`` (HxWx3 uint8 RGB) and the npz arrays.

    ``images=False`` leaves the JPEGs undecoded: ``image_span`` is then the (offset, size) of the
    JPEG bytes in the tar, for :func:`read_image` (pick samples by their arrays, decode only those)."""
    current: dict[str, Any] = {}
    with tarfile.open(path, "r") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if current and current["__key__"] != key:
                yield current
                current = {}
            current["__key__"] = key
            if ext == "jpg" and not images:
                current["image_span"] = (member.offset_data, member.size)
                continue
            value = decode_member(member.name, tar.extractfile(member).read())
            if ext == "jpg":
                current["image"] = value
            else:
                current.update(value)
    if current:
        yield current


def read_image(shard: Path, span: tuple[int, int]) -> np.ndarray:
    """The image at ``span`` (``image_span`` of :func:`iter_shard` with ``images=False``) of a shard."""
    with open(shard, "rb") as f:
        f.seek(span[0])
        return decode_member(".jpg", f.read(span[1]))


class ShardReader:
    """A finished dataset folder (``manifest.json`` + shards), or a single ``.tar`` shard.

    ``len(reader)`` is the sample count from the manifest; iterating yields sample dicts in shard order.
    ``kind=0|1`` restricts to shards of MV or MF samples.
    """

    def __init__(self, path: str | Path, kind: int | None = None, verify: bool = False) -> None:
        path = Path(path)
        self.root = path
        if path.suffix == ".tar":
            self.manifest: dict[str, Any] = {}
            self.shards = [path]
            self._len = None
            return
        manifest = path / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"{manifest} not found: not a pseudo-label dataset (run python -m training.pseudolabel)")
        self.manifest = json.loads(manifest.read_text())
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{manifest}: format_version {self.manifest.get('format_version')} != {FORMAT_VERSION}")
        if not self.manifest.get("complete", False):
            log.warning("%s: dataset is incomplete (an interrupted run?); reading the finished shards", manifest)
        entries = [s for s in self.manifest["shards"] if kind is None or s["kind"] == kind]
        self.shards = [path / s["file"] for s in entries]
        self._len = sum(s["samples"] for s in entries)
        if verify:
            for s, p in zip(entries, self.shards):
                if sha256_file(p) != s["sha256"]:
                    raise ValueError(f"{p}: sha256 does not match manifest.json (corrupt or modified shard)")

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(1 for _ in self)
        return self._len

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for shard in self.shards:
            yield from iter_shard(shard)


def iter_samples(path: str | Path, kind: int | None = None) -> Iterator[dict[str, Any]]:
    """Every sample of a dataset folder or shard (see :class:`ShardReader`)."""
    return iter(ShardReader(path, kind=kind))
