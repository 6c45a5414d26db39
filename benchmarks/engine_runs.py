"""Shared by the benchmarks: this engine's pipeline.toml stages on a clip, through the real runtime.

``default_stages()`` reads the stages of the repository's pipeline.toml (so "the default pipeline" is
what ``python -m engine run pipeline.toml`` runs); :func:`run_engine` runs them on N copies of a clip
with a file sink into a temp folder and returns the run summary, plus the landmarks when asked.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from engine.assets import REPO_ROOT
from engine.client import read_messages
from engine.config import parse_config
from engine.messages import FrameMessage
from engine.plugin import discover
from engine.runtime import Pipeline

log = logging.getLogger(__name__)


def default_stages() -> list[dict[str, Any]]:
    """The ``[[stages]]`` of pipeline.toml (comments and all options as committed)."""
    with open(REPO_ROOT / "pipeline.toml", "rb") as f:
        return tomllib.load(f)["stages"]


def default_cpu_pinning() -> str:
    """pipeline.toml's ``[pipeline] cpu_pinning`` (engine/affinity.py)."""
    with open(REPO_ROOT / "pipeline.toml", "rb") as f:
        return tomllib.load(f)["pipeline"].get("cpu_pinning", "off")


def stages_with(detect_every: int | None = None, input_size: int | None = None, threads: int | None = None,
                max_wait_ms: float | None = None, bundle: str | None = None) -> list[dict[str, Any]]:
    """pipeline.toml's stages with the detector's ``detect_every``/``input_size``, the ONNX Runtime
    threads, every stage's ``max_wait_ms`` and the landmark bundle overridden (None keeps pipeline.toml's)."""
    stages = copy.deepcopy(default_stages())
    for st in stages:
        if bundle is not None and st["type"] == "landmarks":
            st["bundle"] = str(bundle)
        if max_wait_ms is not None:
            st["max_wait_ms"] = max_wait_ms
        if st["type"] == "centerface":
            if detect_every is not None:
                st["detect_every"] = detect_every
            if input_size is not None:
                st["input_size"] = input_size
        if threads is not None and st["type"] in ("centerface", "landmarks"):
            st["intra_op_threads"] = threads
    return stages


def run_engine(clip: Path, stages: list[dict[str, Any]], streams: int = 1, max_frames: int | None = None,
               realtime: bool = False, keep_landmarks: bool = False, queue_size: int = 32,
               cpu_pinning: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run ``stages`` on ``streams`` copies of ``clip`` (``cpu_pinning``: default pipeline.toml's); returns
    (summary, {stream id: (F, 68, 2) landmarks of the first face, NaN without a face} when ``keep_landmarks``)."""
    with tempfile.TemporaryDirectory() as out:
        sources = [{"type": "file", "id": f"s{i}", "path": str(clip), "max_frames": max_frames, "realtime": realtime}
                   for i in range(streams)]
        pinning = default_cpu_pinning() if cpu_pinning is None else cpu_pinning
        doc = {"pipeline": {"queue_size": queue_size, "log_interval_s": 600.0, "log_level": "WARNING",
                            "cpu_pinning": pinning},
               "sources": sources, "stages": stages,
               "sinks": [{"type": "file_sink", "directory": out, "format": "msgpack"}]}
        summary = Pipeline(parse_config(doc, discover())).run(handle_signals=False)
        landmarks: dict[str, np.ndarray] = {}
        if keep_landmarks:
            for path in sorted(Path(out).glob("*.msgpack")):
                frames = [m for m in read_messages(path) if isinstance(m, FrameMessage)]
                lm = np.full((len(frames), 68, 2), np.nan, np.float32)
                for k, m in enumerate(sorted(frames, key=lambda m: m.index)):
                    if m.faces:
                        lm[k] = m.faces[0].landmarks_2d
                landmarks[path.stem] = lm
    return summary, landmarks
