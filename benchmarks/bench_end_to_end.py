"""End-to-end pipeline fps (decode + CenterFace + landmarks) next to decode-only fps, in the same run.

    python benchmarks/bench_end_to_end.py [--clip PATH] [--bundle DIR] [--streams N] [--max-frames N]
        [--backend auto] [--device cpu|cuda] [--precision fp32] [--detect-every 1] [--input-size 640]
        [--max-batch 32] [--frame-batch 8] [--crop-from auto]

Both runs use the real runtime (engine.runtime.Pipeline, one file source per stream, a discarding
``file_sink`` into a temp folder): first decode only (no stages), then the full pipeline. Reports
frames/s of each and the per-frame latency (decode -> landmarks done, decode -> sinks) p50/p95 from
the run summary. ``--streams N`` runs N concurrent copies of the clip (the GPU run: 16 x 1080p).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from engine.assets import default_bundle, shared_asset
from engine.config import parse_config
from engine.plugin import discover
from engine.runtime import Pipeline


def run(doc: dict) -> dict:
    return Pipeline(parse_config(doc, discover())).run(handle_signals=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", type=Path, default=None, help="default: shared liveportrait_d10.mp4 (512x512)")
    p.add_argument("--bundle", default=str(default_bundle()))
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--max-frames", type=int, default=150)
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--detect-every", type=int, default=1)
    p.add_argument("--input-size", type=int, default=640)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--frame-batch", type=int, default=8)
    p.add_argument("--crop-from", default="auto")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for detector and landmarks")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    clip = args.clip or shared_asset("videos", "liveportrait_d10.mp4")
    with tempfile.TemporaryDirectory() as out:
        sources = [{"type": "file", "id": f"s{i}", "path": str(clip), "max_frames": args.max_frames}
                   for i in range(args.streams)]
        base = {"pipeline": {"queue_size": 64, "log_interval_s": 60.0}, "sources": sources,
                "sinks": [{"type": "file_sink", "directory": out}]}
        decode = run({**base, "stages": []})
        stages = [
            {"type": "centerface", "input_size": args.input_size, "detect_every": args.detect_every,
             "batch_size": args.frame_batch, "intra_op_threads": args.threads},
            {"type": "landmarks", "bundle": args.bundle, "backend": args.backend, "device": args.device,
             "precision": args.precision, "max_batch": args.max_batch, "frame_batch": args.frame_batch,
             "crop_from": args.crop_from, "intra_op_threads": args.threads},
        ]
        full = run({**base, "stages": stages})
    faces = sum(s["faces"] for s in full["streams"].values())
    result = {
        "clip": str(clip), "streams": args.streams, "frames": full["frames"], "faces": faces,
        "decode_only_fps": decode["fps"], "end_to_end_fps": full["fps"],
        "landmarks_latency_ms": full["stages"]["landmarks"]["latency_ms"],
        "end_to_end_latency_ms": full["latency_ms"],
        "stage_mean_batch_ms": {k: v["mean_batch_ms"] for k, v in full["stages"].items()},
        "errors": sum(s["errors"] for s in full["streams"].values()),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
