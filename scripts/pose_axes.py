"""Head pose per Euler axis on held-out synthetic identities rendered at known rig angles.

    python scripts/pose_axes.py [--bundle models/NAME ...] [--teacher] [--identities 10] [--out runs/pose_axes.json]

Each held-out identity (generator seeds from 1e9, never used for training) is rendered from the 41-view
rig (azimuth -60..60, elevation -30..30) at 256 px, every view with a known camera roll drawn from
-30..30 deg, so yaw, pitch and roll all vary. Each model runs the way the engine runs it: CenterFace box
-> crop -> model -> pose in the image camera (training/evaluation/models.py). Per axis it prints the
spread of the true and predicted angles, their correlation, the regression slope of predicted on true,
and the mean absolute error; plus the geodesic error and, for bundles, the canonical tilt: the angle of
the rotation that best aligns the true canonical landmarks (inner face, 17-67) with the predicted ones.
A model that explains the image with a tilted shape instead of a rotated head shows a large tilt.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from engine.geometry import euler_from_rotation
from training.cameras import DEFAULT_DISTANCE_CM, focal_for_face_fraction, orbit_camera, rig_views
from training.evaluation.synthetic import HELD_OUT_SEED_START, choose_box

AXES = ("yaw", "pitch", "roll")
INNER = slice(17, 68)  # the contour's definition differs between teacher labels and ICT vertices


def kabsch_angle_deg(pred: np.ndarray, true: np.ndarray) -> float:
    p, q = pred - pred.mean(0), true - true.mean(0)
    u, _, vt = np.linalg.svd(q.T @ p)
    d = np.sign(np.linalg.det(u @ vt))
    r = (u @ np.diag([1.0, 1.0, d]) @ vt).T
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))


def geodesic_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = (np.trace(a @ np.swapaxes(b, 1, 2), axis1=1, axis2=2) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def axis_table(true_r: np.ndarray, pred_r: np.ndarray) -> dict:
    t, q = euler_from_rotation(true_r), euler_from_rotation(pred_r)
    out = {}
    for k, axis in enumerate(AXES):
        slope = float(np.polyfit(t[:, k], q[:, k], 1)[0])
        out[axis] = {"true_std": float(t[:, k].std()), "pred_std": float(q[:, k].std()),
                     "corr": float(np.corrcoef(t[:, k], q[:, k])[0, 1]), "slope": slope,
                     "mae_deg": float(np.abs(t[:, k] - q[:, k]).mean())}
    out["geodesic_deg"] = float(geodesic_deg(pred_r, true_r).mean())
    return out


def render_views(identities: int, size: int, seed: int):
    """Yields (image, camera, exact landmarks in the head frame, exact 2D landmarks) per rig view."""
    from training.generators import create

    gen = create("ict_head")
    rng = np.random.default_rng(seed)
    f = focal_for_face_fraction(size, DEFAULT_DISTANCE_CM)
    for i in range(identities):
        identity = gen.identity(HELD_OUT_SEED_START + 500 + i)  # past the synthetic benchmark's 200
        for az, el in rig_views():
            cam = orbit_camera(az, el, size, size, f, DEFAULT_DISTANCE_CM, roll=float(rng.uniform(-30, 30)))
            r = gen.render(identity, cam)
            yield r.image, cam, r.landmarks_head, r.landmarks_2d


def main(argv: list[str] | None = None) -> dict:
    from engine.assets import default_bundle
    from plugins.detectors.centerface import CenterFace
    from training.evaluation.models import open_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", action="append", default=[], help="bundle folder (repeat); default: the default bundle")
    p.add_argument("--teacher", action="store_true", help="also the 3DDFA_V2 teacher, in the same run")
    p.add_argument("--identities", type=int, default=10)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="seed of the camera rolls")
    p.add_argument("--out", type=Path, help="JSON with every figure")
    args = p.parse_args(argv)
    models = [open_model(b) for b in (args.bundle or [str(default_bundle())])]
    if args.teacher:
        models.append(open_model("teacher"))
    det = CenterFace(input_size=320)
    true_r, tilt = [], {m.name: [] for m in models}
    pred_r: dict[str, list] = {m.name: [] for m in models}
    for image, cam, lm_head, lm_2d in render_views(args.identities, args.size, args.seed):
        box, _ = choose_box(det.detect(image), lm_2d)
        true_r.append(cam.R)
        for m in models:
            out = m.predict(image, box[None], cam.K)
            pred_r[m.name].append(out["rotation"][0])
            if out.get("landmarks_canonical") is not None:
                tilt[m.name].append(kabsch_angle_deg(out["landmarks_canonical"][0][INNER], lm_head[INNER]))
    true = np.stack(true_r)
    result = {"views": len(true), "identities": args.identities, "models": {}}
    for m in models:
        row = axis_table(true, np.stack(pred_r[m.name]))
        if tilt[m.name]:
            row["canonical_tilt_deg"] = {"mean": float(np.mean(tilt[m.name])), "max": float(np.max(tilt[m.name]))}
        result["models"][m.name] = row
    print(f"{len(true)} rig views of {args.identities} held-out identities, roll drawn from -30..30 deg")
    print(f"{'model':34s} {'axis':6s} {'true std':>8s} {'pred std':>8s} {'corr':>6s} {'slope':>6s} {'MAE':>6s}")
    for name, row in result["models"].items():
        for axis in AXES:
            a = row[axis]
            print(f"{name[:34]:34s} {axis:6s} {a['true_std']:8.1f} {a['pred_std']:8.1f} {a['corr']:6.3f} "
                  f"{a['slope']:6.2f} {a['mae_deg']:6.1f}")
        extra = f", canonical tilt mean {row['canonical_tilt_deg']['mean']:.1f} deg" if "canonical_tilt_deg" in row else ""
        print(f"{name[:34]:34s} geodesic error {row['geodesic_deg']:.1f} deg{extra}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
