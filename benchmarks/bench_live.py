"""Live sources: per-frame latency at 30 fps input, and how many 30 fps streams this machine holds.

    nice -n 19 python benchmarks/bench_live.py [--clip PATH] [--streams 1 2 3 4 6 8] [--frames 300]
        [--detect-every N] [--max-wait-ms MS] [--bundle DIR] [--json out.json]

N copies of a 30 fps clip (default: the shared liveportrait_d10.mp4, 512x512, 30 fps) are read with
``realtime = true``: each source paces its frames by their timestamps like a camera, and the runtime
drops a live stream's oldest queued frame when the pipeline falls behind (counted). The stages are
pipeline.toml's. Per N: the decode -> sinks latency p50/p95 of every frame that made it, the frames
dropped, and whether the machine held the streams (no frame dropped). "Holds N streams" = the largest N
with no drop. A file source with ``loop`` would do for longer runs; ``--frames`` frames per stream.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from engine.assets import shared_asset
from engine_runs import run_engine, stages_with


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", type=Path, default=None, help="a 30 fps clip (default: shared liveportrait_d10.mp4)")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    p.add_argument("--frames", type=int, default=300, help="frames per stream (300 = 10 s at 30 fps)")
    p.add_argument("--detect-every", type=int, default=None, help="override pipeline.toml's detect_every")
    p.add_argument("--max-wait-ms", type=float, default=None, help="override every stage's max_wait_ms")
    p.add_argument("--bundle", default=None, help="landmark bundle (default: pipeline.toml's)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    clip = args.clip or shared_asset("videos", "liveportrait_d10.mp4")
    rows = []
    for n in sorted(args.streams):
        summary, _ = run_engine(clip, stages_with(detect_every=args.detect_every, max_wait_ms=args.max_wait_ms, bundle=args.bundle), streams=n,
                                max_frames=args.frames, realtime=True)
        drops = sum(s["drops"] for s in summary["streams"].values())
        offered = n * args.frames
        lat = summary["latency_ms"] or {"p50": None, "p95": None}
        row = {"streams": n, "offered_frames": offered, "processed": summary["frames"], "dropped": drops,
               "drop_pct": round(100 * drops / offered, 2), "latency_p50_ms": lat["p50"], "latency_p95_ms": lat["p95"],
               "landmarks_latency_ms": summary["stages"]["landmarks"]["latency_ms"], "fps": summary["fps"]}
        rows.append(row)
        print(f"{n} x 30 fps: latency p50 {row['latency_p50_ms']} ms, p95 {row['latency_p95_ms']} ms; "
              f"{drops} of {offered} frames dropped ({row['drop_pct']} %); {summary['fps']:.1f} fps processed",
              flush=True)
    held = 0
    for row in rows:  # the largest N below which no run dropped a frame
        if row["dropped"]:
            break
        held = row["streams"]
    print(f"holds {held} stream(s) of 30 fps without dropping a frame ({clip.name})")
    if args.json:
        args.json.write_text(json.dumps({"clip": str(clip), "frames_per_stream": args.frames, "rows": rows,
                                         "streams_held": held}, indent=1))


if __name__ == "__main__":
    main()
