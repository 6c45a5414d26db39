"""Evaluation runner: models x datasets -> NME, NMLC, pose error, per region and category; tables + plots.

    python -m training.evaluate --model models/facelift_mbv1_fast_96 --baseline teacher \\
        --dataset synthetic --limit 200 --out runs/eval/synthetic
    python -m training.evaluate --model LLL=runs/lll/bundle --model L1=runs/l1/bundle \\
        --dataset dad3d=/data/dad3d --faces /data/flame_mesh_faces.pt --dataset multiface=/data/multiface --out DIR

``--model`` is a bundle directory or an ``.onnx`` file, optionally ``LABEL=PATH`` (the table row name);
``--baseline teacher`` adds the 3DDFA_V2 teacher measured in the same run. ``--dataset NAME[=ROOT]``
(repeatable): ``synthetic`` (built and cached on first use, training/evaluation/synthetic.py), ``dad3d``,
``multiface``, ``aflw2000``; ``--root`` is the root of the one dataset given without ``=ROOT``.

Per dataset and model (docs/evaluation.md, "Runner"): NME where the set has 68 GT points, NMLC where it
has meshes (upsampled by midpoint subdivision until the normalised vertex spacing is at most
``--nmlc-spacing``; the spacing used is reported), pose error where it has GT rotations. Writes
``results.json``, ``per_image.csv``, the tables of :mod:`training.evaluation.report` and ``plots/``.
Exit status 2 with a one-line message when a dataset folder or a model is missing or malformed.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine.assets import REPO_ROOT
from engine.bundle import BundleError
from engine.geometry import euler_from_rotation
from training.evaluation import report as rep
from training.evaluation.mesh import upsample
from training.evaluation.metrics import box_scale, landmark_errors, landmark_report, pose_geodesic_deg, pose_report
from training.evaluation.models import EvalModel, open_model
from training.evaluation.nmlc import MeshVertices, nmlc, normalised_spacing
from training.evaluation.readers import READERS, DatasetLayoutError, EvalSample

log = logging.getLogger("training.evaluate")

DATASETS = ("synthetic", "dad3d", "multiface", "aflw2000", "mf")
DEFAULT_SPACING = 0.5  # NMLC units (x100 of sqrt(w*h)): well below the errors measured (2-5)
MAX_DENSE_VERTICES = 600_000


# ---------------------------------------------------------------- datasets
def open_dataset(name: str, root: Path | None, args: argparse.Namespace):
    """(reader, faces or None) for a dataset name; raises DatasetLayoutError on a wrong folder."""
    if name == "synthetic":
        from training.evaluation.synthetic import SyntheticConfig, SyntheticReader, build_synthetic

        n = args.limit or args.synthetic_samples
        cfg = SyntheticConfig(samples=n, size=args.synthetic_size)
        root = root or REPO_ROOT / "data" / "eval" / f"synthetic_{cfg.size}px"
        build_synthetic(root, cfg)
        reader = SyntheticReader(root, limit=n)
        return reader, reader.faces()
    if root is None:
        raise ValueError(f"--dataset {name} needs a folder: --dataset {name}=ROOT or --root ROOT")
    if name == "dad3d":
        reader = READERS["dad3d"](root, args.split, faces=args.faces, landmark_embedding=args.landmark_embedding)
        return reader, reader.faces() if args.faces else None
    if name == "multiface":
        reader = READERS["multiface"](root)
        return reader, None  # faces come from the reader once samples are listed (first .obj)
    if name == "aflw2000":
        return READERS["aflw2000"](root, landmarks=args.aflw_landmarks), None
    if name == "mf":  # held-out real clips' frames with the teacher's (mirror-averaged) labels
        return READERS["mf"](root), None
    raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")


def sample_yaw(s: EvalSample) -> float | None:
    """|yaw| in degrees from the GT rotation, or the dataset's own angle (AFLW2000-3D)."""
    if s.rotation is not None:
        return abs(float(euler_from_rotation(np.asarray(s.rotation))[0]))
    pose = s.extras.get("pose_deg")
    return abs(float(pose["yaw"])) if isinstance(pose, dict) and "yaw" in pose else None


# ---------------------------------------------------------------- running models
def run_models(models: list[EvalModel], samples: list[EvalSample], desc: str) -> dict[str, dict]:
    """Each model on each sample's box (one image load per sample). Returns per model:
    ``landmarks`` (I, 68, 2) (NaN where it failed), ``rotation`` (I, 3, 3) or None, ``seconds``."""
    out = {m.name: {"landmarks": np.full((len(samples), 68, 2), np.nan), "rotation": np.full((len(samples), 3, 3), np.nan),
                    "has_rotation": False, "seconds": 0.0, "errors": {}} for m in models}
    for i, s in enumerate(tqdm(samples, desc=desc)):
        image = s.load_image()
        K = s.extras.get("K")
        for m in models:
            o = out[m.name]
            t0 = time.perf_counter()
            try:
                pred = m.predict(image, np.asarray(s.box, np.float32)[None], K)
            except (RuntimeError, ValueError) as exc:  # one bad image must not stop the run: counted
                o["errors"][s.key] = repr(exc)
                log.warning("%s failed on %s: %r", m.name, s.key, exc)
                continue
            finally:
                o["seconds"] += time.perf_counter() - t0
            o["landmarks"][i] = pred["landmarks_2d"][0]
            if pred.get("rotation") is not None:
                o["rotation"][i] = pred["rotation"][0]
                o["has_rotation"] = True
    return out


def _category_pose(errors: np.ndarray, attributes: dict[str, list]) -> dict:
    """Mean geodesic pose error per category value."""
    out: dict = {}
    for attr, col in attributes.items():
        groups: dict[str, list[int]] = {}
        for i, v in enumerate(col):
            if v is not None:
                groups.setdefault(str(v), []).append(i)
        out[attr] = {v: {"count": len(ix), "geodesic_deg": float(errors[ix].mean())} for v, ix in sorted(groups.items())}
    return out


def choose_levels(samples: list[EvalSample], faces: np.ndarray, boxes: np.ndarray, target: float,
                  fixed: int | None) -> int:
    """Midpoint levels so the normalised spacing (NMLC units) is <= target (each level halves it)."""
    if fixed is not None:
        return fixed
    coarse = normalised_spacing(MeshVertices.from_samples(samples), faces, boxes)
    levels = max(0, math.ceil(math.log2(coarse / target))) if coarse > target else 0
    v, f = len(samples[0].vertices), len(faces)
    for lv in range(levels):  # vertex count after each level: V + E, E ~ 1.5 F
        v, f = v + f * 3 // 2, f * 4
        if v > MAX_DENSE_VERTICES:
            log.warning("NMLC: stopping at %d level(s) (%d vertices max)", lv, MAX_DENSE_VERTICES)
            return lv
    return levels


def evaluate_dataset(name: str, samples: list[EvalSample], faces: np.ndarray | None, models: list[EvalModel],
                     args: argparse.Namespace, plots: Path | None) -> tuple[dict, dict, list[dict]]:
    """Metrics of every model on one dataset: (dataset info, {model: metrics}, per-image rows)."""
    boxes = np.stack([np.asarray(s.box, np.float64) for s in samples])
    attrs = {k: [s.attributes.get(k) for s in samples] for k in sorted({k for s in samples for k in s.attributes})}
    has_lm = all(s.landmarks_2d is not None for s in samples)
    has_mesh = all(s.vertices is not None and s.projection is not None for s in samples)
    has_rot = all(s.rotation is not None for s in samples)
    yaw = [sample_yaw(s) for s in samples]
    info: dict = {"images": len(samples), "notes": [], "plots": []}
    if not has_lm:
        info["notes"].append("no 68-point ground truth: NME not computed")
    preds = run_models(models, samples, name)

    verts, up = None, None
    if has_mesh:
        if faces is None:
            info["notes"].append("no mesh faces given: NMLC on the raw mesh vertices (spacing unknown)")
            info.update(nmlc_levels=0, mesh_vertices=int(len(samples[0].vertices)), spacing=None)
        else:
            levels = choose_levels(samples, faces, boxes, args.nmlc_spacing, args.nmlc_levels)
            up = upsample(faces, len(samples[0].vertices), levels)
            info.update(nmlc_levels=levels, mesh_vertices=up.num_vertices)
        verts = MeshVertices.from_samples(samples, up)
        if up is not None:
            info["spacing"] = normalised_spacing(verts, up.faces, boxes)

    metrics: dict = {}
    per_image: list[dict] = []
    heat: dict[str, np.ndarray] = {}
    heat_nmlc: dict[str, np.ndarray] = {}  # NMLC per landmark, plotted besides NME where both exist
    yaw_series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    mean_face = None
    for m in models:
        p = preds[m.name]
        ok = np.isfinite(p["landmarks"]).all(axis=(1, 2))
        idx = np.flatnonzero(ok)
        sub_attrs = {k: [c[i] for i in idx] for k, c in attrs.items()}
        res: dict = {"images": int(ok.sum()), "failed": int((~ok).sum()), "nme": None, "nmlc": None, "pose": None,
                     "seconds_per_image": p["seconds"] / max(len(samples), 1), "errors": p["errors"]}
        img_nme = np.full(len(samples), np.nan)
        img_nmlc = np.full(len(samples), np.nan)
        img_pose = np.full(len(samples), np.nan)
        if ok.any() and has_lm:
            gt = np.stack([samples[i].landmarks_2d for i in idx])
            err = landmark_errors(p["landmarks"][idx], gt, boxes[idx])
            res["nme"] = landmark_report(err, sub_attrs)
            img_nme[idx] = 100 * err.mean(1)
            heat[m.name] = np.asarray(res["nme"]["per_landmark"])
        if ok.any() and verts is not None:
            v = verts if ok.all() else MeshVertices.from_samples([samples[i] for i in idx], up)
            r = nmlc(p["landmarks"][idx], boxes[idx], v, progress=False)
            res["nmlc"] = r.report(sub_attrs)  # includes the chosen dense vertex per landmark
            img_nmlc[idx] = 100 * r.errors.mean(1)
            heat_nmlc[m.name] = r.per_landmark
            if not has_lm:
                heat[m.name] = r.per_landmark
                if mean_face is None:  # positions of the chosen vertices stand in for GT landmarks
                    pos = v.project(0, v.num_images, torch.as_tensor(r.vertices)).numpy()
                    mean_face = _normalised_mean(pos, boxes[idx])
        if ok.any() and has_rot and p["has_rotation"]:
            r_gt = np.stack([samples[i].rotation for i in idx])
            res["pose"] = pose_report(p["rotation"][idx], r_gt)
            geo = pose_geodesic_deg(p["rotation"][idx], r_gt)
            res["pose_categories"] = _category_pose(geo, sub_attrs)
            img_pose[idx] = geo
        metrics[m.name] = res
        err_img = img_nme if has_lm else img_nmlc
        y = np.array([np.nan if a is None else a for a in yaw], float)
        sel = np.isfinite(y) & np.isfinite(err_img)
        if sel.any():
            yaw_series[m.name] = (y[sel], err_img[sel])
        for i, s in enumerate(samples):
            per_image.append({"dataset": name, "model": m.name, "key": s.key, "nme": img_nme[i], "nmlc": img_nmlc[i],
                              "pose_geodesic_deg": img_pose[i], "abs_yaw_deg": y[i],
                              **{f"attr_{k}": v for k, v in s.attributes.items()}})
    if has_lm:
        mean_face = _normalised_mean(np.stack([s.landmarks_2d for s in samples]), boxes)
    if plots is not None:
        plots.mkdir(parents=True, exist_ok=True)
        metric = "NME" if has_lm else "NMLC"
        if heat and mean_face is not None:
            info["plots"].append(rep.plot_landmark_errors(plots / f"{name}_landmark_errors.png", mean_face, heat, metric,
                                                          f"{name}: per-landmark {metric} on the mean face"))
        if has_lm and heat_nmlc and mean_face is not None:
            info["plots"].append(rep.plot_landmark_errors(plots / f"{name}_landmark_nmlc.png", mean_face, heat_nmlc,
                                                          "NMLC", f"{name}: per-landmark NMLC on the mean face"))
        if yaw_series:
            info["plots"].append(rep.plot_error_vs_yaw(plots / f"{name}_error_vs_yaw.png", yaw_series, metric,
                                                       f"{name}: {metric} vs |yaw|"))
    return info, metrics, per_image


def _normalised_mean(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(68, 2) mean of landmarks centred on their box and divided by sqrt(w*h)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    return ((points - centre[:, None]) / box_scale(boxes)[:, None, None]).mean(0)


# ---------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], metavar="[LABEL=]PATH",
                   help="bundle directory or .onnx file (repeatable)")
    p.add_argument("--baseline", action="append", default=[], choices=["teacher"],
                   help="peer model measured in the same run")
    p.add_argument("--dataset", action="append", required=True, metavar="NAME[=ROOT]",
                   help=f"one of {', '.join(DATASETS)} (repeatable)")
    p.add_argument("--root", type=Path, help="dataset folder of the one --dataset given without =ROOT")
    p.add_argument("--limit", type=int, help="first N samples of each dataset")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default="val", help="DAD-3DHeads split (val; test has no annotations)")
    p.add_argument("--faces", type=Path, help="DAD-3DHeads mesh faces: flame_mesh_faces.pt, FLAME .obj or .npy")
    p.add_argument("--landmark-embedding", type=Path, help="DAD-3DHeads 68-point FLAME embedding .npz (for NME)")
    p.add_argument("--aflw-landmarks", choices=["reannotated", "original"], default="reannotated")
    p.add_argument("--synthetic-samples", type=int, default=200)
    p.add_argument("--synthetic-size", type=int, default=256)
    p.add_argument("--nmlc-spacing", type=float, default=DEFAULT_SPACING,
                   help="upsample meshes until the normalised vertex spacing is at most this (NMLC units)")
    p.add_argument("--nmlc-levels", type=int, help="fixed midpoint subdivision levels instead")
    p.add_argument("--input-size", type=int, help=".onnx models without a manifest: crop size")
    p.add_argument("--onnx-spec", type=Path, help=".onnx models: JSON input spec (bundle manifest or its 'input')")
    p.add_argument("--threads", type=int, help="torch / onnxruntime CPU threads")
    p.add_argument("--second-pass", action="store_true",
                   help="also run each model a second time cropped from its first-pass landmarks (what tracking does)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    if not args.model and not args.baseline:
        p.error("give at least one --model or --baseline")
    return args


def _datasets(args: argparse.Namespace) -> list[tuple[str, Path | None]]:
    out = []
    for spec in args.dataset:
        name, _, root = spec.partition("=")
        if name not in DATASETS:
            raise ValueError(f"--dataset {spec}: unknown dataset {name!r} (use one of {', '.join(DATASETS)})")
        out.append((name, Path(root) if root else None))
    rootless = [n for n, r in out if r is None and n != "synthetic"]
    if args.root is not None:
        if len(rootless) != 1:
            raise ValueError("--root applies to exactly one --dataset given without =ROOT")
        out = [(n, args.root if (r is None and n != "synthetic") else r) for n, r in out]
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        datasets = _datasets(args)
        models = [open_model(s, args.threads, args.onnx_spec, args.input_size) for s in args.model]
        if args.second_pass:  # also each bundle re-cropped from its own first-pass landmarks (tracking)
            models += [m.second_pass() for m in models if hasattr(m, "second_pass")]
        models += [open_model(b) for b in args.baseline]
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must differ ({names}): label them with --model LABEL=PATH")
        opened = [(name, *open_dataset(name, root, args)) for name, root in datasets]
    except (DatasetLayoutError, BundleError, FileNotFoundError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    plots = None if args.no_plots else args.out / "plots"
    results: dict = {"models": names, "datasets": {}, "metrics": {}}
    rows: list[dict] = []
    for name, reader, faces in opened:
        try:
            samples = list(itertools.islice(reader, args.limit))
            if faces is None and name == "multiface":
                faces = reader.faces()
        except (DatasetLayoutError, FileNotFoundError, ValueError) as exc:
            print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        if not samples:
            print(f"error: {name}: no usable samples ({len(reader.skipped)} skipped)", file=sys.stderr)
            return 2
        info, metrics, per_image = evaluate_dataset(name, samples, faces, models, args, plots)
        if reader.skipped:
            info["notes"].append(f"{len(reader.skipped)} sample(s) skipped by the reader")
        results["datasets"][name] = info
        results["metrics"][name] = metrics
        rows += per_image
    command = "python -m training.evaluate " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    _write_rows(args.out / "per_image.csv", rows)
    plots_written = [p for info in results["datasets"].values() for p in info.pop("plots")]
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    path = rep.write_report(args.out, results, command, plots_written)
    print(rep.markdown_table(*rep.summary_table(results)))
    print(f"report: {path}")
    return 0


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


def _write_rows(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) and np.isfinite(v) else ("" if isinstance(v, float) else v))
                        for k, v in r.items()})


if __name__ == "__main__":
    sys.exit(main())
