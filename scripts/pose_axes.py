"""Head-pose error per Euler axis (yaw, pitch, roll) on held-out synthetic identities.

    python scripts/pose_axes.py [--bundle models/facelift_r18s16_128] \
        [--config training/configs/cpu_resnet18s16_128.toml] [--samples 256]

Runs the bundle's ONNX model (ONNX Runtime) on the validation crops training/train.py uses (identities
held out by ``val_identity_mod``, crops from the stored detector box, labels in the crop camera) and
prints, per axis: the spread of the true and the predicted angles, their correlation and the mean
absolute error, plus the geodesic error. A model that regresses one axis towards its mean shows a
predicted spread far below the true one. As a check of the labels themselves it also prints how well two
2D cues of the labelled landmarks follow the labelled angles: nose-to-eyes over chin-to-eyes height
(pitch) and the eye-line angle (roll).
"""

from __future__ import annotations

import argparse

import numpy as np

from engine.assets import default_bundle
from engine.bundle import load_bundle
from engine.geometry import euler_from_rotation
from training.data import MV, FaceCrops, index_dataset, split_refs
from training.train import load_config


def geodesic_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = (np.trace(a @ np.swapaxes(b, 1, 2), axis1=1, axis2=2) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(default_bundle()))
    p.add_argument("--config", default="training/configs/cpu_resnet18s16_128.toml", help="for its data and split")
    p.add_argument("--samples", type=int, default=256)
    args = p.parse_args()
    bundle = load_bundle(args.bundle)
    cfg = load_config(args.config)
    refs = [r for path in cfg.data.train for r in index_dataset(path)]
    _, val = split_refs(refs, cfg.data, "both")
    val = [r for r in val if r.kind == MV]
    pick = np.random.default_rng(0).choice(len(val), min(args.samples, len(val)), replace=False)
    m = cfg.model
    crops = FaceCrops([val[i] for i in pick], m.img_size, m.k0(), m.mean, m.std)
    samples = [crops[i] for i in range(len(crops))]
    images = np.stack([s["image"].numpy() for s in samples])
    true_r = np.stack([s["rotation"].numpy() for s in samples]).astype(np.float64)
    session = bundle.session()
    pred_r = np.concatenate([session.run(["rotation"], {"image": images[i:i + 32]})[0]
                             for i in range(0, len(images), 32)]).astype(np.float64)
    t = np.array([euler_from_rotation(r) for r in true_r])
    q = np.array([euler_from_rotation(r) for r in pred_r])
    print(f"bundle {bundle.manifest.name}: {len(images)} held-out synthetic crops")
    print(f"{'axis':6s} {'true std':>9s} {'pred std':>9s} {'corr':>6s} {'MAE deg':>8s}")
    for k, axis in enumerate(("yaw", "pitch", "roll")):
        corr = np.corrcoef(t[:, k], q[:, k])[0, 1]
        print(f"{axis:6s} {t[:, k].std():9.1f} {q[:, k].std():9.1f} {corr:6.2f} {np.abs(t[:, k] - q[:, k]).mean():8.1f}")
    print(f"geodesic error: mean {geodesic_deg(pred_r, true_r).mean():.1f} deg")
    lm = np.stack([s["landmarks_2d"].numpy() for s in samples]).astype(np.float64)
    eye_l, eye_r = lm[:, 36:42].mean(1), lm[:, 42:48].mean(1)
    eyes = (eye_l + eye_r) / 2
    pitch_cue = (lm[:, 30, 1] - eyes[:, 1]) / (lm[:, 8, 1] - eyes[:, 1])
    roll_cue = np.degrees(np.arctan2(eye_r[:, 1] - eye_l[:, 1], eye_r[:, 0] - eye_l[:, 0]))
    print(f"label check: corr(pitch cue, true pitch) {np.corrcoef(pitch_cue, t[:, 1])[0, 1]:.2f}, "
          f"corr(eye-line angle, true roll) {np.corrcoef(roll_cue, t[:, 2])[0, 1]:.2f}")


if __name__ == "__main__":
    main()
