"""A dataset batch job on one machine: decoding in worker processes, batched inference in this one.

::

    decode worker 1 --\\                       (spawned processes, each runs the pipeline's ``file``
    decode worker 2 ----> bounded queue ---> main process: frames of all clips in flight, batched
    decode worker N --/   of frame chunks     (``batch_frames``) through the config's stages;
                                               a clip is written once its last frame is through.

Exactly once: a clip is skipped when its result file validates, results are written atomically (temp
file + ``os.replace``), a killed run's temp files are removed on the next start, and failed clips are
recorded in ``failures.json`` (retried with ``retry_failed``). :func:`run_batch` is the entry point
for both the local path and the Ray path (``engine.batch.ray_job``), which share the planning and the
bookkeeping here.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from engine.assets import REPO_ROOT
from engine.batch.dataset import ClipList, ClipTask
from engine.batch.decode import clip_meta, iter_clip
from engine.batch.inference import StageRunner, config_hash, model_hash, model_identities, stages_description
from engine.batch.output import ClipStatus, OutputDir, now_iso, totals_of, validate_clip
from engine.config import PipelineConfig, load_config
from engine.frame import Frame

log = logging.getLogger(__name__)

CHUNK_FRAMES = 16  # frames per message from a decode worker: amortises pickling, bounds memory


@dataclass
class BatchOptions:
    workers: int = 2  # decode processes (local path)
    batch_frames: int = 32  # frames per inference batch, across clips
    retry_failed: bool = False
    ray: str | None = None  # None: local path; "local", "auto" or a cluster address: Ray path
    ray_actors: int | None = None  # inference actors (default: one per GPU, else 1)
    ray_clips_per_batch: int = 4  # clips per actor call (their frames are batched together)
    progress: bool = True


@dataclass
class Plan:
    todo: list[ClipTask]
    statuses: list[ClipStatus] = field(default_factory=list)  # clips not to run: done, failed before, missing


# ---------------------------------------------------------------------------------- bookkeeping


def code_version() -> str:
    """git commit (+ '-dirty') of the checkout, else the installed package version."""
    try:
        rev = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"facelift-engine {engine_version()}"


def engine_version() -> str:
    try:
        return version("facelift-engine")
    except PackageNotFoundError:
        return "unknown"


def plan_job(clips: ClipList, out: OutputDir, cfg_hash: str, retry_failed: bool,
             failures: dict[str, dict[str, Any]], models: list[dict[str, Any]] | None = None) -> Plan:
    """Split the clips into to-do and not-to-do (done = result file validates for this config and
    these models: the resume key is the stages' options plus the weights they load)."""
    plan = Plan(todo=[], statuses=[ClipStatus(cid, "missing", error="listed in the index, no file") for cid in clips.missing]
                + [ClipStatus(cid, "missing", error="rejected: the clip id is not a plain file name") for cid in clips.rejected])
    models = models or []
    m_hash = model_hash(models)
    stale = other_config = 0
    other_models: dict[str, int] = {}  # what the stale results were made with -> how many
    for task in clips.clips:
        path = out.clip_path(task.clip_id)
        info = None
        if path.exists():
            info = validate_clip(path)
            if info is None:
                stale += 1
            elif info.config_hash != cfg_hash:
                other_config += 1
                info = None
            elif info.model_hash != m_hash and not (info.model_hash is None and not models):
                # (a result from before models were recorded is kept only when the job loads no model)
                was = _models_text(info.models) if info.models is not None else "models not recorded (an older result)"
                other_models[was] = other_models.get(was, 0) + 1
                info = None
        if info is not None:
            plan.statuses.append(ClipStatus(task.clip_id, "done", info.frames, info.faces))
            failures.pop(task.clip_id, None)  # done after all (e.g. fixed and re-run)
        elif task.clip_id in failures and not retry_failed:
            plan.statuses.append(ClipStatus(task.clip_id, "skipped_failed", error=failures[task.clip_id].get("error", "")))
        else:
            plan.todo.append(task)
    if stale:
        log.warning("%d existing result file(s) are incomplete or of another format: redoing them", stale)
    if other_config:
        log.warning("%d existing result file(s) were made with other stage options: redoing them", other_config)
    for was, n in other_models.items():
        log.warning("%d existing result file(s) were made with another model (%s; now %s): redoing them",
                    n, was, _models_text(models))
    return plan


def _models_text(models: list[dict[str, Any]]) -> str:
    return ", ".join(f"{m.get('stage')} {m.get('name')} sha256 {str(m.get('sha256'))[:12]}" for m in models) or "no model"


def clip_meta_base(config: PipelineConfig, cfg_hash: str, models: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Metadata shared by every clip of a job (no times: outputs stay deterministic)."""
    models = model_identities(config) if models is None else models
    return {"stages": stages_description(config), "config_hash": cfg_hash, "models": models,
            "model_hash": model_hash(models), "engine_version": engine_version()}


class FailureLog:
    """failures.json kept current after every clip, so a killed run loses no record."""

    def __init__(self, out: OutputDir, failures: dict[str, dict[str, Any]]):
        self.out, self.failures = out, failures

    def record(self, task: ClipTask, status: ClipStatus) -> None:
        if status.status == "failed":
            attempts = int(self.failures.get(task.clip_id, {}).get("attempts", 0)) + 1
            self.failures[task.clip_id] = {"path": str(task.path), "error": status.error, "attempts": attempts,
                                           "time": now_iso()}
            log.warning("clip %s failed: %s", task.clip_id, status.error)
        elif self.failures.pop(task.clip_id, None) is None:
            return
        self.out.save_failures(self.failures)


# ---------------------------------------------------------------------------------- local path


def _put(q: Any, item: Any, parent_pid: int) -> None:
    """Blocking put that gives up when the main process is gone (killed): no orphaned workers."""
    while True:
        try:
            q.put(item, timeout=1.0)
            return
        except queue.Full:
            if os.getppid() != parent_pid:
                os._exit(0)


def _decode_worker(tasks: Any, results: Any, parent_pid: int) -> None:
    """Spawned process: decode clips from ``tasks`` and send their frames in chunks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the main process handles it
    logging.getLogger("plugins.sources.pyav_source").setLevel(logging.CRITICAL)  # errors go to the main process
    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent_pid:
                return
            continue
        if task is None:
            break
        clip_id, path = task
        chunk: list[Frame] = []
        error = None
        try:
            for frame in iter_clip(clip_id, path):
                chunk.append(frame)
                if len(chunk) >= CHUNK_FRAMES:
                    _put(results, ("frames", clip_id, chunk), parent_pid)
                    chunk = []
            if chunk:
                _put(results, ("frames", clip_id, chunk), parent_pid)
        except Exception as exc:  # one bad clip must not stop the worker
            error = f"{type(exc).__name__}: {exc}"
            if str(path) not in error:
                error = f"{path}: {error}"
        _put(results, ("end", clip_id, error), parent_pid)
    _put(results, ("exit", os.getpid(), None), parent_pid)


@dataclass
class _ClipState:
    task: ClipTask
    frames: list[Frame] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)
    pending: int = 0  # frames received but not yet through the stages
    ended: bool = False
    error: str | None = None
    started: float = field(default_factory=time.monotonic)


def run_local(todo: list[ClipTask], config: PipelineConfig, out: OutputDir, meta_base: dict[str, Any],
              options: BatchOptions, on_result: Callable[[ClipTask, ClipStatus], None]) -> None:
    """Decode ``todo`` in ``options.workers`` spawned processes; run the stages here, batched across clips."""
    if not todo:
        return
    runner = StageRunner(config)
    ctx = mp.get_context("spawn")  # fork would copy ONNX Runtime / torch thread pools into the children
    workers = max(1, min(options.workers, len(todo)))
    tasks, results = ctx.Queue(), ctx.Queue(maxsize=2 * workers + 2)
    for task in todo:
        tasks.put((task.clip_id, str(task.path)))
    for _ in range(workers):
        tasks.put(None)
    procs = [ctx.Process(target=_decode_worker, args=(tasks, results, os.getpid()), daemon=True, name=f"decode-{i}")
             for i in range(workers)]
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None  # children start ignoring Ctrl-C
    try:
        for p in procs:
            p.start()
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    by_id = {t.clip_id: t for t in todo}
    states: dict[str, _ClipState] = {}
    buffer: list[Frame] = []
    frames_done = finished = 0
    t0 = time.monotonic()
    bar = tqdm(total=len(todo), unit="clip", desc="batch", disable=not options.progress, dynamic_ncols=True)

    def finish(state: _ClipState) -> None:
        nonlocal frames_done, finished
        cid = state.task.clip_id
        states.pop(cid, None)
        status = ClipStatus(cid, "failed", len(state.frames), error=state.error or "")
        if state.error is None:
            try:
                info = out.write_clip(cid, state.frames, clip_meta(meta_base, state.task, state.frames, state.size))
                status = ClipStatus(cid, "ok", info.frames, info.faces)
                frames_done += info.frames
            except Exception as exc:  # e.g. disk full: recorded like any failure, the job goes on
                status.error = f"writing {out.clip_path(cid)}: {type(exc).__name__}: {exc}"
        status.seconds = time.monotonic() - state.started
        on_result(state.task, status)
        finished += 1
        bar.update(1)
        elapsed = max(time.monotonic() - t0, 1e-9)
        bar.set_postfix_str(f"{frames_done / elapsed:.1f} frames/s", refresh=False)

    def flush() -> None:
        nonlocal buffer
        if not buffer:
            return
        batch, buffer = buffer, []
        try:
            runner.process(batch)
        except Exception as exc:  # the clips in this batch fail (retry with --retry-failed); others go on
            log.exception("stages failed on a batch of %d frames", len(batch))
            for cid in {f.stream_id for f in batch}:
                if cid in states:
                    states[cid].error = states[cid].error or f"stage failed: {type(exc).__name__}: {exc}"
        touched: dict[str, int] = {}
        for frame in batch:
            frame.image = None  # type: ignore[assignment]  # results are in faces; free the pixels now
            touched[frame.stream_id] = touched.get(frame.stream_id, 0) + 1
        for cid, n in touched.items():
            state = states.get(cid)
            if state is not None:
                state.pending -= n
                if state.ended and state.pending == 0:
                    finish(state)

    exited = 0
    try:
        with logging_redirect_tqdm():
            while exited < workers:
                try:
                    kind, key, payload = results.get(timeout=0.02 if buffer else 1.0)
                except queue.Empty:
                    flush()  # nothing new: run what is buffered rather than wait for a full batch
                    if not any(p.is_alive() for p in procs):
                        break  # workers died without saying so (crash): handled below
                    continue
                if kind == "frames":
                    state = states.get(key) or states.setdefault(key, _ClipState(by_id[key]))
                    if not state.frames:
                        state.size = payload[0].size
                    state.frames.extend(payload)
                    state.pending += len(payload)
                    buffer.extend(payload)
                    if len(buffer) >= options.batch_frames:
                        flush()
                elif kind == "end":
                    state = states.get(key) or states.setdefault(key, _ClipState(by_id[key]))
                    state.ended, state.error = True, payload
                    if state.pending == 0:
                        finish(state)
                elif kind == "exit":
                    exited += 1
            flush()
            codes = [p.exitcode for p in procs if p.exitcode not in (0, None)]
            for state in list(states.values()):  # a worker crashed inside this clip (e.g. a decoder segfault)
                state.error = state.error or f"decode worker died (exit codes {codes}) inside this clip"
                state.pending = 0
                finish(state)
            if finished < len(todo):  # never started: not the clips' fault, so not recorded as failed
                raise RuntimeError(f"decode workers exited unexpectedly (exit codes {codes}); "
                                   f"{len(todo) - finished} clip(s) not processed; run again to resume")
    finally:
        bar.close()
        for p in procs:
            p.join(timeout=2.0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
        runner.close()


# ------------------------------------------------------------------------------------- the job


def run_batch(config_path: str | Path, clips: ClipList, out_dir: str | Path, options: BatchOptions) -> dict[str, Any]:
    """Run (or resume) a batch job; returns the totals (see :func:`engine.batch.output.totals_of`)
    plus ``summary_markdown``. Raises :class:`engine.config.ConfigError` on a bad config."""
    config = load_config(config_path)
    cfg_hash = config_hash(config)
    models = model_identities(config)
    out = OutputDir(out_dir)
    out.clean_temp_files()
    failures = out.load_failures()
    plan = plan_job(clips, out, cfg_hash, options.retry_failed, failures, models)
    out.save_failures(failures)
    manifest = out.load_manifest()
    run = {
        "start": now_iso(), "end": None, "status": "running", "code_version": code_version(),
        "engine_version": engine_version(), "config_path": str(config_path), "config_hash": cfg_hash,
        "stages": stages_description(config), "models": models, "input": clips.source, "options": asdict(options),
        "host": os.uname().nodename, "todo": len(plan.todo),
    }
    manifest["runs"].append(run)
    manifest["config_hash"] = cfg_hash
    out.save_manifest(manifest)
    log.info("batch: %d clip(s) to process, %d already done, %d failed before%s, %d missing",
             len(plan.todo), sum(s.status == "done" for s in plan.statuses),
             sum(s.status == "skipped_failed" for s in plan.statuses),
             "" if options.retry_failed else " (skipped; --retry-failed retries them)",
             len(clips.missing) + len(clips.rejected))
    statuses = list(plan.statuses)
    failure_log = FailureLog(out, failures)

    def on_result(task: ClipTask, status: ClipStatus) -> None:
        statuses.append(status)
        failure_log.record(task, status)

    meta_base = clip_meta_base(config, cfg_hash, models)
    t0 = time.monotonic()
    try:
        if options.ray:
            from engine.batch.ray_job import run_ray

            run_ray(plan.todo, config, out, meta_base, options, on_result)
        else:
            run_local(plan.todo, config, out, meta_base, options, on_result)
    except KeyboardInterrupt:  # finished clips are complete files; the next run resumes
        run.update(end=now_iso(), status="interrupted", totals=totals_of(statuses, time.monotonic() - t0))
        out.save_manifest(manifest)
        raise
    wall = time.monotonic() - t0
    totals = totals_of(statuses, wall)
    markdown = out.write_summary(statuses, totals)
    run.update(end=now_iso(), status="finished", totals=totals)
    out.save_manifest(manifest)
    return {**totals, "summary_markdown": markdown}
