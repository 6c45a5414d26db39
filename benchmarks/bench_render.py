"""Renders per second of the embedded generator: the 41-view rig and augmented training renders.

    python benchmarks/bench_render.py [--size 256] [--identities 2] [--training 40]

The rig reuses one identity's geometry and material setup for all 41 views (as the lifting does);
training renders draw a new identity each time (the worst case).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from training.cameras import AugmentedCameraSpace, rig_cameras
from training.generators.ict_head import ICTHeadGenerator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--identities", type=int, default=2)
    ap.add_argument("--training", type=int, default=40)
    args = ap.parse_args()
    gen = ICTHeadGenerator()
    cams = rig_cameras(args.size)
    gen.render(gen.identity(10_000), cams[0])  # warm-up: context, shaders, texture upload
    t0 = time.perf_counter()
    for k in range(args.identities):
        ident = gen.identity(k)
        for cam in cams:
            gen.render(ident, cam)
    rig_s = time.perf_counter() - t0
    n_rig = args.identities * len(cams)
    space, rng = AugmentedCameraSpace(), np.random.default_rng(0)
    t0 = time.perf_counter()
    for k in range(args.training):
        gen.render(gen.identity(100 + k), space.sample(rng, args.size))
    train_s = time.perf_counter() - t0
    print(f"renderer: {gen.raster.renderer}, {args.size}px, supersample {gen.supersample}")
    print(f"rig: {n_rig} renders in {rig_s:.2f} s = {n_rig / rig_s:.1f} renders/s "
          f"({rig_s / args.identities:.2f} s per 41-view identity)")
    print(f"training: {args.training} renders in {train_s:.2f} s = {args.training / train_s:.1f} renders/s")


if __name__ == "__main__":
    main()
