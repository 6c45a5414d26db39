"""A miniature CelebV-HQ in the real layout, for batch-job tests and benchmarks.

``ROOT/celebvhq_info.json`` ({"meta_info": {...}, "clips": {clip_id: {ytb_id, duration, bbox,
attributes: {appearance, action, emotion}, version}}}) and ``ROOT/processed/<clip_id>.mp4`` as the
dataset's download script writes them. Clips are short PyAV-encoded camera moves over scikit-image's
astronaut (tests/clips.py); a few are corrupt and one listed clip has no file (a vanished video).
Deterministic: the same arguments give the same files.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np

from clips import make_clip, make_corrupt_file, make_truncated_copy

APPEARANCE = ["Blurry", "Male", "Young", "Eyeglasses", "Smiling", "Mustache", "Bald", "Wearing_Hat"]
ACTION = ["blow", "chew", "close_eyes", "cough", "cry", "drink", "eat", "talk"]
EMOTIONS = ["neutral", "happy", "sad", "surprise"]
SIZES = [(96, 96), (128, 96), (160, 120), (128, 128)]


def _ytb_id(rng: np.random.Generator) -> str:
    alphabet = string.ascii_letters + string.digits + "-_"
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), 11))


def make_mini_celebvhq(root: str | Path, clips: int = 24, frames: int = 8, corrupt: int = 3,
                       truncated: int = 1, missing: int = 1, seed: int = 0) -> dict:
    """Write the dataset; returns {"root", "good", "corrupt", "missing"} (clip id lists)."""
    root = Path(root)
    folder = root / "processed"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries: dict[str, dict] = {}
    ids = []
    for i in range(clips + missing):
        ytb = _ytb_id(rng)
        cid = f"{ytb}_{i % 3}"
        ids.append(cid)
        start = float(np.round(rng.uniform(0, 100), 2))
        top, left = (float(np.round(v, 4)) for v in rng.uniform(0, 0.2, 2))
        multi = bool(i % 5 == 0)
        emotion = ({"sep_flag": True, "labels": [{"emotion": "neutral", "start_sec": 0, "end_sec": 0.2},
                                                 {"emotion": "happy", "start_sec": 0.2, "end_sec": 0.32}]}
                   if multi else {"sep_flag": False, "labels": EMOTIONS[i % len(EMOTIONS)]})
        entries[cid] = {
            "ytb_id": ytb,
            "duration": {"start_sec": start, "end_sec": round(start + frames / 25, 2)},
            "bbox": {"top": top, "bottom": round(top + 0.8, 4), "left": left, "right": round(left + 0.7, 4)},
            "attributes": {"appearance": rng.integers(0, 2, len(APPEARANCE)).tolist(),
                           "action": rng.integers(0, 2, len(ACTION)).tolist(), "emotion": emotion},
            "version": "v0.1",
        }
    bad = set(ids[3: 3 + corrupt * 5: 5][:corrupt])  # spread through the list
    trunc = set(ids[-missing - truncated - 1: -missing - 1] if truncated else [])
    good, broken = [], []
    for i, cid in enumerate(ids[:clips]):
        path = folder / f"{cid}.mp4"
        if cid in bad:
            make_corrupt_file(path, seed=i)
            broken.append(cid)
        elif cid in trunc:
            full = make_clip(folder / f".{cid}.full.mp4", frames=frames * 4, size=SIZES[i % len(SIZES)], faststart=True)
            make_truncated_copy(full, path, 0.4)
            full.unlink()
            broken.append(cid)
        else:
            make_clip(path, frames=frames, size=SIZES[i % len(SIZES)])
            good.append(cid)
    info = {"meta_info": {"appearance_mapping": APPEARANCE, "action_mapping": ACTION}, "clips": entries}
    (root / "celebvhq_info.json").write_text(json.dumps(info, indent=1))
    return {"root": root, "good": sorted(good), "corrupt": sorted(broken), "missing": sorted(ids[clips:])}
