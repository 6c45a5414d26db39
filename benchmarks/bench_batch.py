"""Batch-job throughput on this machine: decode only, the local path, the Ray path (local cluster),
and the projected time for all of CelebV-HQ (35,666 clips, ~6.5 M frames).

    .venv/bin/python benchmarks/bench_batch.py                       # shared talking-face videos
    .venv/bin/python benchmarks/bench_batch.py --clips 4 --input-size 320 --json out.json

The clips are ``/work/shared/assets/videos`` (real 480-640 px talking faces, close to CelebV-HQ's
>= 512 px clips), the stages those of ``--config`` with the detector's input size overridden.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import tomllib
from pathlib import Path

CELEBVHQ_CLIPS = 35_666
CELEBVHQ_FRAMES = 6_500_000


def decode_only(clips) -> dict:
    from engine.batch.decode import iter_clip

    t0 = time.perf_counter()
    frames = sum(1 for c in clips for _ in iter_clip(c.clip_id, c.path))
    wall = time.perf_counter() - t0
    return {"path": "decode only (1 process)", "clips": len(clips), "frames": frames, "wall_s": wall,
            "clips_per_s": len(clips) / wall, "fps": frames / wall}


def write_config(src: Path, dst: Path, input_size: int | None) -> None:
    """The config's [[stages]] with the detector input size overridden (toml written by hand: no writer dep)."""
    data = tomllib.loads(src.read_text())
    lines = ['[[sources]]\ntype = "file"\nid = "unused"\npath = "unused.mp4"\n']
    for stage in data.get("stages", []):
        stage = dict(stage)
        if input_size and stage["type"] == "centerface":
            stage["input_size"] = input_size
        lines.append("[[stages]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in stage.items()))
    dst.write_text("\n".join(lines))


def main() -> int:
    from engine.assets import REPO_ROOT, shared_asset
    from engine.batch import BatchOptions, ClipList, list_files, run_batch
    from engine.batch.ray_job import connect

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=str(shared_asset("videos")), help="folder or glob of clips")
    parser.add_argument("--clips", type=int, default=6, help="use the first N clips (sorted by size, smallest first)")
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "pipeline.toml")
    parser.add_argument("--input-size", type=int, default=320, help="detector input size (pipeline.toml: 640)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    listed = list_files(args.input)
    chosen = sorted(listed.clips, key=lambda c: c.path.stat().st_size)[: args.clips]
    clips = ClipList(sorted(chosen, key=lambda c: c.clip_id), source={"kind": "bench", "input": args.input})
    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    config = work / "bench.toml"
    write_config(args.config, config, args.input_size)
    stage_types = [s["type"] for s in tomllib.loads(config.read_text())["stages"]]
    rows = [decode_only(clips.clips)]
    try:
        opts = BatchOptions(workers=args.workers, progress=False)
        totals = run_batch(config, clips, work / "local", opts)
        rows.append({"path": f"local ({args.workers} decode proc.)", **totals})
        if not args.skip_ray:
            t0 = time.perf_counter()
            connect("local")  # started here so the job's wall time excludes Ray's start-up
            startup = time.perf_counter() - t0
            opts = BatchOptions(ray="local", progress=False)
            totals = run_batch(config, clips, work / "ray", opts)
            rows.append({"path": f"ray (local cluster, start-up {startup:.1f} s excluded)", **totals})
            import ray

            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"clips: {len(clips.clips)} from {args.input}; detector input {args.input_size}; "
          f"{os.cpu_count()} CPU(s); stages: {stage_types}; load average {os.getloadavg()[0]:.1f}")
    print("| path | clips | frames | wall s | clips/s | frames/s | CelebV-HQ projected (6.5 M frames) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        hours = CELEBVHQ_FRAMES / r["fps"] / 3600 if r["fps"] else float("inf")
        clips_n = r.get("ok", r.get("clips"))
        print(f"| {r['path']} | {clips_n} | {r['frames']} | {r['wall_s']:.2f} | {r['clips_per_s']:.2f} | "
              f"{r['fps']:.1f} | {hours:.1f} h ({hours / 24:.1f} days) |")
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "summary_markdown"} for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
