"""Per-frame ms of each part of the landmark stage in tracking mode (one stream, one face), and the model alone.

    nice -n 19 python benchmarks/bench_stage.py [--clip PATH] [--max-frames 200] [--detect-every 10]
        [--threads N] [--bundle DIR] [--repeats 3] [--json out.json]

Frames are decoded and detected (CenterFace 320) once up front; then the stage processes them in batches
of 8 as the runtime hands them over, with ``detect_every`` frames tracked from landmarks between
detections (detections on the other frames are dropped, as ``centerface.detect_every`` would). Each
part is timed by wrapping the function that does it (crop, preprocess, model call, un-crop + pose,
tracker, smoothing); ``other`` is the rest of ``LandmarkStage.process``. ``model alone`` is the backend
on one face in a loop (the floor of the stage), and ``session options`` compares ONNX Runtime thread
and spinning settings on that call, interleaved so load affects them alike.

Before/after: the same script against another checkout, e.g. the commit before the fast path::

    git worktree add /tmp/before 20b15eb
    PYTHONPATH=/tmp/before nice -n 19 python benchmarks/bench_stage.py

Profile (the command that found the hot spots; the stage's main thread)::

    nice -n 19 python -m cProfile -s tottime benchmarks/bench_stage.py --repeats 1 | head -40
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import plugins.landmarks.model as model_module
import plugins.landmarks.stage as stage_module
from engine.assets import shared_asset
from engine.bundle import Bundle
from plugins.detectors.centerface import CenterFaceDetector
from plugins.landmarks.stage import LandmarkStage
from plugins.sources.pyav_source import FileSource
from plugins.trackers.iou_tracker import IoUTracker
from plugins.trackers.one_euro import FaceSmoother

BATCH = 8


class Timers:
    """Wraps functions (module, class or instance attributes) and sums the time spent in each part."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo: list[tuple[object, str, object]] = []
        self._depth = threading.local()

    def wrap(self, owner: object, attr: str, part: str) -> None:
        fn = getattr(owner, attr, None)
        if fn is None:
            return
        timers = self

        def timed(*args, **kwargs):
            depth = getattr(timers._depth, "n", 0)
            timers._depth.n = depth + 1  # nested parts (apply_all -> apply) count once
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timers._depth.n = depth
                if depth == 0:
                    timers.seconds[part] += time.perf_counter() - t0

        self._undo.append((owner, attr, owner.__dict__.get(attr) if isinstance(owner, type) else fn))
        setattr(owner, attr, timed)

    def restore(self) -> None:
        for owner, attr, fn in reversed(self._undo):
            if isinstance(owner, type) and fn is None:
                delattr(owner, attr)
            else:
                setattr(owner, attr, fn)
        self._undo.clear()


def load_frames(clip: Path, max_frames: int, detect_every: int) -> list:
    frames = list(FileSource(FileSource.Options(path=str(clip), max_frames=max_frames), "bench").frames(threading.Event()))
    detector = CenterFaceDetector(CenterFaceDetector.Options(input_size=320))
    detector.start()
    for i in range(0, len(frames), BATCH):
        detector.process(frames[i : i + BATCH])
    for f in frames:
        if f.index % detect_every:
            f.meta["detected"], f.faces = False, []
    return frames


def run_stage(frames: list, threads: int | None, bundle: str | None = None
              ) -> tuple[float, dict[str, float], LandmarkStage]:
    """(ms per frame, ms per frame of each part) of the stage over ``frames`` (after a warm-up batch)."""
    stage = LandmarkStage(LandmarkStage.Options(bundle=bundle, backend="onnxruntime", tracking=True, smoothing=True,
                                                intra_op_threads=threads))
    stage.start()
    frames = copy.deepcopy(frames)
    stage.process(frames[:BATCH])
    timers = Timers()
    timers.wrap(model_module, "crop_face", "crop")
    timers.wrap(Bundle, "preprocess", "preprocess")  # before the fused preprocess
    timers.wrap(stage.backend, "infer", "model")
    timers.wrap(stage_module, "uncrop_2d", "un-crop + pose")  # the stage's names (it imports them)
    timers.wrap(stage_module, "uncrop_pose", "un-crop + pose")
    for name in ("update", "refresh", "predict", "mark_lost"):
        timers.wrap(IoUTracker, name, "tracker")
    for name in ("update_frames", "apply_all", "apply"):
        timers.wrap(FaceSmoother, name, "smoothing")
    rest = frames[BATCH:]
    t0 = time.perf_counter()
    for i in range(0, len(rest), BATCH):
        stage.process(rest[i : i + BATCH])
    total = time.perf_counter() - t0
    timers.restore()
    n = len(rest)
    parts = {k: 1000 * v / n for k, v in timers.seconds.items()}
    parts["other"] = 1000 * total / n - sum(parts.values())
    return 1000 * total / n, parts, stage


def model_alone(stage: LandmarkStage, frames: list, reps: int = 100) -> float:
    """ms per call of the backend on one face (the crop of the first detected face)."""
    S = stage.bundle.input_size
    face = next(f for f in frames if f.faces).faces[0]
    from engine.crop import crop_matrix, roi_from_box

    crop = model_module.crop_face(frames[0].image, crop_matrix(roi_from_box(face.box), S), S)
    x = stage.bundle.preprocess(crop[None])
    for _ in range(5):
        stage.backend.infer(x)
    t0 = time.perf_counter()
    for _ in range(reps):
        stage.backend.infer(x)
    return 1000 * (time.perf_counter() - t0) / reps


def session_options_table(onnx_path: Path, size: int, reps: int = 30, rounds: int = 5) -> dict[str, float]:
    """Median ms of a batch-1 call for intra-op threads 1/2 x spinning on/off, interleaved."""
    import onnxruntime as ort

    sessions = {}
    for threads in (1, 2):
        for spin in (True, False):
            o = ort.SessionOptions()
            o.log_severity_level = 3
            o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            o.intra_op_num_threads = threads
            o.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
            sessions[f"threads={threads} spinning={'on' if spin else 'off'}"] = ort.InferenceSession(
                str(onnx_path), o, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    name = next(iter(sessions.values())).get_inputs()[0].name
    times: dict[str, list[float]] = defaultdict(list)
    for s in sessions.values():
        s.run(None, {name: x})
    for _ in range(rounds):
        for key, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                s.run(None, {name: x})
            times[key].append(1000 * (time.perf_counter() - t0) / reps)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", type=Path, default=None, help="default: shared liveportrait_d10.mp4 (512x512)")
    p.add_argument("--max-frames", type=int, default=200)
    p.add_argument("--detect-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of the landmark backend")
    p.add_argument("--bundle", default=None, help="landmark bundle (default: the engine's default bundle)")
    p.add_argument("--repeats", type=int, default=3, help="stage runs; the fastest is reported")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    clip = args.clip or shared_asset("videos", "liveportrait_d10.mp4")
    frames = load_frames(clip, args.max_frames, args.detect_every)
    best = None
    for _ in range(args.repeats):
        ms, parts, stage = run_stage(frames, args.threads, args.bundle)
        if best is None or ms < best[0]:
            best = (ms, parts)
    ms, parts = best
    model_ms = model_alone(stage, frames)
    options = session_options_table(stage.bundle.onnx_path, stage.bundle.input_size)
    stage.close()
    print(f"landmark stage, tracking mode (detect every {args.detect_every}), {clip.name}, "
          f"{args.max_frames} frames: {ms:.2f} ms/frame")
    for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {k:16s} {v:7.2f} ms/frame")
    print(f"model alone, 1 face: {model_ms:.2f} ms  (per-frame path around it: {ms - model_ms:.2f} ms)")
    print("session options (batch 1, median ms):")
    for k, v in options.items():
        print(f"  {k:28s} {v:7.2f}")
    if args.json:
        args.json.write_text(json.dumps({"stage_ms_per_frame": ms, "parts": parts, "model_ms": model_ms,
                                         "session_options_ms": options}, indent=1))


if __name__ == "__main__":
    main()
