"""Evaluation report: the paper's table layouts as Markdown + CSV, and plots (matplotlib, Agg).

Input is the runner's ``results`` dict (training/evaluate.py)::

    {"models": [name, ...],
     "datasets": {dataset: {"images", "nmlc_levels", "spacing", "mesh_vertices", "notes": [...]}},
     "metrics": {dataset: {model: {"nme": landmark_report | None, "nmlc": nmlc report | None,
                                   "pose": pose_report | None, "pose_categories": {...} | None,
                                   "images", "failed", "seconds_per_image"}}}}

Tables (each ``<stem>.md`` and ``<stem>.csv``, all collected in ``report.md``):

- ``table1_<dataset>``: seed Table 1, models as rows, categories (``attribute: value``) as columns,
  NMLC (NME where the dataset has no meshes);
- ``table2_ablation``: seed Table 2, models as rows, NME and NMLC per dataset as columns;
- ``table3_cross_dataset``: seed Table 3, NME per dataset;
- ``regions``: full, contour, brows, nose, eyes, mouth per dataset and metric;
- ``pose``: geodesic degrees, ``||I - R_pred R_gt^T||_F`` and per-angle errors where GT rotations exist;
- ``summary``: images, failures and seconds per image of each run.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.landmarks68 import REGIONS

REGION_NAMES = ("full", *REGIONS)
Cell = float | int | str | None


def _fmt(v: Cell, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Cell]], digits: int = 2) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_table(out: Path, stem: str, title: str, header: Sequence[str], rows: Sequence[Sequence[Cell]],
                note: str = "") -> str:
    """Write ``<stem>.md`` and ``<stem>.csv``; returns the Markdown section."""
    md = f"### {title}\n\n{markdown_table(header, rows)}\n"
    if note:
        md += f"\n{note}\n"
    (out / f"{stem}.md").write_text(md)
    with open(out / f"{stem}.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in rows:
            w.writerow(["" if v is None else (f"{v:.4f}" if isinstance(v, float) else v) for v in row])
    return md


def _main_metric(m: dict) -> tuple[str, dict | None]:
    """NMLC report where the dataset has meshes, else the NME report."""
    return ("NMLC", m["nmlc"]) if m.get("nmlc") else ("NME", m.get("nme"))


def table1(results: dict, dataset: str) -> tuple[list[str], list[list[Cell]], str]:
    per_model = results["metrics"][dataset]
    columns: list[tuple[str, str]] = []
    metric = "NMLC"
    for m in per_model.values():
        metric, rep = _main_metric(m)
        for attr, values in sorted((rep or {}).get("categories", {}).items()):
            columns += [(attr, v) for v in values if (attr, v) not in columns]
    header = ["Model", "full"] + [f"{a}: {v}" for a, v in columns]
    rows = []
    for name in results["models"]:
        _, rep = _main_metric(per_model[name])
        cats = (rep or {}).get("categories", {})
        rows.append([name, (rep or {}).get("regions", {}).get("full")]
                    + [cats.get(a, {}).get(v, {}).get("full") for a, v in columns])
    counts = {}
    for m in per_model.values():
        for attr, values in ((_main_metric(m)[1] or {}).get("categories", {})).items():
            for v, d in values.items():
                counts[f"{attr}: {v}"] = int(d.get("count", 0))
    note = f"{metric} (x100 of sqrt(w*h) of the face box). Images per column: " + ", ".join(
        f"{k} {c}" for k, c in counts.items()) if counts else f"{metric} (x100)."
    return header, rows, note


def table2(results: dict) -> tuple[list[str], list[list[Cell]]]:
    header, cols = ["Model"], []
    for ds, per_model in results["metrics"].items():
        for metric in ("nme", "nmlc"):
            if any(m.get(metric) for m in per_model.values()):
                header.append(f"{ds} {metric.upper()}")
                cols.append((ds, metric))
    rows = [[name] + [(results["metrics"][ds][name].get(metric) or {}).get("regions", {}).get("full")
                      for ds, metric in cols] for name in results["models"]]
    return header, rows


def table3(results: dict) -> tuple[list[str], list[list[Cell]]]:
    dss = [ds for ds, per_model in results["metrics"].items() if any(m.get("nme") for m in per_model.values())]
    rows = [[name] + [(results["metrics"][ds][name].get("nme") or {}).get("regions", {}).get("full") for ds in dss]
            for name in results["models"]]
    return ["Model"] + [f"{ds} NME" for ds in dss], rows


def regions_table(results: dict) -> tuple[list[str], list[list[Cell]]]:
    header = ["Dataset", "Metric", "Model", *REGION_NAMES]
    rows = []
    for ds, per_model in results["metrics"].items():
        for metric in ("nme", "nmlc"):
            for name in results["models"]:
                rep = per_model[name].get(metric)
                if rep:
                    rows.append([ds, metric.upper(), name] + [rep["regions"].get(r) for r in REGION_NAMES])
    return header, rows


POSE_KEYS = ("geodesic_deg", "frobenius", "yaw_deg", "pitch_deg", "roll_deg")


def pose_table(results: dict) -> tuple[list[str], list[list[Cell]]]:
    rows = []
    for ds, per_model in results["metrics"].items():
        for name in results["models"]:
            p = per_model[name].get("pose")
            if p:
                rows.append([ds, name] + [p[k] for k in POSE_KEYS])
    return ["Dataset", "Model", "geodesic (deg)", "‖I − R R_gtᵀ‖_F", "yaw (deg)", "pitch (deg)", "roll (deg)"], rows


def summary_table(results: dict) -> tuple[list[str], list[list[Cell]]]:
    rows = []
    for ds, per_model in results["metrics"].items():
        for name in results["models"]:
            m = per_model[name]
            rows.append([ds, name, m["images"], m["failed"], m["seconds_per_image"],
                         (m.get("nme") or {}).get("regions", {}).get("full"),
                         (m.get("nmlc") or {}).get("regions", {}).get("full"),
                         (m.get("pose") or {}).get("geodesic_deg")])
    return ["Dataset", "Model", "images", "failed", "s/image", "NME", "NMLC", "pose (deg)"], rows


# ---------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_landmark_errors(path: Path, mean_face: np.ndarray, errors: dict[str, np.ndarray], metric: str,
                         title: str) -> Path:
    """Per-landmark error heat map: mean GT landmarks (box-normalised), one panel per model."""
    plt = _plt()
    n = len(errors)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 1.2, 4.2), squeeze=False, layout="constrained")
    vmax = max(float(np.nanmax(e)) for e in errors.values())
    sc = None
    for ax, (name, e) in zip(axes[0], errors.items()):
        sc = ax.scatter(mean_face[:, 0], mean_face[:, 1], c=e, cmap="inferno", vmin=0, vmax=vmax, s=28,
                        edgecolors="k", linewidths=0.3)
        ax.set_title(f"{name}\n{metric} {np.nanmean(e):.2f}", fontsize=9)
        ax.invert_yaxis()
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(sc, ax=axes[0].tolist(), label=f"{metric} per landmark (x100)")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_error_vs_yaw(path: Path, series: dict[str, tuple[np.ndarray, np.ndarray]], metric: str, title: str,
                      bin_deg: float = 10.0) -> Path:
    """Per-image error against |yaw| (points) with the per-bin mean (lines), one colour per model."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    top = max(float(np.nanmax(y)) for y, _ in series.values()) if series else 90.0
    edges = np.arange(0.0, max(top, bin_deg) + bin_deg, bin_deg)
    for i, (name, (yaw, err)) in enumerate(series.items()):
        colour = f"C{i}"
        ax.scatter(yaw, err, s=6, alpha=0.3, color=colour)
        idx = np.digitize(yaw, edges) - 1
        centres, means = [], []
        for b in range(len(edges) - 1):
            sel = idx == b
            if sel.any():
                centres.append((edges[b] + edges[b + 1]) / 2)
                means.append(float(np.mean(err[sel])))
        ax.plot(centres, means, "-o", ms=3, color=colour, label=name)
    ax.set_xlabel("|yaw| (deg, ground truth)")
    ax.set_ylabel(f"{metric} per image (x100)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: Path, results: dict, command: str = "", plots: Sequence[Path] = ()) -> Path:
    """All tables (Markdown + CSV) and ``report.md`` linking ``plots`` (written by the runner: they need
    the per-image arrays)."""
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# Evaluation report", ""]
    if command:
        parts += ["Command:", "", f"    {command}", ""]
    for ds, info in results["datasets"].items():
        line = f"- **{ds}**: {info['images']} images"
        if info.get("mesh_vertices"):
            line += (f"; NMLC on {info['mesh_vertices']} mesh vertices ({info['nmlc_levels']} midpoint "
                     f"level(s)), normalised vertex spacing {_fmt(info.get('spacing'))} (same units as NMLC)")
        parts.append(line)
        parts += [f"  - {n}" for n in info.get("notes", [])]
    parts.append("")
    for ds in results["metrics"]:
        h, r, note = table1(results, ds)
        parts.append(write_table(out, f"table1_{ds}", f"Table 1: {ds} per category", h, r, note))
    h, r = table2(results)
    parts.append(write_table(out, "table2_ablation", "Table 2: NME / NMLC per dataset (loss ablation layout)", h, r))
    h, r = table3(results)
    parts.append(write_table(out, "table3_cross_dataset", "Table 3: NME per dataset (cross-dataset layout)", h, r))
    h, r = regions_table(results)
    parts.append(write_table(out, "regions", "Per region", h, r))
    h, r = pose_table(results)
    if r:
        parts.append(write_table(out, "pose", "Head pose error", h, r, "Mean over images; GT rotation from the dataset."))
    h, r = summary_table(results)
    parts.append(write_table(out, "summary", "Runs", h, r))
    if plots:
        links = [Path(p).resolve().relative_to(out.resolve()).as_posix() for p in plots]
        parts.append("### Plots\n\n" + "\n".join(f"![{Path(p).stem}]({p})" for p in links) + "\n")
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path
