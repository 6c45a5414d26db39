"""Per-vertex ambient occlusion by rasterization: depth maps of the mesh from many directions.

A vertex is lit by the sky in direction ``d`` when nothing lies in front of it as seen from far away
along ``d``; AO is the cosine-weighted fraction of the hemisphere above its normal that it sees. Done
once on a neutral mesh (~1-2 s on llvmpipe), it darkens creases, nostrils, ears and the eye sockets.
"""

from __future__ import annotations

import numpy as np

from training.render.rasterizer import Rasterizer


def fibonacci_sphere(n: int) -> np.ndarray:
    """(n,3) nearly uniform unit vectors."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


def vertex_ambient_occlusion(
    vertices: np.ndarray,
    normals: np.ndarray,
    triangles: np.ndarray,
    directions: int = 48,
    resolution: int = 256,
    raster: Rasterizer | None = None,
) -> np.ndarray:
    """(V,) in [0,1]: 1 = fully open to the sky, 0 = fully occluded."""
    raster = raster or Rasterizer.shared()
    v = np.asarray(vertices, np.float64)
    centre = 0.5 * (v.min(0) + v.max(0))
    extent = float(np.linalg.norm(v.max(0) - v.min(0)))
    dist = 20.0 * extent  # far away: nearly orthographic
    f = resolution * dist / (extent * 1.05)
    c = (resolution - 1) / 2.0
    K = np.array([[f, 0, c], [0, f, c], [0, 0, 1.0]])
    tol = 2.5 * extent / resolution  # about two pixels of depth slope
    mesh = raster.mesh(np.zeros((len(v), 2)), np.zeros((len(v), 3)), np.zeros((len(v), 2)), triangles)
    seen = np.zeros(len(v))
    total = np.zeros(len(v))
    try:
        for d in fibonacci_sphere(directions):
            eye = centre + dist * d
            z = -d
            x = np.cross(z, [0.0, 1.0, 0.0] if abs(d[1]) < 0.9 else [1.0, 0.0, 0.0])
            x /= np.linalg.norm(x)
            R = np.stack([x, np.cross(z, x), z])
            cam = (v - eye) @ R.T
            mesh.set_geometry(cam, normals @ R.T)
            depth = raster.draw(mesh, K, resolution, resolution, np.zeros((1, 1, 3), np.uint8), supersample=1).depth
            px = np.clip(np.round(cam[:, :2] / cam[:, 2:3] * f + c).astype(int), 0, resolution - 1)
            visible = cam[:, 2] <= depth[px[:, 1], px[:, 0]] + tol
            w = np.clip(normals @ d, 0.0, None)
            seen += w * visible
            total += w
    finally:
        mesh.release()
    return np.clip(seen / np.maximum(total, 1e-9), 0.0, 1.0)
