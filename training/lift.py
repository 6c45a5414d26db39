"""Lift identities only (41-view rig -> teacher -> masked lifting) and save the 3D labels:
``python -m training.lift --identities 2000 --seed 2 --out lifted.npz [--workers 14] [--deadline-s 240]``.

The rig is the expensive part of MV pseudo-labels (41 renders, 4 teacher passes with mirror
averaging, a detector pass, robust lifting per identity); the training renders are cheap. This writes
only the lifted points, a few MB for thousands of identities, so a many-core or GPU machine can lift
and ``python -m training.pseudolabel --lifted lifted.npz`` renders the training images anywhere
(identities are functions of their seed, so both machines build the same head). The file is rewritten
every ``--save-every`` identities; ``--deadline-s`` stops cleanly with what is done.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

from training.pseudolabel import IDENTITY_SEED_STRIDE, PseudoLabelConfig

log = logging.getLogger(__name__)


def save_lifted(path: Path, results: dict[int, tuple[np.ndarray | None, str | None]], cfg: PseudoLabelConfig) -> None:
    seeds = np.array(sorted(results), dtype=np.int64)
    points = np.stack([results[s][0] if results[s][0] is not None else np.full((68, 3), np.nan) for s in seeds]) \
        if len(seeds) else np.zeros((0, 68, 3))
    reasons = np.array([results[s][1] or "" for s in seeds])
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, seeds=seeds, points=points.astype(np.float64), reasons=reasons, config=cfg.model_dump_json())
    os.replace(tmp, path)


def load_lifted(path: str | Path) -> dict[int, np.ndarray]:
    """{identity seed: (68, 3) lifted points} of the accepted identities in a ``training.lift`` file."""
    with np.load(path) as z:
        return {int(s): p for s, p, r in zip(z["seeds"], z["points"], z["reasons"]) if not r}


def _lift(seed: int) -> tuple[int, np.ndarray | None, str | None]:
    from training import pseudolabel as pl
    from training.mv import MVLabeler

    cfg = pl._STATE["cfg"]
    if "labeler" not in pl._STATE:
        pl._STATE["labeler"] = MVLabeler(pl._generator(), pl._teacher(), None, rig_size=cfg.rig_size,
                                         lifting=cfg.lifting, mirror=cfg.teacher_mirror,
                                         rig_detector=pl._rig_detector() if cfg.detector else None)
    res = pl._STATE["labeler"].lift_identity(seed)
    return seed, res.lift.points if res.ok else None, res.reason


def main(argv: list[str] | None = None) -> int:
    from training import pseudolabel as pl

    p = argparse.ArgumentParser(prog="python -m training.lift", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--identities", type=int, default=100)
    p.add_argument("--start", type=int, default=0, help="first identity index")
    p.add_argument("--seed", type=int, default=0, help="identity seeds are seed * 1e6 + index")
    p.add_argument("--rig-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--deadline-s", type=float, default=None, help="stop after this many seconds, saving what is done")
    p.add_argument("--save-every", type=int, default=50)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = PseudoLabelConfig(out=a.out.parent, identities=a.identities, rig_size=a.rig_size, seed=a.seed, workers=a.workers)
    seeds = [a.seed * IDENTITY_SEED_STRIDE + i for i in range(a.start, a.start + a.identities)]
    results: dict[int, tuple[np.ndarray | None, str | None]] = {}
    t0 = time.perf_counter()
    pool = mp.get_context("spawn").Pool(a.workers, initializer=pl._init_worker, initargs=(cfg.model_dump_json(), 1))
    try:
        for n, (seed, points, reason) in enumerate(pool.imap_unordered(_lift, seeds), 1):
            results[seed] = (points, reason)
            if n % a.save_every == 0:
                save_lifted(a.out, results, cfg)
                log.info("%d identities lifted in %.0f s", n, time.perf_counter() - t0)
            if a.deadline_s is not None and time.perf_counter() - t0 > a.deadline_s:
                log.warning("deadline reached after %d identities", n)
                break
    finally:
        pool.terminate()
        save_lifted(a.out, results, cfg)
    ok = sum(r[0] is not None for r in results.values())
    print(f"{a.out}: {len(results)} identities lifted ({ok} accepted) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
