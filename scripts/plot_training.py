"""Plot a training run's curves (losses and validation figures from its TensorBoard log):

    python scripts/plot_training.py runs/cpu_resnet18s16_128 --out docs/training_curves.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

PANELS = {
    "training losses": ["loss/mv_3d", "loss/mv_t", "loss/mv_rot", "loss/mv_2d", "loss/mf_2d"],
    "validation NME (%)": ["val/mv_nme", "val/mf_nme"],
    "validation pose error / canonical tilt (deg)": ["val/mv_pose_deg", "val/mv_tilt_deg"],
    "learned loss scales": ["loss/scale_mv_3d", "loss/scale_mv_rot", "loss/scale_mv_t"],
    "validation 3D error (cm)": ["val/mv_3d_cm"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/training_curves.png"))
    args = ap.parse_args()
    events = EventAccumulator(str(args.run / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
    for ax, (title, names) in zip(axes, PANELS.items()):
        for name in names:
            if name in tags:
                points = events.Scalars(name)
                ax.plot([p.step for p in points], [p.value for p in points], label=name.split("/")[1])
                if name.startswith("loss/scale"):
                    ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
