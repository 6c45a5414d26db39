"""Which clips a batch job processes: a folder, a glob, or CelebV-HQ's layout.

CelebV-HQ (github.com/CelebV-HQ/CelebV-HQ) ships ``celebvhq_info.json``::

    {"meta_info": {"appearance_mapping": [...], "action_mapping": [...]},
     "clips": {"M2Ohb0FAaJU_1": {"ytb_id": "M2Ohb0FAaJU", "duration": {"start_sec": .., "end_sec": ..},
                                 "bbox": {"top": .., "bottom": .., "left": .., "right": ..},
                                 "attributes": {"appearance": [0, 1, ..], "action": [..],
                                                "emotion": {"sep_flag": false, "labels": "neutral"}},
                                 "version": "v0.1"}, ...}}

and its download script writes each processed clip as ``<clip_id>.mp4`` into one folder. A clip listed
in the JSON without a file (its YouTube video vanished, a failed download) is reported as missing.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.video import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)

INFO_FILE = "celebvhq_info.json"
# Where the clips may sit under a CelebV-HQ root: the root itself, the download script's folder, the
# archive's folder name, or a plain name.
CLIP_FOLDERS = (".", "processed", "35666", "clips", "videos", "downloaded_celebvhq/processed")
# A clip id becomes a file name (<id>.mp4 in, <id>.npz out): plain names only, so a hostile index
# cannot read or write outside the dataset and output folders ("../../../x", "/etc/x", "a/b").
SAFE_CLIP_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}")


@dataclass(frozen=True)
class ClipTask:
    """One clip to process. ``attributes`` is copied verbatim into the clip's output metadata."""

    clip_id: str
    path: Path
    attributes: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class ClipList:
    clips: list[ClipTask]
    missing: list[str] = field(default_factory=list)  # ids listed in an index without a file
    source: dict[str, Any] = field(default_factory=dict)  # what was listed, for the run manifest
    rejected: list[str] = field(default_factory=list)  # ids that are not plain file names (never opened)


class DatasetError(ValueError):
    """The input names nothing processable; the message says what was looked for."""


def _video_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)


def _unique_ids(paths: list[Path]) -> list[str]:
    """File stems, or (when two files share a stem) paths relative to their common folder with
    separators replaced by ``__``, so every clip id is a valid, unique file name."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    return [str(p.resolve().relative_to(root)).replace(os.sep, "__") for p in paths]


def list_files(spec: str) -> ClipList:
    """Every video file in a folder (sorted), or the files matching a glob (``**`` allowed)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        try:
            files = _video_files(path)
        except OSError as exc:
            raise DatasetError(f"--input {spec!r}: cannot list the folder ({exc.strerror or exc}); check its permissions") from None
        kind = "folder"
    elif path.is_file():  # before the glob test: a literal name such as take[1].mp4
        files, kind = [path], "file"
    elif glob.has_magic(spec):
        files = [Path(f) for f in sorted(glob.glob(str(path), recursive=True)) if Path(f).is_file()]
        kind = "glob"
    else:
        raise DatasetError(f"--input {spec!r}: no such file or folder, and not a glob pattern")
    if not files:
        raise DatasetError(
            f"--input {spec!r}: no video files ({kind}); extensions looked for: {', '.join(sorted(VIDEO_EXTENSIONS))}"
        )
    clips = [ClipTask(cid, f) for cid, f in zip(_unique_ids(files), files)]
    return ClipList(clips, source={"kind": kind, "input": spec, "clips": len(clips)})


def find_clip_folder(root: Path, clip_ids: list[str]) -> Path:
    """The folder under ``root`` holding the most ``<clip_id>.mp4`` files of the index."""
    best, best_count = root, -1
    sample = clip_ids[:200]  # enough to tell folders apart without stat-ing 35k files per candidate
    for name in CLIP_FOLDERS:
        folder = (root / name).resolve()
        if folder.is_dir():
            count = sum((folder / f"{cid}.mp4").is_file() for cid in sample)
            if count > best_count:
                best, best_count = folder, count
    return best


def list_celebvhq(root: str | Path, clips_dir: str | Path | None = None) -> ClipList:
    """CelebV-HQ: ``root/celebvhq_info.json`` plus ``<clip_id>.mp4`` files in ``clips_dir`` (default:
    the folder among ``root``, ``root/processed``, ``root/35666``, ``root/clips``, ``root/videos``,
    ``root/downloaded_celebvhq/processed`` that holds most of them).
    Each task's ``attributes`` is the clip's JSON entry plus ``meta_info`` (the attribute names)."""
    root = Path(root).expanduser()
    info_path = root / INFO_FILE if root.is_dir() else root
    if not info_path.is_file():
        raise DatasetError(f"--celebvhq {root}: {INFO_FILE} not found (expected the CelebV-HQ root folder)")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        entries: dict[str, Any] = info["clips"]
        meta_info = info.get("meta_info", {})
        if not isinstance(entries, dict):
            raise TypeError("'clips' is not an object keyed by clip id")
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{info_path}: not a CelebV-HQ info file ({type(exc).__name__}: {exc})") from None
    ids = sorted(cid for cid in entries if isinstance(cid, str) and SAFE_CLIP_ID.fullmatch(cid))
    rejected = sorted(str(cid) for cid in entries if cid not in ids)
    if rejected:
        log.error("%s: %d clip id(s) are not plain file names and are skipped (counted as missing): %s",
                  info_path, len(rejected), ", ".join(repr(c) for c in rejected[:5]))
    folder = Path(clips_dir).expanduser() if clips_dir else find_clip_folder(info_path.parent, ids)
    clips: list[ClipTask] = []
    missing: list[str] = []
    for cid in ids:
        path = folder / f"{cid}.mp4"
        if path.is_file():
            clips.append(ClipTask(cid, path, {"celebvhq": entries[cid], "meta_info": meta_info}))
        else:
            missing.append(cid)
    if missing:
        log.warning("%s: %d of %d clips have no file in %s (counted as missing)", info_path, len(missing), len(ids), folder)
    if not clips:
        raise DatasetError(f"{info_path}: none of its {len(entries)} clips found as <clip_id>.mp4 in {folder}"
                           + (f" ({len(rejected)} id(s) rejected as unsafe file names)" if rejected else ""))
    source = {"kind": "celebvhq", "info": str(info_path), "clips_dir": str(folder), "listed": len(entries),
              "clips": len(clips), "missing": len(missing), "rejected": len(rejected)}
    return ClipList(clips, missing, source, rejected)
