"""Occlusion masks: the landmark normals template and a thin wrapper over the shared mask function.

The mask itself is ``engine.geometry.visibility_mask`` - the ONE function the training loss uses too;
this module only supplies its normals template (ICT FaceKit neutral mesh) and camera plumbing.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from engine.assets import shared_asset
from engine.geometry import visibility_mask


def _skin_triangles(model: np.lib.npyio.NpzFile) -> np.ndarray:
    """Triangles of the skin polygons (``face`` and ``head_neck``), not the inward-facing sockets."""
    names = [str(n) for n in model["region_names"]]
    ranges = model["region_polygon_range"]
    poly = model["triangle_polygon"]
    keep = np.zeros(len(poly), dtype=bool)
    for region in ("face", "head_neck"):
        a, b = ranges[names.index(region)]
        keep |= (poly >= a) & (poly < b)
    return model["triangles"][keep]


SMOOTHING_CM = 1.0  # Gaussian radius over which skin normals are pooled around each landmark


@lru_cache(maxsize=1)
def normals_template() -> np.ndarray:
    """(68, 3) f32 unit normals of the ICT neutral mesh at the 68 landmark vertices, head frame.

    Area-weighted normals of the skin triangles (``face`` + ``head_neck``; the unnormalised cross
    product of a counter-clockwise triangle is twice its area times its outward normal). WHY pooled
    over a Gaussian neighbourhood (sigma ``SMOOTHING_CM``) rather than the one-ring: the one-ring
    normal at eyelid and inner-lip vertices follows millimetre-scale creases (it points up/down into
    the eye or mouth), which would mask those landmarks in a frontal view; at 1 cm the template
    describes the face surface, and the jaw contour keeps its sideways normal. The face looks toward +Z.
    """
    model = np.load(shared_asset("ict_facekit", "ict_face_model.npz"))
    verts = model["neutral"].astype(np.float64)
    tris = _skin_triangles(model)
    a, b, c = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    area_normals = np.cross(b - a, c - a)
    centroids = (a + b + c) / 3
    landmarks = verts[model["landmarks68"]]
    dist = np.linalg.norm(centroids[None] - landmarks[:, None], axis=2)  # (68, T)
    weights = np.exp(-0.5 * (dist / SMOOTHING_CM) ** 2) * (dist < 3 * SMOOTHING_CM)
    n = weights @ area_normals
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    out = n.astype(np.float32)
    out.setflags(write=False)
    return out


def landmark_visibility(rotation: np.ndarray, normals: np.ndarray | None = None) -> np.ndarray:
    """(..., 68) bool for head -> camera rotations (..., 3, 3), via ``engine.geometry.visibility_mask``."""
    return visibility_mask(np.asarray(rotation, dtype=np.float32), normals_template() if normals is None else normals)


def camera_visibility(cameras: list) -> np.ndarray:
    """(V, 68) bool for a list of cameras with a ``.R`` (head -> camera) attribute."""
    return landmark_visibility(np.stack([c.R for c in cameras]))
