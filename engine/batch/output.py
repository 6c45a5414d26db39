"""Per-clip result files, the run manifest, the failures record and the summary table.

Layout of an output folder::

    OUT/clips/<clip_id>.npz    one per finished clip (format below), written atomically
    OUT/failures.json          {clip_id: {"path", "error", "attempts", "time"}} for clips that failed
    OUT/manifest.json          format version and one entry per run (config hash, code version, inputs, times)
    OUT/summary.csv            one row per clip: status, frames, faces, error
    OUT/summary.md             totals and failures as a Markdown table

``<clip_id>.npz`` (plain ``np.load``, no pickle). F = frames, N = faces over all frames::

    frame_index (F,) int32    pts (F,) float64 seconds (NaN if unknown)
    face_frame  (N,) int32    frame index each face belongs to (faces are sorted by frame)
    boxes (N,4) float32 x1y1x2y2 pixels   scores (N,) float32   keypoints (N,5,2) float32
    track_ids (N,) int64, -1 = no track (only when a stage set track ids)
    landmarks_2d (N,68,2), landmarks_3d (N,68,3), landmarks_canonical (N,68,3), rotation (N,3,3),
    euler (N,3), translation (N,3), confidence (N,68) float32; visibility (N,68) bool
                              (each only when a stage computed it; NaN/False for a face it skipped)
    meta_json (B,) uint8      UTF-8 JSON: format_version, clip_id, source, width, height, fps, frames,
                              faces, stages, config_hash, models (bundle name, path, sha256 per model
                              the stages load), model_hash, engine_version, attributes

The zip members are written in sorted order with a fixed timestamp, so the same results give
byte-identical files. A file is *done* when it exists and :func:`validate_clip` accepts it; anything
else (a temp file, a truncated or foreign file) is redone.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from engine.frame import Face, Frame

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CLIPS_DIR = "clips"
TMP_SUFFIX = ".tmp"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member timestamp: same arrays -> same bytes

# Optional Face fields -> (dtype, per-face shape, fill for a face without it)
OPTIONAL_ARRAYS: dict[str, tuple[str, tuple[int, ...], Any]] = {
    "landmarks_2d": ("<f4", (68, 2), np.nan),
    "landmarks_3d": ("<f4", (68, 3), np.nan),
    "landmarks_canonical": ("<f4", (68, 3), np.nan),
    "rotation": ("<f4", (3, 3), np.nan),
    "euler": ("<f4", (3,), np.nan),
    "translation": ("<f4", (3,), np.nan),
    "confidence": ("<f4", (68,), np.nan),
    "visibility": ("|b1", (68,), False),
}
REQUIRED_KEYS = ("frame_index", "pts", "face_frame", "boxes", "scores", "keypoints", "meta_json")
# Face.extra (plugin outputs, free shapes) is not written to the fixed-shape .npz columns
assert set(OPTIONAL_ARRAYS) | {"box", "score", "keypoints", "track_id", "extra"} == {f.name for f in fields(Face)}, (
    "engine.frame.Face changed: update OPTIONAL_ARRAYS"
)


# ------------------------------------------------------------------------------------------ arrays


def clip_arrays(frames: list[Frame]) -> dict[str, np.ndarray]:
    """The per-frame and per-face arrays of one clip's processed frames (in frame order)."""
    faces: list[tuple[int, Face]] = [(f.index, face) for f in frames for face in f.faces]
    n = len(faces)
    out: dict[str, np.ndarray] = {
        "frame_index": np.asarray([f.index for f in frames], np.int32),
        "pts": np.asarray([np.nan if f.pts is None else f.pts for f in frames], np.float64),
        "face_frame": np.asarray([i for i, _ in faces], np.int32),
        "boxes": np.asarray([face.box for _, face in faces], np.float32).reshape(n, 4),
        "scores": np.asarray([face.score for _, face in faces], np.float32),
        "keypoints": np.asarray([face.keypoints for _, face in faces], np.float32).reshape(n, 5, 2),
    }
    if any(face.track_id is not None for _, face in faces):
        out["track_ids"] = np.asarray([-1 if face.track_id is None else face.track_id for _, face in faces], np.int64)
    for name, (dtype, shape, fill) in OPTIONAL_ARRAYS.items():
        values = [getattr(face, name) for _, face in faces]
        if all(v is None for v in values):
            continue
        arr = np.full((n, *shape), fill, dtype=np.dtype(dtype))
        for i, v in enumerate(values):
            if v is not None:
                arr[i] = np.asarray(v).reshape(shape)
        out[name] = arr
    return out


def encode_meta(meta: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(), np.uint8)


def read_meta(npz: Any) -> dict[str, Any]:
    """The metadata dict of an opened clip file (``np.load(path)``)."""
    return json.loads(bytes(npz["meta_json"]).decode("utf-8"))


# ------------------------------------------------------------------------------------- atomic I/O


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())  # data on disk before the rename makes it visible
    os.replace(tmp, final)


def tmp_path(final: Path) -> Path:
    """Hidden temp name in the same folder (same file system, so os.replace is atomic)."""
    return final.with_name(f".{final.name}.{os.getpid()}{TMP_SUFFIX}")


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as a deterministic .npz readable by ``np.load``, atomically."""
    tmp = tmp_path(path)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for key in sorted(arrays):
                info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)
        _fsync_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    tmp = tmp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        _fsync_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------- validation


@dataclass
class ClipInfo:
    """What a valid result file holds, for the summary."""

    frames: int
    faces: int
    config_hash: str
    model_hash: str | None = None  # None: written before results recorded their models
    models: list[dict[str, Any]] | None = None


def validate_clip(path: Path, config_hash: str | None = None, model_hash: str | None = None) -> ClipInfo | None:
    """The file's counts if it is a complete result of this format (and of ``config_hash`` and
    ``model_hash`` when given), else None. Reads every array, so a truncated or corrupted member fails."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if not set(REQUIRED_KEYS) <= keys:
                return None
            meta = read_meta(z)
            arrays = {k: z[k] for k in keys}
    except Exception:  # any unreadable file is simply not done
        return None
    n, frames = len(arrays["face_frame"]), len(arrays["frame_index"])
    if meta.get("format_version") != FORMAT_VERSION or meta.get("frames") != frames or meta.get("faces") != n:
        return None
    if any(len(arrays[k]) != n for k in keys if k not in ("frame_index", "pts", "meta_json")):
        return None
    if config_hash is not None and meta.get("config_hash") != config_hash:
        return None
    if model_hash is not None and meta.get("model_hash") != model_hash:
        return None
    return ClipInfo(frames, n, meta.get("config_hash", ""), meta.get("model_hash"), meta.get("models"))


# -------------------------------------------------------------------------------- output folder


@dataclass
class ClipStatus:
    clip_id: str
    status: str  # ok | failed | done (finished by an earlier run) | skipped_failed | missing
    frames: int = 0
    faces: int = 0
    seconds: float = 0.0
    error: str = ""


class OutputDir:
    """An output folder: result paths, temp clean-up, failures and the manifest."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.clips = self.root / CLIPS_DIR
        self.clips.mkdir(parents=True, exist_ok=True)
        self.failures_path = self.root / "failures.json"
        self.manifest_path = self.root / "manifest.json"

    def clip_path(self, clip_id: str) -> Path:
        return self.clips / f"{clip_id}.npz"

    def clean_temp_files(self) -> int:
        """Remove temp files of interrupted writes (a killed run); returns how many."""
        removed = 0
        for folder in (self.clips, self.root):
            for tmp in folder.glob(f".*{TMP_SUFFIX}"):
                tmp.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("%s: removed %d temp file(s) of an interrupted run", self.root, removed)
        return removed

    def write_clip(self, clip_id: str, frames: list[Frame], meta: dict[str, Any]) -> ClipInfo:
        arrays = clip_arrays(frames)
        meta = {**meta, "format_version": FORMAT_VERSION, "clip_id": clip_id, "frames": len(frames),
                "faces": int(len(arrays["face_frame"]))}
        arrays["meta_json"] = encode_meta(meta)
        write_npz(self.clip_path(clip_id), arrays)
        return ClipInfo(len(frames), meta["faces"], meta.get("config_hash", ""))

    # failures ---------------------------------------------------------------------------------

    def load_failures(self) -> dict[str, dict[str, Any]]:
        if not self.failures_path.is_file():
            return {}
        try:
            return json.loads(self.failures_path.read_text(encoding="utf-8"))
        except ValueError:
            log.warning("%s is not valid JSON; starting a new failures record", self.failures_path)
            return {}

    def save_failures(self, failures: dict[str, dict[str, Any]]) -> None:
        write_text(self.failures_path, json.dumps(dict(sorted(failures.items())), indent=1) + "\n")

    # manifest ----------------------------------------------------------------------------------

    def load_manifest(self) -> dict[str, Any]:
        if self.manifest_path.is_file():
            try:
                return json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except ValueError:
                log.warning("%s is not valid JSON; starting a new manifest", self.manifest_path)
        return {"format_version": FORMAT_VERSION, "runs": []}

    def save_manifest(self, manifest: dict[str, Any]) -> None:
        write_text(self.manifest_path, json.dumps(manifest, indent=1) + "\n")

    # summary -----------------------------------------------------------------------------------

    def write_summary(self, statuses: list[ClipStatus], totals: dict[str, Any]) -> str:
        """Write summary.csv (per clip) and summary.md; returns the Markdown."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["clip_id", "status", "frames", "faces", "seconds", "error"])
        for s in sorted(statuses, key=lambda s: s.clip_id):
            writer.writerow([s.clip_id, s.status, s.frames, s.faces, f"{s.seconds:.3f}", s.error])
        write_text(self.root / "summary.csv", buf.getvalue())
        markdown = format_totals(totals)
        failed = [s for s in sorted(statuses, key=lambda s: s.clip_id) if s.status in ("failed", "skipped_failed")]
        if failed:
            markdown += "\n\n| failed clip | error |\n|---|---|\n"
            markdown += "\n".join(f"| {s.clip_id} | {s.error.replace('|', '/')} |" for s in failed)
        write_text(self.root / "summary.md", markdown + "\n")
        return markdown


def totals_of(statuses: list[ClipStatus], wall_s: float) -> dict[str, Any]:
    """Counts over all clips; frames/faces/fps count the clips processed in this run."""
    count = {k: sum(s.status == k for s in statuses) for k in ("ok", "failed", "done", "skipped_failed", "missing")}
    ran = [s for s in statuses if s.status == "ok"]
    frames = sum(s.frames for s in ran)
    return {
        "clips": len(statuses),
        **count,
        "frames": frames,
        "faces": sum(s.faces for s in ran),
        "wall_s": round(wall_s, 3),
        "clips_per_s": round(len(ran) / wall_s, 3) if wall_s > 0 else 0.0,
        "fps": round(frames / wall_s, 2) if wall_s > 0 else 0.0,
    }


def format_totals(t: dict[str, Any]) -> str:
    head = ["clips", "ok", "failed", "skipped (done)", "skipped (failed before)", "missing", "frames", "faces",
            "wall s", "clips/s", "frames/s"]
    row = [t["clips"], t["ok"], t["failed"], t["done"], t["skipped_failed"], t["missing"], t["frames"], t["faces"],
           t["wall_s"], t["clips_per_s"], t["fps"]]
    return "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n| " + " | ".join(map(str, row)) + " |"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
