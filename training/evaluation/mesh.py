"""Mesh upsampling for NMLC: midpoint subdivision that keeps the surface.

NMLC (docs/method.md section 5) picks one ground-truth mesh vertex per landmark; the mesh must be dense
enough that vertex spacing is far below the errors measured. Midpoint subdivision splits every triangle
into four, halving edge lengths each level, and every new vertex lies on an original triangle. That last
property matters: it lets us store the dense mesh as *(original face, barycentric weights)* per vertex,
computed once from the topology, and rebuild any image's dense mesh from its own coarse vertices with a
3-term weighted sum. Loop subdivision would smooth the surface away from the annotated one, so we do not
use it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SurfaceUpsampling:
    """A subdivided mesh expressed on the original triangles.

    ``face_index[v]`` is the original face that dense vertex ``v`` lies on and ``barycentric[v]`` its
    weights over that face's three corners; ``faces`` is the dense triangle list.
    """

    original_faces: np.ndarray  # (F0, 3) int64
    face_index: np.ndarray  # (Vn,) int64
    barycentric: np.ndarray  # (Vn, 3) float32
    faces: np.ndarray  # (Fn, 3) int64
    levels: int

    @property
    def num_vertices(self) -> int:
        return int(self.face_index.shape[0])

    def corner_indices(self, index: np.ndarray | None = None) -> np.ndarray:
        """(M, 3) original vertex ids whose weighted sum gives dense vertices ``index`` (all if None)."""
        fi = self.face_index if index is None else self.face_index[index]
        return self.original_faces[fi]

    def weights(self, index: np.ndarray | None = None) -> np.ndarray:
        return self.barycentric if index is None else self.barycentric[index]

    def apply(self, vertices, index: np.ndarray | None = None):
        """Dense vertices from coarse ones: (..., V0, D) -> (..., M, D); numpy or torch."""
        corners = self.corner_indices(index)
        w = self.weights(index)
        if isinstance(vertices, np.ndarray):
            gathered = vertices[..., corners, :]  # (..., M, 3, D)
            return np.einsum("...mkd,mk->...md", gathered, w.astype(vertices.dtype, copy=False))
        import torch

        c = torch.as_tensor(corners, device=vertices.device)
        wt = torch.as_tensor(w, device=vertices.device, dtype=vertices.dtype)
        gathered = vertices[..., c, :]
        return (gathered * wt[..., None]).sum(-2)


def interpolation_matrix(up: SurfaceUpsampling, index: np.ndarray | None = None):
    """Torch sparse CSR (M, V0) with 3 weights per row: ``dense = A @ coarse``.

    A sparse matmul is ~10x faster than gathering corners on CPU, and because the weights sum to 1 it
    also interpolates homogeneous projected coordinates exactly (used by nmlc.MeshVertices).
    """
    import warnings

    import torch

    corners = up.corner_indices(index)
    m = corners.shape[0]
    crow = torch.arange(0, 3 * m + 1, 3, dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            crow,
            torch.as_tensor(corners.reshape(-1)),
            torch.as_tensor(up.weights(index).reshape(-1), dtype=torch.float32),
            size=(m, int(up.original_faces.max()) + 1),
        )


def identity_upsampling(faces: np.ndarray, num_vertices: int) -> SurfaceUpsampling:
    """Level 0: every original vertex expressed on one face that contains it."""
    faces = np.asarray(faces, dtype=np.int64)
    flat = faces.reshape(-1)
    present, first = np.unique(flat, return_index=True)
    if present.shape[0] != num_vertices:
        # Vertices no face uses cannot be expressed on the surface; callers should drop them first.
        raise ValueError(
            f"mesh has {num_vertices} vertices but faces reference {present.shape[0]}; "
            "remove unreferenced vertices (e.g. with compact_mesh) before upsampling"
        )
    face_index = first // 3
    bary = np.zeros((num_vertices, 3), dtype=np.float32)
    bary[np.arange(num_vertices), first % 3] = 1.0
    return SurfaceUpsampling(faces, face_index, bary, faces.copy(), 0)


def upsample(faces: np.ndarray, num_vertices: int, levels: int) -> SurfaceUpsampling:
    """Midpoint-subdivide ``levels`` times (topology only; apply to any vertex set of this topology)."""
    faces0 = np.asarray(faces, dtype=np.int64)
    if faces0.ndim != 2 or faces0.shape[1] != 3:
        raise ValueError(f"faces must be (F, 3) triangles, got {faces0.shape}")
    base = identity_upsampling(faces0, num_vertices)
    cur_faces = faces0
    parent = np.arange(len(faces0))
    # Barycentric weights of each current face's corners w.r.t. its parent (original) face.
    corner_bary = np.broadcast_to(np.eye(3, dtype=np.float64), (len(faces0), 3, 3)).copy()
    nv = num_vertices
    for _ in range(levels):
        edges = np.concatenate([cur_faces[:, [0, 1]], cur_faces[:, [1, 2]], cur_faces[:, [2, 0]]])
        edges.sort(axis=1)
        uniq, inverse = np.unique(edges, axis=0, return_inverse=True)
        inverse = inverse.reshape(3, -1)  # edge id of (01, 12, 20) for each face
        mid = nv + inverse  # new vertex ids
        m01, m12, m20 = mid
        c0, c1, c2 = cur_faces.T
        cur_faces = np.concatenate(
            [
                np.stack([c0, m01, m20], 1),
                np.stack([m01, c1, m12], 1),
                np.stack([m20, m12, c2], 1),
                np.stack([m01, m12, m20], 1),
            ]
        )
        b0, b1, b2 = corner_bary[:, 0], corner_bary[:, 1], corner_bary[:, 2]
        b01, b12, b20 = (b0 + b1) / 2, (b1 + b2) / 2, (b2 + b0) / 2
        corner_bary = np.concatenate(
            [
                np.stack([b0, b01, b20], 1),
                np.stack([b01, b1, b12], 1),
                np.stack([b20, b12, b2], 1),
                np.stack([b01, b12, b20], 1),
            ]
        )
        parent = np.tile(parent, 4)
        nv += len(uniq)
    # Each dense vertex: take its first occurrence as a face corner.
    flat = cur_faces.reshape(-1)
    present, first = np.unique(flat, return_index=True)
    assert present.shape[0] == nv, "subdivision produced unreferenced vertices"
    face_of = first // 3
    corner_of = first % 3
    face_index = parent[face_of]
    bary = corner_bary[face_of, corner_of].astype(np.float32)
    face_index[:num_vertices] = base.face_index  # keep originals exact
    bary[:num_vertices] = base.barycentric
    return SurfaceUpsampling(faces0, face_index, bary, cur_faces, levels)


def mean_edge_length(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Mean length of the unique edges (in the vertices' units)."""
    faces = np.asarray(faces, dtype=np.int64)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    v = np.asarray(vertices, dtype=np.float64)
    return float(np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1).mean())


def levels_for_spacing(
    vertices: np.ndarray, faces: np.ndarray, target_spacing: float, max_vertices: int = 2_000_000
) -> int:
    """Fewest midpoint levels whose mean edge length is <= ``target_spacing`` (edges halve per level).

    Stops early (with a warning) when the next level would exceed ``max_vertices`` (about 4x per level).
    """
    spacing = mean_edge_length(vertices, faces)
    n_v, n_f = len(vertices), len(faces)
    levels = 0
    while spacing > target_spacing:
        n_e = n_f * 3 // 2
        if n_v + n_e > max_vertices:
            log.warning(
                "stopping at %d levels (spacing %.4g > target %.4g): next level exceeds %d vertices",
                levels, spacing, target_spacing, max_vertices,
            )
            break
        n_v, n_f, spacing, levels = n_v + n_e, n_f * 4, spacing / 2, levels + 1
    return levels


def compact_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop vertices no face uses. Returns (vertices, faces, kept original ids)."""
    faces = np.asarray(faces, dtype=np.int64)
    kept = np.unique(faces)
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    return np.asarray(vertices)[kept], remap[faces], kept
