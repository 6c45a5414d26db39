"""The paper's 2D-loss ablation: the same training with LLL, L1 and MSE on the 2.5D/2D landmarks.

    python scripts/ablate_loss_2d.py --config training/configs/cpu_resnet18s16_128.toml \
        [--steps 400] [--losses lll l1 mse] [--out runs/ablation_loss_2d] [--set train.batch_size=64 ...]

Each run trains from scratch (or from ``--set train.init_from=CKPT``) with the config's data and a
schedule of ``--steps`` (same seed, same batches), validates at the end, and the final figures (training/train.py validation: NME on held-out
synthetic identities, 3D error, pose error, NME against the teacher on held-out clips) are printed as a
Markdown table and written to ``<out>/results.json``. A run that already finished is not trained again.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ablate_design import run_variants  # scripts/: run as python scripts/ablate_loss_2d.py

COLUMNS = {"mv_nme": "MV NME %", "mv_3d_cm": "3D error cm", "mv_pose_deg": "pose deg", "mf_nme": "MF NME %"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--losses", nargs="+", default=["lll", "l1", "mse"], choices=["lll", "l1", "mse"])
    p.add_argument("--out", type=Path, default=Path("runs/ablation_loss_2d"))
    p.add_argument("--set", action="append", default=[], help="extra config overrides for every run")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    variants = {loss: [f"loss.loss_2d={loss}"] for loss in args.losses}
    results = run_variants(args.config, variants, args.steps, args.out, args.set)
    print(f"| 2D loss ({args.steps} steps) | " + " | ".join(COLUMNS.values()) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for loss, figures in results.items():
        print(f"| {loss.upper()} | " + " | ".join(f"{figures[k]:.2f}" for k in COLUMNS) + " |")


if __name__ == "__main__":
    main()
