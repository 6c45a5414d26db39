"""How often to detect and at what size: the default pipeline's trade-off, measured in one run.

    nice -n 19 python benchmarks/bench_tracking.py [--clip PATH] [--every 1 5 10 30 60] [--sizes 320 640]
        [--max-frames N] [--bundle DIR] [--json out.json]

For each detector input size and ``detect_every`` N, the pipeline.toml stages (landmarks tracking from
landmarks between detections, redetection when the track confidence drops) run on the clip through the
real runtime. Reported per configuration: end-to-end fps (decode included), frames with a face, and the
mean/p95 distance of the landmarks (px) from the reference run: CenterFace 640 on every frame. A larger
N costs fewer detector runs; what it gives up is how soon a face that enters the picture is found (up to
N - 1 frames later: N / 30 s at 30 fps) and how soon a drifting track is corrected.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from engine.assets import shared_asset
from engine_runs import run_engine, stages_with


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", type=Path, default=None, help="default: shared liveportrait_d10.mp4 (512x512)")
    p.add_argument("--every", type=int, nargs="+", default=[1, 5, 10, 30, 60])
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--bundle", default=None, help="landmark bundle (default: pipeline.toml's)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    clip = args.clip or shared_asset("videos", "liveportrait_d10.mp4")

    _, ref = run_engine(clip, stages_with(detect_every=1, input_size=640, bundle=args.bundle), max_frames=args.max_frames,
                        keep_landmarks=True)
    ref_lm = ref["s0"]
    rows = []
    for size in args.sizes:
        for every in args.every:
            summary, got = run_engine(clip, stages_with(detect_every=every, input_size=size, bundle=args.bundle),
                                      max_frames=args.max_frames, keep_landmarks=True)
            lm = got["s0"]
            both = np.isfinite(lm[:, 0, 0]) & np.isfinite(ref_lm[:, 0, 0])
            dist = np.linalg.norm(lm[both] - ref_lm[both], axis=-1).mean(axis=-1)  # per frame, px
            rows.append({"input_size": size, "detect_every": every, "fps": summary["fps"],
                         "frames": int(len(lm)), "frames_with_face": int(np.isfinite(lm[:, 0, 0]).sum()),
                         "mean_px_vs_ref": round(float(dist.mean()), 3) if both.any() else None,
                         "p95_px_vs_ref": round(float(np.percentile(dist, 95)), 3) if both.any() else None,
                         "new_face_delay_frames_max": every - 1})
            r = rows[-1]
            print(f"centerface {size:4d} every {every:3d}: {r['fps']:7.1f} fps, {r['frames_with_face']}/{r['frames']} "
                  f"frames with a face, landmarks vs every-frame-640 mean {r['mean_px_vs_ref']} px p95 "
                  f"{r['p95_px_vs_ref']} px", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"clip": str(clip), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
