"""NMLC (training/evaluation/nmlc.py) and surface-keeping mesh upsampling (training/evaluation/mesh.py)."""

import numpy as np
import pytest
import torch

from engine.geometry import rotation_from_euler
from training.evaluation.mesh import levels_for_spacing, mean_edge_length, upsample
from training.evaluation.metrics import landmark_errors, nme
from training.evaluation.nmlc import ArrayVertices, MeshVertices, nmlc, nmlc_from_arrays, normalised_spacing


def grid_mesh(n: int = 12, size: float = 10.0):
    """A bumpy n x n vertex height-field "face" in the head frame (z towards the viewer), cm."""
    xs = np.linspace(-size / 2, size / 2, n)
    x, y = np.meshgrid(xs, xs)
    z = 2.0 * np.exp(-(x**2 + y**2) / 20.0) + 0.1 * np.sin(x) * np.cos(y)
    v = np.stack([x.ravel(), y.ravel(), z.ravel()], 1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    f = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
    return v, f


def random_views(n_images: int, rng: np.random.Generator):
    """Per-image 3x4 pixel projection matrices K [R | t] of a 640x480 camera looking at the head."""
    k = np.array([[800.0, 0, 320], [0, 800.0, 240], [0, 0, 1]])
    mats = []
    for _ in range(n_images):
        r = rotation_from_euler(*rng.uniform([-40, -20, -15], [40, 20, 15]))
        t = np.array([*rng.uniform(-3, 3, 2), rng.uniform(45, 70)])
        mats.append(k @ np.hstack([r, t[:, None]]))
    return np.stack(mats)


def project(p, pts):
    h = pts @ p[:, :3].T + p[:, 3]
    return h[:, :2] / h[:, 2:]


def boxes_of(points_2d):
    return np.concatenate([points_2d.min(1), points_2d.max(1)], 1)


# ---------------------------------------------------------------- mesh upsampling
def test_upsampling_keeps_surface_and_halves_spacing():
    v, f = grid_mesh(8)
    spacing = [mean_edge_length(v, f)]
    for level in (1, 2, 3):
        up = upsample(f, len(v), level)
        dense = up.apply(v)
        # New vertices are convex combinations of their original triangle's corners ...
        assert np.all(up.barycentric >= -1e-7) and np.allclose(up.barycentric.sum(1), 1.0, atol=1e-6)
        corners = v[f[up.face_index]]
        np.testing.assert_allclose(dense, np.einsum("mkd,mk->md", corners, up.barycentric), atol=1e-5)
        # ... so they lie on the original triangles: zero distance to the triangle's plane.
        n = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        assert np.abs(((dense - corners[:, 0]) * n).sum(1)).max() < 1e-5
        np.testing.assert_allclose(dense[: len(v)], v, atol=1e-6)  # originals unchanged
        spacing.append(mean_edge_length(dense, up.faces))
        assert up.faces.shape[0] == len(f) * 4**level
    ratios = np.array(spacing[:-1]) / np.array(spacing[1:])
    assert np.all((ratios > 1.8) & (ratios < 2.2)), ratios
    assert levels_for_spacing(v, f, spacing[0] / 3.5) == 2


def test_upsampling_is_topology_only_and_works_on_torch():
    v, f = grid_mesh(6)
    up = upsample(f, len(v), 2)
    batch = np.stack([v, v * 1.1 + 1.0])
    dense_np = up.apply(batch)
    dense_t = up.apply(torch.as_tensor(batch, dtype=torch.float32))
    np.testing.assert_allclose(dense_t.numpy(), dense_np, atol=1e-4)
    np.testing.assert_allclose(dense_np[1], dense_np[0] * 1.1 + 1.0, atol=1e-5)  # affine-equivariant
    idx = np.array([3, 40, len(v) + 7])
    np.testing.assert_allclose(up.apply(v, idx), dense_np[0][idx], atol=1e-6)


# ---------------------------------------------------------------- NMLC
def test_nmlc_equals_nme_on_the_defining_vertices_and_picks_them():
    rng = np.random.default_rng(0)
    n_img, n_v = 40, 600
    verts = rng.uniform(0, 400, (n_img, n_v, 2)).astype(np.float32)
    defining = rng.choice(n_v, 68, replace=False)
    gt = verts[:, defining]
    boxes = boxes_of(gt)
    res = nmlc_from_arrays(gt.copy(), verts, boxes, k=16)
    assert res.value == pytest.approx(nme(gt, gt, boxes), abs=1e-6)
    np.testing.assert_array_equal(res.vertices, defining)
    assert res.certified.all()


def test_nmlc_removes_constant_offset_on_upsampled_mesh():
    """The model's landmark is a fixed surface point off the GT vertex (an edge midpoint): NME sees
    the definition bias, NMLC on the once-upsampled mesh (which contains those midpoints) removes it."""
    rng = np.random.default_rng(1)
    v, f = grid_mesh(14)
    n_img = 30
    defining = rng.choice(len(v), 68, replace=False)
    # Each landmark's "own definition": the midpoint of an edge leaving its defining vertex.
    edges = {tuple(sorted(e)) for tri in f for e in ((tri[0], tri[1]), (tri[1], tri[2]), (tri[2], tri[0]))}
    neighbour = {a: b for a, b in sorted(edges)} | {b: a for a, b in sorted(edges)}
    other = np.array([neighbour[d] for d in defining])
    meshes = np.stack([v + rng.normal(0, 0.15, v.shape) for _ in range(n_img)]).astype(np.float32)
    proj = random_views(n_img, rng)
    gt = np.stack([project(proj[i], meshes[i, defining]) for i in range(n_img)])
    own = np.stack([project(proj[i], (meshes[i, defining] + meshes[i, other]) / 2) for i in range(n_img)])
    pred = own + rng.normal(0, 0.05, own.shape)  # tiny noise: the bias dominates
    boxes = boxes_of(np.stack([project(proj[i], meshes[i]) for i in range(n_img)]))
    biased = nme(pred, gt, boxes)

    up = upsample(f, len(v), 1)
    res = nmlc(pred, boxes, MeshVertices(meshes, proj, up), k=64)
    assert res.certified.all()
    assert res.value < 0.1 * biased, (res.value, biased)
    # The chosen dense vertices are exactly those midpoints.
    chosen = up.apply(meshes[0], res.vertices)
    np.testing.assert_allclose(chosen, (meshes[0, defining] + meshes[0, other]) / 2, atol=1e-4)
    spacing = normalised_spacing(MeshVertices(meshes, proj, up), up.faces, boxes)
    assert 0 < spacing < 100


def test_nmlc_le_nme_random_and_matches_brute_force():
    rng = np.random.default_rng(2)
    n_img, n_v = 25, 900
    base = rng.uniform(0, 300, (n_v, 2))
    verts = (base + rng.normal(0, 4, (n_img, n_v, 2))).astype(np.float32)
    defining = rng.choice(n_v, 68, replace=False)
    pred = verts[:, defining] + rng.normal(0, 12, (n_img, 68, 2))
    boxes = boxes_of(verts)
    # Small k forces the certificate check and the retry with more candidates.
    res = nmlc_from_arrays(pred, verts, boxes, k=2, max_k=n_v)
    assert res.certified.all()
    scale = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    full = (np.linalg.norm(pred[:, :, None] - verts[:, None], axis=-1) / scale[:, None, None]).mean(0)
    np.testing.assert_array_equal(res.vertices, full.argmin(1))
    assert res.value == pytest.approx(100 * full.min(1).mean(), rel=1e-5)
    assert res.value <= nme(pred, verts[:, defining], boxes) + 1e-9
    np.testing.assert_allclose(res.errors, landmark_errors(pred, verts[:, res.vertices], boxes), atol=1e-6)
    # Per-region and per-category reports come with it.
    rep = res.report({"group": ["a", "b"] * 12 + ["a"]})
    assert set(rep["regions"]) == {"full", "contour", "brows", "nose", "eyes", "mouth"}
    assert set(rep["categories"]["group"]) == {"a", "b"}


def test_nmlc_vertex_mask_and_bad_input():
    rng = np.random.default_rng(3)
    verts = rng.uniform(0, 100, (5, 50, 2)).astype(np.float32)
    pred = verts[:, :68 % 50 + 10]  # 28 landmarks on vertices 0..27
    boxes = boxes_of(verts)
    mask = np.ones(50, bool)
    mask[:28] = False
    res = nmlc(pred, boxes, ArrayVertices(verts), vertex_mask=mask, k=4)
    assert (res.vertices >= 28).all() and res.value > 0
    with pytest.raises(ValueError, match="NaN"):
        nmlc(np.full_like(pred, np.nan), boxes, ArrayVertices(verts))
    with pytest.raises(ValueError, match="ground-truth meshes"):
        nmlc(pred[:3], boxes[:3], ArrayVertices(verts))
