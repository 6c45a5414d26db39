"""Write the pseudo-label training dataset: ``python -m training.pseudolabel --out DIR ...``.

MV samples (method.md section 4): per identity, render the 41-view rig, run the teacher on every view
(box from the detector on the render, else the render's landmark box), lift with masks, reject bad
identities (counted, with a reason), then draw M renders from the augmented camera space labelled with
the lifted points posed by that camera. MF samples: every k-th frame of real clips (held-out clips
excluded). Work is cut into shards, each a deterministic range (identities, or frames of one clip), so a
re-run skips finished shards and redoes partial ones; ``--workers`` processes each own one renderer.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from training.dataset import FORMAT_VERSION, KIND_MF, KIND_MV, ShardWriter, clean_partial, finished_shard
from training.lifting import LiftingConfig
from training.mf import DEFAULT_EXCLUDE, ClipError, count_frames, list_clips

log = logging.getLogger(__name__)

IDENTITY_SEED_STRIDE = 1_000_000  # identity seeds of --seed s are s * STRIDE + i


class PseudoLabelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path
    identities: int = Field(100, ge=0)
    renders_per_identity: int = Field(8, ge=1)
    mf_clips: Path | None = None
    mf_every: int = Field(5, ge=1)
    mf_exclude: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    image_size: int = Field(256, ge=32)
    rig_size: int = Field(256, ge=64, description="render size of the 41 lifting views")
    shard_size: int = Field(256, ge=1, le=9999)
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    seed: int = Field(0, ge=0)
    generator: str = "ict_head"
    detector: bool = Field(True, description="CenterFace boxes on renders (else landmark boxes)")
    detector_size: int = Field(320, ge=32, description="CenterFace input size (long side, multiple of 32)")
    teacher_mirror: bool = Field(True, description="average the teacher over the image and its mirror")
    rig_detector_size: int | None = Field(None, ge=32, description="CenterFace input size on rig views "
                                          "(None: the rig size rounded up to a multiple of 32)")
    lifting: LiftingConfig = Field(default_factory=LiftingConfig)
    lifted: Path | None = Field(None, description="labels from `python -m training.lift` (skip the rig)")

    def identity_seed(self, index: int) -> int:
        return self.seed * IDENTITY_SEED_STRIDE + index

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a re-run to resume (workers and paths may change)."""
        d = self.model_dump(mode="json", exclude={"out", "workers", "mf_clips", "lifted"})
        d["mf_clips"] = None if self.mf_clips is None else str(Path(self.mf_clips).resolve())
        return d


# -- plan: deterministic shard ranges ------------------------------------------------------------


def plan(cfg: PseudoLabelConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """-> (shard tasks, skipped clips with reasons, clip paths). MV shards first, then MF shards."""
    tasks: list[dict[str, Any]] = []
    per_shard = max(1, cfg.shard_size // cfg.renders_per_identity)
    for start in range(0, cfg.identities, per_shard):
        tasks.append({"kind": KIND_MV, "identities": [start, min(start + per_shard, cfg.identities)]})
    skipped: list[dict[str, Any]] = []
    clips: list[str] = []
    if cfg.mf_clips is not None:
        for clip_index, path in enumerate(list_clips(cfg.mf_clips, cfg.mf_exclude)):
            clips.append(str(path))
            try:
                n = count_frames(path)
            except ClipError as err:
                log.warning("skipping clip: %s", err)
                skipped.append({"clip": str(path), "reason": str(err)})
                continue
            span = cfg.shard_size * cfg.mf_every
            for start in range(0, n, span):
                tasks.append({"kind": KIND_MF, "clip_index": clip_index, "clip": str(path), "frames": [start, min(start + span, n)]})
    for i, task in enumerate(tasks):
        task["index"] = i
    return tasks, skipped, clips


# -- workers: one renderer/teacher/detector per process ---------------------------------------------

_STATE: dict[str, Any] = {}


def _init_worker(cfg_json: str, threads: int | None) -> None:
    import torch

    _STATE.clear()
    if threads:  # one process per core: no oversubscription between torch, ONNX Runtime and workers
        torch.set_num_threads(threads)
        _STATE["threads"] = threads
    _STATE["cfg"] = PseudoLabelConfig.model_validate_json(cfg_json)


def _teacher():
    if "teacher" not in _STATE:
        from training.teacher import Teacher

        _STATE["teacher"] = Teacher(runtime="onnxruntime", threads=_STATE.get("threads"))
    return _STATE["teacher"]


def _detector():
    if "detector" not in _STATE:
        from plugins.detectors.centerface import CenterFace

        cfg = _STATE["cfg"]
        _STATE["detector"] = CenterFace(input_size=cfg.detector_size, intra_op_threads=_STATE.get("threads"))
    return _STATE["detector"]


def _lifted() -> dict | None:
    cfg = _STATE["cfg"]
    if cfg.lifted is None:
        return None
    if "lifted" not in _STATE:
        from training.lift import load_lifted

        _STATE["lifted"] = load_lifted(cfg.lifted)
    return _STATE["lifted"]


def _rig_detector():
    """CenterFace at the rig's render size: upscaling a 128 px view to 320 costs 6x and finds nothing more."""
    if "rig_detector" not in _STATE:
        from plugins.detectors.centerface import CenterFace

        cfg = _STATE["cfg"]
        size = cfg.rig_detector_size or -(-cfg.rig_size // 32) * 32
        _STATE["rig_detector"] = CenterFace(input_size=size, intra_op_threads=_STATE.get("threads"))
    return _STATE["rig_detector"]


def _generator():
    if "generator" not in _STATE:
        from training.generators import create

        _STATE["generator"] = create(_STATE["cfg"].generator)
    return _STATE["generator"]


def _run_task(task: dict[str, Any]) -> dict[str, Any]:
    cfg: PseudoLabelConfig = _STATE["cfg"]
    shards = Path(cfg.out) / "shards"
    clean_partial(shards, task["index"])
    writer = ShardWriter(shards, task["index"])
    try:
        if task["kind"] == KIND_MV:
            stats = _write_mv(cfg, task, writer)
        else:
            stats = _write_mf(cfg, task, writer)
        return writer.commit(dict(task, **stats))
    except BaseException:
        writer.abort()
        raise


def _write_mv(cfg: PseudoLabelConfig, task: dict[str, Any], writer: ShardWriter) -> dict[str, Any]:
    from training.mv import MVLabeler

    labeler = MVLabeler(_generator(), _teacher(), _detector() if cfg.detector else None,
                        rig_size=cfg.rig_size, image_size=cfg.image_size, lifting=cfg.lifting,
                        mirror=cfg.teacher_mirror, rig_detector=_rig_detector() if cfg.detector else None)
    rejected: list[list] = []
    lifted = _lifted()
    for index in range(*task["identities"]):
        seed = cfg.identity_seed(index)
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, seed]))
        if lifted is not None:
            if seed not in lifted:
                rejected.append([seed, "not in --lifted file"])
                continue
            result = labeler.from_points(seed, lifted[seed])
        else:
            result = labeler.lift_identity(seed)
        if not result.ok:
            rejected.append([seed, result.reason])
            continue
        for image, arrays in labeler.training_renders(result, cfg.renders_per_identity, rng):
            writer.write(image, arrays)
    return {"rejected_identities": rejected, "detector_misses": labeler.detector_misses}


def _write_mf(cfg: PseudoLabelConfig, task: dict[str, Any], writer: ShardWriter) -> dict[str, Any]:
    from training.mf import MFLabeler, iter_frames

    labeler = MFLabeler(_detector(), _teacher(), image_size=cfg.image_size, mirror=cfg.teacher_mirror)
    no_face, error = 0, None
    try:
        for frame_index, frame in iter_frames(Path(task["clip"]), cfg.mf_every, *task["frames"]):
            sample = labeler.label(frame, frame_index)
            if sample is None:
                no_face += 1
                continue
            writer.write(sample.image, labeler.sample_arrays(sample, task["clip_index"]))
    except ClipError as err:  # keep what decoded: a corrupt tail fails at the same frame on every run
        log.warning("%s", err)
        error = str(err)
    return {"frames_without_face": no_face, "decode_error": error}


# -- driver --------------------------------------------------------------------------------------


def _manifest(cfg: PseudoLabelConfig, tasks, skipped, clips, done: dict[int, dict], complete: bool) -> dict[str, Any]:
    shards = [done[t["index"]] for t in tasks if t["index"] in done]
    rejected = [r for s in shards for r in s.get("rejected_identities", [])]
    mv = [s for s in shards if s["kind"] == KIND_MV]
    mf = [s for s in shards if s["kind"] == KIND_MF]
    from training.cameras import AugmentedCameraSpace, rig_views

    return {
        "format_version": FORMAT_VERSION,
        "complete": complete,
        "generator": cfg.generator,
        "teacher": "3ddfa_v2_mb05_120x120",
        "detector": "centerface" if cfg.detector else None,
        "config": cfg.fingerprint(),
        "seeds": {"seed": cfg.seed, "identity_seeds": [cfg.identity_seed(0), cfg.identity_seed(max(cfg.identities - 1, 0))],
                  "render_rng": "default_rng(SeedSequence([seed, identity_seed]))"},
        "cameras": {"rig_views": rig_views(), "rig_size": cfg.rig_size, "augmented": AugmentedCameraSpace().model_dump()},
        "mf_clips": clips,
        "counts": {
            "samples": sum(s["samples"] for s in shards),
            "mv_samples": sum(s["samples"] for s in mv),
            "mf_samples": sum(s["samples"] for s in mf),
            "identities_planned": cfg.identities,
            "identities_done": sum(s["identities"][1] - s["identities"][0] for s in mv),
            "identities_rejected": len(rejected),
            "rejected_by_reason": dict(Counter(r[1] for r in rejected)),
            "clips": len(clips),
            "clips_skipped": len(skipped),
            "mv_detector_misses": sum(s.get("detector_misses", 0) for s in mv),
            "mf_frames_without_face": sum(s.get("frames_without_face", 0) for s in mf),
            "mf_decode_errors": sum(1 for s in mf if s.get("decode_error")),
            "shards_planned": len(tasks),
            "shards_done": len(shards),
        },
        "rejected_identities": rejected,
        "skipped_clips": skipped,
        "shards": shards,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def run(cfg: PseudoLabelConfig, progress: bool = True) -> dict[str, Any]:
    """Write (or resume) the dataset at ``cfg.out``; returns the final manifest."""
    out = Path(cfg.out)
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("config") != cfg.fingerprint() or old.get("format_version") != FORMAT_VERSION:
            raise SystemExit(f"{manifest_path}: this folder holds a dataset written with other settings; "
                             "use another --out or delete the folder")
    (out / "shards").mkdir(parents=True, exist_ok=True)
    tasks, skipped, clips = plan(cfg)
    done = {t["index"]: s for t in tasks if (s := finished_shard(out / "shards", t["index"])) is not None}
    todo = [t for t in tasks if t["index"] not in done]
    _write_json(manifest_path, _manifest(cfg, tasks, skipped, clips, done, complete=False))
    log.info("%d shards planned, %d already finished, %d to write", len(tasks), len(done), len(todo))

    t0 = time.perf_counter()
    bar = tqdm(total=len(tasks), initial=len(done), unit="shard", disable=not progress, desc="pseudolabel")
    workers = min(cfg.workers, max(len(todo), 1))
    if workers <= 1:
        _init_worker(cfg.model_dump_json(), None)
        results = map(_run_task, todo)
    else:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(cfg.model_dump_json(), 1))
        results = pool.imap_unordered(_run_task, todo)
    try:
        for stats in results:
            done[stats["index"]] = stats
            bar.update(1)
            bar.set_postfix(samples=sum(s["samples"] for s in done.values()))
            _write_json(manifest_path, _manifest(cfg, tasks, skipped, clips, done, complete=False))
    finally:
        bar.close()
        if workers > 1:
            pool.terminate()
    manifest = _manifest(cfg, tasks, skipped, clips, done, complete=True)
    manifest["elapsed_s_last_run"] = round(time.perf_counter() - t0, 2)
    _write_json(manifest_path, manifest)
    return manifest


def parse_args(argv: list[str] | None = None) -> PseudoLabelConfig:
    p = argparse.ArgumentParser(prog="python -m training.pseudolabel", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="dataset folder (created; re-run to resume)")
    p.add_argument("--identities", type=int, default=100, help="MV identities (generator seeds)")
    p.add_argument("--renders-per-identity", type=int, default=8, help="training renders M per identity")
    p.add_argument("--mf-clips", type=Path, default=None, help="folder of real video clips for MF samples")
    p.add_argument("--mf-every", type=int, default=5, help="take every k-th frame")
    p.add_argument("--exclude", nargs="*", default=list(DEFAULT_EXCLUDE), help="clip file names held out")
    p.add_argument("--image-size", type=int, default=256, help="stored image size (square)")
    p.add_argument("--rig-size", type=int, default=256, help="render size of the 41 lifting views")
    p.add_argument("--shard-size", type=int, default=256, help="samples per shard (MV: rounded to identities)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generator", default="ict_head")
    p.add_argument("--no-detector", action="store_true", help="landmark boxes instead of CenterFace on renders")
    p.add_argument("--no-mirror", action="store_true", help="one teacher pass per image (no mirror averaging)")
    p.add_argument("--lifted", type=Path, help="3D labels from `python -m training.lift` (the rig is not rendered)")
    a = p.parse_args(argv)
    return PseudoLabelConfig(
        out=a.out, identities=a.identities, renders_per_identity=a.renders_per_identity, mf_clips=a.mf_clips,
        mf_every=a.mf_every, mf_exclude=a.exclude, image_size=a.image_size, rig_size=a.rig_size,
        shard_size=a.shard_size, workers=a.workers, seed=a.seed, generator=a.generator, detector=not a.no_detector,
        teacher_mirror=not a.no_mirror, lifted=a.lifted,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    m = run(cfg)
    c = m["counts"]
    print(f"{cfg.out}: {c['samples']} samples ({c['mv_samples']} MV, {c['mf_samples']} MF) in {c['shards_done']} shards; "
          f"{c['identities_rejected']} identities rejected {c['rejected_by_reason']}; {c['clips_skipped']} clips skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
