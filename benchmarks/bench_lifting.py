"""Lifting accuracy against the generator's exact landmarks, and pseudo-label throughput.

    python benchmarks/bench_lifting.py --identities 200 --rig-size 160

For each identity: render the 41-view rig, run detector + teacher (two passes) on every view, lift with
masks (training/mv.py, exactly what the writer does), and compare the lifted points with the ICT mesh's
landmark vertices. Errors are 3D distances as % of the inter-ocular distance (outer eye corners 36-45),
per region. The lifted points follow the TEACHER's landmark definition (e.g. 3DDFA's jaw contour sits
elsewhere on the face than ICT's jaw vertices), so each landmark's mean offset across identities (a
constant definition bias) is also removed; what remains is the identity-to-identity inconsistency.
Throughput: identities lifted per minute (all workers) and training renders per second (one process).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from collections import Counter

import numpy as np
from tqdm import tqdm

from engine.landmarks68 import REGIONS

_W: dict = {}


def _init(rig_size: int, detector_size: int, threads: int) -> None:
    import torch

    from plugins.detectors.centerface import CenterFace
    from training.generators import create
    from training.mv import MVLabeler
    from training.teacher import Teacher

    torch.set_num_threads(threads)
    _W["labeler"] = MVLabeler(create("ict_head"), Teacher(), CenterFace(input_size=detector_size, intra_op_threads=threads),
                              rig_size=rig_size, image_size=rig_size)


def _lift(seed: int) -> dict:
    li = _W["labeler"].lift_identity(seed)
    return {"seed": seed, "diff": li.lift.points - li.truth, "iod": float(np.linalg.norm(li.truth[36] - li.truth[45])),
            "ok": li.ok, "reason": li.reason, "residual": float(li.lift.landmark_residual.mean())}


def _regions() -> dict[str, slice]:
    return {"full": slice(0, 68), **REGIONS}


def table(diffs: np.ndarray, iods: np.ndarray) -> str:
    """Markdown: mean 3D error % IOD per region, raw and after removing per-landmark mean offsets."""
    rel = diffs / iods[:, None, None] * 100  # (N, 68, 3) in % IOD
    raw = np.linalg.norm(rel, axis=-1)
    centred = np.linalg.norm(rel - rel.mean(axis=0, keepdims=True), axis=-1)
    bias = np.linalg.norm(rel.mean(axis=0), axis=-1)  # (68,)
    rows = ["| region | mean error (% IOD) | definition bias (% IOD) | inconsistency, bias removed (% IOD) |",
            "|---|---|---|---|"]
    for name, sl in _regions().items():
        rows.append(f"| {name} | {raw[:, sl].mean():.2f} | {bias[sl].mean():.2f} | {centred[:, sl].mean():.2f} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--identities", type=int, default=200)
    p.add_argument("--rig-size", type=int, default=160, help="render size of the 41 rig views (px)")
    p.add_argument("--detector-size", type=int, default=320)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0, help="identity seeds are seed * 1e6 + i (as the writer)")
    p.add_argument("--renders", type=int, default=20, help="training renders timed for renders/second")
    args = p.parse_args()

    seeds = [args.seed * 1_000_000 + i for i in range(args.identities)]
    t0 = time.perf_counter()
    if args.workers > 1:
        with mp.get_context("spawn").Pool(args.workers, _init, (args.rig_size, args.detector_size, 1)) as pool:
            t0 = time.perf_counter()  # start timing once the pool is up (its start-up is a one-off cost)
            results = list(tqdm(pool.imap(_lift, seeds), total=len(seeds), unit="identity"))
    else:
        _init(args.rig_size, args.detector_size, 1)
        t0 = time.perf_counter()
        results = [_lift(s) for s in tqdm(seeds, unit="identity")]
    elapsed = time.perf_counter() - t0

    ok = [r for r in results if r["ok"]]
    reasons = Counter(r["reason"] for r in results if not r["ok"])
    print(f"## Lifting accuracy vs generator truth: {len(ok)}/{len(results)} identities accepted "
          f"(rejected: {dict(reasons) or 'none'}), rig 41 views at {args.rig_size}x{args.rig_size} px\n")
    diffs = np.stack([r["diff"] for r in ok])
    iods = np.array([r["iod"] for r in ok])
    print("Accepted identities:\n")
    print(table(diffs, iods))
    if reasons:
        print("\nAll identities (rejected included):\n")
        print(table(np.stack([r["diff"] for r in results]), np.array([r["iod"] for r in results])))
    print(f"\nmean reprojection residual (median over views, fraction of face size): "
          f"{np.mean([r['residual'] for r in results]):.4f}")
    print(f"\n## Throughput on {os.cpu_count()} CPU cores, {args.workers} worker process(es)\n")
    print(f"- identities lifted per minute: {len(results) / elapsed * 60:.1f} ({elapsed:.0f} s for {len(results)})")

    # Training renders per second: render + project the lifted label + detector box, one process.
    _init(args.rig_size, args.detector_size, 1)
    lab = _W["labeler"]
    lifted = lab.lift_identity(seeds[0])
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    n = sum(1 for _ in lab.training_renders(lifted, args.renders, rng))
    dt = time.perf_counter() - t0
    print(f"- training renders per second (one process, {lab.image_size} px): {n / dt:.2f}")


if __name__ == "__main__":
    main()
