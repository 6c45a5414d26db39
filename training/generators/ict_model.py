"""The ICT FaceKit morphable head (shared/assets/ict_facekit/README.md): geometry, UVs, materials."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from engine.assets import shared_asset

# Materials (index into the npz's material_names) that are transparent helper meshes: never drawn.
HELPER_MATERIALS = ("M_LacrimalFluid", "M_EyeBlend", "M_EyeOcclusion", "M_EyeLashes")


@dataclass
class ICTModel:
    neutral: np.ndarray  # (V,3) f32 cm
    identity_basis: np.ndarray  # (100,V,3) f32
    expression_basis: np.ndarray  # (53,V,3) f32
    expression_names: list[str]
    triangles: np.ndarray  # (F,3) all triangles
    uv: np.ndarray  # (T,2)
    uv_triangles: np.ndarray  # (F,3)
    triangle_material: np.ndarray  # (F,) int
    material_names: list[str]
    landmarks68: np.ndarray  # (68,) vertex indices
    masks: dict[str, np.ndarray]  # region -> (V,) bool

    @property
    def num_vertices(self) -> int:
        return len(self.neutral)

    def expression_index(self, name: str) -> int:
        return self.expression_names.index(name)

    def vertices(self, identity_weights: np.ndarray, expression_weights: np.ndarray | None = None) -> np.ndarray:
        """(V,3) f32 mesh, head frame, cm."""
        v = self.neutral + np.tensordot(identity_weights.astype(np.float32), self.identity_basis, 1)
        if expression_weights is not None and np.any(expression_weights):
            nz = np.flatnonzero(expression_weights)  # expressions are sparse: only sum the used ones
            v = v + np.tensordot(expression_weights[nz].astype(np.float32), self.expression_basis[nz], 1)
        return v

    def material_mask(self, *names: str) -> np.ndarray:
        ids = [self.material_names.index(n) for n in names]
        return np.isin(self.triangle_material, ids)

    def drawn_triangles(self) -> np.ndarray:
        """(F,) bool: triangles that are rendered (skin, back of head, sockets, mouth, teeth, eyes)."""
        return ~self.material_mask(*HELPER_MATERIALS)


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals; counter-clockwise triangles give outward normals."""
    v = vertices[triangles]
    fn = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    n = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(n, triangles[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


@functools.lru_cache(maxsize=1)
def load_ict_model() -> ICTModel:
    """Loads ``shared/assets/ict_facekit/ict_face_model.npz`` once per process (float16 -> float32)."""
    path = shared_asset("ict_facekit", "ict_face_model.npz")
    d = np.load(path)
    names = [str(n) for n in d["region_names"]]
    return ICTModel(
        neutral=d["neutral"].astype(np.float32),
        identity_basis=d["identity_basis"].astype(np.float32),
        expression_basis=d["expression_basis"].astype(np.float32),
        expression_names=[str(n) for n in d["expression_names"]],
        triangles=d["triangles"].astype(np.int32),
        uv=d["uv"].astype(np.float32),
        uv_triangles=d["uv_triangles"].astype(np.int32),
        triangle_material=d["polygon_material"][d["triangle_polygon"]].astype(np.int32),
        material_names=[str(n) for n in d["material_names"]],
        landmarks68=d["landmarks68"].astype(np.int64),
        masks={n: d[f"mask_{n}"] for n in names},
    )
