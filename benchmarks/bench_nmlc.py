"""Time and memory of NMLC at evaluation scale: 10k images x 68 landmarks x a ~100k-vertex mesh.

Random but structured data: a bumpy height-field "head" mesh (80x80 = 6.4k vertices) upsampled twice
by midpoint subdivision (~101k dense vertices), per-image shape noise and random poses, predictions =
projection of 68 surface points with a fixed per-landmark definition bias plus per-image noise.
The coarse meshes live in a float32 memmap (as a real 10k-image set would); dense vertices are
interpolated and projected on the fly, chunk by chunk.

    .venv/bin/python benchmarks/bench_nmlc.py --images 10000 --k 1024
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine.geometry import rotation_from_euler
from training.evaluation.mesh import mean_edge_length, upsample
from training.evaluation.metrics import nme
from training.evaluation.nmlc import MeshVertices, nmlc, normalised_spacing


def grid_mesh(n: int, size: float = 16.0):
    xs = np.linspace(-size / 2, size / 2, n)
    x, y = np.meshgrid(xs, xs)
    z = 4.0 * np.exp(-(x**2 + y**2) / 40.0) + 0.2 * np.sin(x) * np.cos(y)
    v = np.stack([x.ravel(), y.ravel(), z.ravel()], 1).astype(np.float32)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    return v, np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--grid", type=int, default=80, help="coarse mesh is grid x grid vertices")
    ap.add_argument("--levels", type=int, default=2)
    ap.add_argument("--k", type=int, default=1024, help="initial candidates per landmark")
    ap.add_argument("--noise", type=float, default=0.02, help="per-image landmark noise / box scale")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    t0 = time.perf_counter()
    v, f = grid_mesh(args.grid)
    up = upsample(f, len(v), args.levels)
    t_up = time.perf_counter() - t0
    n_img = args.images
    tmp = Path(tempfile.mkdtemp(prefix="bench_nmlc_"))
    meshes = np.lib.format.open_memmap(tmp / "meshes.npy", "w+", np.float32, (n_img, len(v), 3))
    proj = np.empty((n_img, 3, 4), np.float32)
    k_mat = np.array([[1200.0, 0, 512], [0, 1200.0, 512], [0, 0, 1]])
    # Landmarks: 68 surface points near the centre; the model's own definition is a fixed surface
    # offset (random point of a neighbouring dense triangle), to be removed by NMLC.
    def_face = rng.choice(len(f), 68, replace=False)
    def_bary = rng.dirichlet(np.ones(3), 68).astype(np.float32)
    pred = np.empty((n_img, 68, 2), np.float32)
    boxes = np.empty((n_img, 4), np.float32)
    bias_face = np.clip(def_face + rng.integers(-3, 4, 68), 0, len(f) - 1)
    t0 = time.perf_counter()
    for i in range(n_img):
        m = v + rng.normal(0, 0.1, v.shape).astype(np.float32)
        meshes[i] = m
        r = rotation_from_euler(*rng.uniform([-50, -25, -20], [50, 25, 20]))
        t = np.array([*rng.uniform(-2, 2, 2), rng.uniform(50, 90)])
        proj[i] = k_mat @ np.hstack([r, t[:, None]])
        own = np.einsum("nkd,nk->nd", m[f[bias_face]], def_bary)
        h = own @ proj[i, :, :3].T + proj[i, :, 3]
        lm = h[:, :2] / h[:, 2:]
        hv = m @ proj[i, :, :3].T + proj[i, :, 3]
        pv = hv[:, :2] / hv[:, 2:]
        boxes[i] = [*pv.min(0), *pv.max(0)]
        s = np.sqrt((boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1]))
        pred[i] = lm + rng.normal(0, args.noise * s, lm.shape)
    meshes.flush()
    t_data = time.perf_counter() - t0
    # Ground truth = the dataset's own definition points (first 2000 images suffice for the NME).
    n_gt = min(n_img, 2000)
    gt = np.stack([np.einsum("nkd,nk->nd", meshes[i][f[def_face]], def_bary) for i in range(n_gt)])
    h = np.einsum("ind,ied->ine", gt, proj[:n_gt, :, :3]) + proj[:n_gt, None, :, 3]
    gt_2d = h[..., :2] / h[..., 2:]

    verts = MeshVertices(meshes, proj, up)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    res = nmlc(pred, boxes, verts, k=args.k, progress=True)
    t_nmlc = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    spacing = normalised_spacing(verts, up.faces, boxes)
    print(f"images={n_img} landmarks=68 coarse_vertices={len(v)} dense_vertices={up.num_vertices} "
          f"levels={args.levels} torch_threads={torch.get_num_threads()}")
    print(f"upsampling topology: {t_up:.2f}s; data generation: {t_data:.1f}s")
    print(f"NMLC: {t_nmlc:.1f}s wall, k={res.candidates}, certified {int(res.certified.sum())}/68")
    print(f"peak RSS: {rss1 / 1024:.0f} MiB (before NMLC {rss0 / 1024:.0f} MiB; memmap pages count as RSS)")
    print(f"NMLC full={res.value:.3f}  NME vs GT definition (first {len(gt)} images)="
          f"{nme(pred[:len(gt)], gt_2d, boxes[:len(gt)]):.3f}  dense spacing={spacing:.3f} "
          f"(coarse {spacing * mean_edge_length(v, f) / mean_edge_length(up.apply(v), up.faces):.3f}),"
          " x100 of sqrt(wh)")
    print("regions:", {k: round(x, 3) for k, x in res.regions.items()})


if __name__ == "__main__":
    main()
