"""What each design choice of the default model buys (issue 12): the same short training with one
choice taken away at a time.

    python scripts/ablate_design.py [--config training/configs/cpu_mbv1_3ddfa_128.toml] [--steps 300]
        [--variants full no_pretrain fixed_balance no_lmcrop resnet18] [--out runs/ablation_design] [--set ...]

Variants (each from scratch or from the teacher's weights, same seed, same batches, ``--steps`` steps):
``full`` the default config; ``no_pretrain`` the MobileNet encoder without the teacher's weights;
``fixed_balance`` fixed loss weights instead of learned Laplace scales; ``no_lmcrop`` detector-box crops
only; ``resnet18`` the previous default's encoder (ResNet-18 cut after layer3, from scratch). The final
validation figures (training/train.py: held-out synthetic identities and held-out real clips, from the
detector box and from label landmarks) are printed as a Markdown table and written to
``<out>/results.json``. A finished run is not trained again.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from training.train import load_config, train

VARIANTS = {
    "full": [],
    "no_pretrain": ["train.init_backbone=''", "train.backbone_lr_scale=1.0"],
    "fixed_balance": ["loss.balance=fixed"],
    "no_lmcrop": ["data.augment.landmark_crop_prob=0.0"],
    "resnet18": ["model.backbone=resnet18", "model.cnn_out_index=3", "model.mean=[0.485, 0.456, 0.406]",
                 "model.std=[0.229, 0.224, 0.225]", "train.init_backbone=''", "train.backbone_lr_scale=1.0"],
}
COLUMNS = {"mv_nme": "MV NME %", "mv_nme_lmcrop": "MV NME % (landmark crop)", "mv_3d_cm": "3D error cm",
           "mv_pose_deg": "pose deg", "mv_tilt_deg": "tilt deg", "mf_nme": "MF NME %",
           "mf_nme_lmcrop": "MF NME % (landmark crop)"}


def run_variants(config: str, variants: dict[str, list[str]], steps: int, out: Path, extra: list[str]) -> dict:
    """Train each variant (its overrides + ``extra``) for ``steps`` steps into ``out/<name>`` (a finished
    run is not trained again); returns ``{name: final validation figures}``, also in ``out/results.json``."""
    results = {}
    for name, overrides in variants.items():
        run_dir = out / name
        done = run_dir / "val.json"
        if not done.exists() or json.loads(done.read_text())["step"] != steps:
            sets = [*overrides, f"train.max_steps={steps}", f"train.val_every={steps}", "train.max_minutes=1e9", *extra]
            train(load_config(config, sets), run_dir, resume=True)
        results[name] = json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="training/configs/cpu_mbv1_3ddfa_128.toml")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", type=Path, default=Path("runs/ablation_design"))
    p.add_argument("--set", action="append", default=[], help="extra config overrides for every run")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    results = run_variants(args.config, {n: VARIANTS[n] for n in args.variants}, args.steps, args.out, args.set)
    print(f"| variant ({args.steps} steps) | " + " | ".join(COLUMNS.values()) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, figures in results.items():
        print(f"| {name} | " + " | ".join(f"{figures[k]:.2f}" if k in figures else "-" for k in COLUMNS) + " |")


if __name__ == "__main__":
    main()
