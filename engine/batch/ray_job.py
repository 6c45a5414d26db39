"""The batch job on a Ray cluster: clips decoded by Ray tasks, stages run in inference actors.

::

    driver: plan (skip done clips) -> ray.util.ActorPool.map_unordered over chunks of clips
      chunk of k clips -> k ``decode_clip`` tasks (num_cpus=1, anywhere in the cluster)
                       -> ``InferenceActor.process`` (num_gpus=1 per GPU, else a CPU actor):
                          frames of the k clips batched through the stages, results written with the
                          same atomic writer as the local path into the shared output folder
      driver: failures.json, manifest, summary (same bookkeeping as the local path)

Scheduling is Ray's: the pool lists every actor twice, so while an actor runs one chunk the decode
tasks of its next chunk are already running (two chunks in flight per actor bound memory). The
output folder must be one path that every node sees (NFS, a shared mount).
"""

from __future__ import annotations

import logging
import os
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.batch.dataset import ClipTask
from engine.batch.output import ClipStatus, OutputDir
from engine.config import PipelineConfig, parse_config
from engine.frame import Frame

log = logging.getLogger(__name__)


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("--ray needs Ray: pip install 'facelift-engine[ray]'") from exc
    return ray


def connect(address: str, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` ("auto", "ray://host:10001", "host:6379") or start a local cluster for
    "local". Returns True when this call started Ray (so the caller shuts it down)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return True


def decode_clip(clip_id: str, path: str) -> tuple[str | None, np.ndarray, np.ndarray, np.ndarray]:
    """Ray task body: (error or None, images (T,H,W,3) uint8, frame indices (T,), pts (T,) float64 NaN=unknown)."""
    from engine.batch.decode import iter_clip

    logging.getLogger("plugins.sources.pyav_source").setLevel(logging.CRITICAL)  # the error is returned
    frames: list[Frame] = []
    try:
        frames.extend(iter_clip(clip_id, path))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        return (error if path in error else f"{path}: {error}"), np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0, np.int64), np.zeros(0)
    images = np.stack([f.image for f in frames])
    pts = np.asarray([np.nan if f.pts is None else f.pts for f in frames], np.float64)
    return None, images, np.asarray([f.index for f in frames], np.int64), pts


class InferenceActor:
    """Builds the config's stages once; ``process`` runs a chunk of decoded clips and writes them."""

    def __init__(self, config_text: str, config_dir: str, out_root: str, meta_base: dict[str, Any], batch_frames: int):
        from engine.batch.inference import StageRunner

        config = parse_config(tomllib.loads(config_text), source="batch config", base_dir=config_dir)
        self.runner = StageRunner(config)
        self.out = OutputDir(out_root)
        self.meta_base = meta_base
        self.batch_frames = batch_frames

    def process(self, tasks: list[tuple[str, str, dict]], *decoded: tuple) -> list[dict[str, Any]]:
        from engine.batch.dataset import ClipTask
        from engine.batch.decode import clip_meta

        t0 = time.monotonic()
        clips: list[tuple[ClipTask, list[Frame], str | None]] = []
        for (clip_id, path, attributes), (error, images, index, pts) in zip(tasks, decoded):
            frames = [Frame(clip_id, int(i), None if np.isnan(p) else float(p), 0.0, img)
                      for img, i, p in zip(images, index, pts)]
            clips.append((ClipTask(clip_id, Path(path), attributes), frames, error))
        ok_frames = [f for _, frames, error in clips if error is None for f in frames]
        failed_ids: dict[str, str] = {}
        for start in range(0, len(ok_frames), self.batch_frames):  # batches span clips
            batch = ok_frames[start: start + self.batch_frames]
            try:
                self.runner.process(batch)
            except Exception as exc:
                for f in batch:
                    failed_ids.setdefault(f.stream_id, f"stage failed: {type(exc).__name__}: {exc}")
        results = []
        for task, frames, error in clips:
            error = error or failed_ids.get(task.clip_id)
            status = {"clip_id": task.clip_id, "status": "failed", "frames": len(frames), "faces": 0, "error": error or ""}
            if error is None:
                try:
                    size = (frames[0].image.shape[1], frames[0].image.shape[0])
                    info = self.out.write_clip(task.clip_id, frames, clip_meta(self.meta_base, task, frames, size))
                    status.update(status="ok", frames=info.frames, faces=info.faces)
                except Exception as exc:
                    status["error"] = f"writing {self.out.clip_path(task.clip_id)}: {type(exc).__name__}: {exc}"
            status["seconds"] = (time.monotonic() - t0) / len(clips)
            results.append(status)
        return results

    def close(self) -> None:
        self.runner.close()


def run_ray(todo: list[ClipTask], config: PipelineConfig, out: OutputDir, meta_base: dict[str, Any],
            options: Any, on_result: Callable[[ClipTask, ClipStatus], None]) -> None:
    """Process ``todo`` on the Ray cluster at ``options.ray``; same outputs as the local path."""
    if not todo:
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    ray = _ray()
    from ray.util import ActorPool

    if config.path is None:
        raise ValueError("the Ray path needs the config file (its text is sent to the actors)")
    config_text = Path(config.path).read_text(encoding="utf-8")
    started = connect(options.ray)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n_actors = options.ray_actors or max(1, gpus)
        actor_cls = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)(InferenceActor)
        decode = ray.remote(num_cpus=1)(decode_clip)
        config_dir = str(Path(config.path).resolve().parent)  # relative paths in it resolve from there
        actors = [actor_cls.remote(config_text, config_dir, str(out.root.resolve()), meta_base, options.batch_frames)
                  for _ in range(n_actors)]
        log.info("ray: %d inference actor(s) (%s), cluster %s", n_actors, "GPU" if gpus else "CPU",
                 ray.cluster_resources())
        pool = ActorPool(actors * 2)  # each actor twice: its next chunk decodes while it runs one
        k = max(1, options.ray_clips_per_batch)
        chunks = [todo[i: i + k] for i in range(0, len(todo), k)]
        by_id = {t.clip_id: t for t in todo}

        def submit(actor: Any, chunk: list[ClipTask]) -> Any:
            refs = [decode.remote(t.clip_id, str(t.path)) for t in chunk]
            return actor.process.remote([(t.clip_id, str(t.path), t.attributes) for t in chunk], *refs)

        frames_done, t0 = 0, time.monotonic()
        with logging_redirect_tqdm(), tqdm(total=len(todo), unit="clip", desc="batch (ray)",
                                           disable=not options.progress, dynamic_ncols=True) as bar:
            for results in pool.map_unordered(submit, chunks):
                for r in results:
                    status = ClipStatus(r["clip_id"], r["status"], r["frames"], r["faces"], r["seconds"], r["error"])
                    frames_done += status.frames if status.status == "ok" else 0
                    on_result(by_id[r["clip_id"]], status)
                    bar.update(1)
                bar.set_postfix_str(f"{frames_done / max(time.monotonic() - t0, 1e-9):.1f} frames/s", refresh=False)
        ray.get([a.close.remote() for a in actors])
    finally:
        if started:
            ray.shutdown()
