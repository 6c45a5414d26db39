"""The moderngl rasterizer on its own: projection matches engine.geometry.project, depth, coverage."""

import numpy as np

from engine.geometry import project
from training.render import Rasterizer


def _quad(raster, z, half):
    pos = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]], float)
    n = np.tile([0.0, 0.0, -1.0], (4, 1))
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    mesh = raster.mesh(uv, np.full((4, 3), 0.5), np.zeros((4, 2)), np.array([[0, 1, 2], [0, 2, 3]]))
    mesh.set_geometry(pos, n)
    return mesh, pos


def test_projection_depth_and_principal_point():
    raster = Rasterizer.shared()
    K = np.array([[80.0, 0, 20.3], [0, 80.0, 41.7], [0, 0, 1]])  # off-centre principal point
    mesh, pos = _quad(raster, 50.0, 10.0)
    r = raster.draw(mesh, K, 64, 80, np.zeros((1, 1, 3), np.uint8), supersample=1)
    corners = project(pos, K)  # x 4.3..36.3, y 25.7..57.7
    ys, xs = np.nonzero(r.alpha > 0.5)
    assert abs(xs.min() - np.ceil(corners[:, 0].min())) <= 1 and abs(xs.max() - np.floor(corners[:, 0].max())) <= 1
    assert abs(ys.min() - np.ceil(corners[:, 1].min())) <= 1 and abs(ys.max() - np.floor(corners[:, 1].max())) <= 1
    assert np.allclose(r.depth[r.alpha > 0.5], 50.0, atol=1e-3)
    assert np.isinf(r.depth[0, 63])
    mesh.release()


def test_depth_test_and_antialiasing():
    raster = Rasterizer.shared()
    K = np.array([[60.0, 0, 31.5], [0, 60.0, 31.5], [0, 0, 1]])
    # A big far quad drawn after a small near one: the depth test must keep the near one in front.
    near = np.array([[-2, -2, 30], [2, -2, 30], [2, 2, 30], [-2, 2, 30]], float)
    far = np.array([[-10, 0, 60], [0, -10, 60], [10, 0, 60], [0, 10, 60]], float)  # a diamond: slanted edges
    pos = np.vstack([near, far])
    colour = np.vstack([np.full((4, 3), 0.9), np.full((4, 3), 0.1)])
    idx = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    mesh = raster.mesh(np.zeros((8, 2)), colour, np.zeros((8, 2)), idx)
    mesh.set_geometry(pos, np.tile([0.0, 0.0, -1.0], (8, 1)))
    r = raster.draw(mesh, K, 64, 64, np.zeros((1, 1, 3), np.uint8), supersample=2)
    assert abs(r.depth[32, 32] - 30.0) < 1e-3 and abs(r.depth[32, 25] - 60.0) < 1e-3
    assert r.color[32, 32].mean() > r.color[32, 25].mean() + 0.2
    edge = r.alpha[(r.alpha > 0) & (r.alpha < 1)]
    assert edge.size > 0  # supersampling leaves fractional coverage on the silhouette
    mesh.release()


def test_alpha_hair_map_and_occlusion_attributes():
    """Per-corner alpha gives premultiplied partial coverage; hair weight 1 shows the hair map."""
    raster = Rasterizer.shared()
    K = np.array([[60.0, 0, 31.5], [0, 60.0, 31.5], [0, 0, 1]])
    pos = np.array([[-10, -10, 40], [10, -10, 40], [10, 10, 40], [-10, 10, 40]], float)
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    idx = np.array([[0, 1, 2], [0, 2, 3]])
    hair_map = np.zeros((4, 4, 4), np.uint8)
    hair_map[..., 2] = 255  # blue hair, full strand density
    hair_map[..., 3] = 255
    for alpha, hair_w, ao in [(1.0, 0.0, 1.0), (0.5, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.3)]:
        mat = np.tile([0.0, 0.0, ao, alpha], (4, 1))
        hair = np.hstack([uv, np.full((4, 1), hair_w)])
        mesh = raster.mesh(uv, np.full((4, 3), 0.5), mat, idx, hair=hair)
        mesh.set_geometry(pos, np.tile([0.0, 0.0, -1.0], (4, 1)))
        r = raster.draw(mesh, K, 64, 64, np.zeros((1, 1, 3), np.uint8), supersample=1, hair=hair_map,
                        hair_key=("blue",))
        c, a = r.color[32, 32], r.alpha[32, 32]
        if alpha < 1:
            assert abs(a - 0.5) < 0.01 and np.all(c <= 0.5 + 1e-3)  # premultiplied
        elif hair_w:
            assert c[2] > c[0] + 0.3
        elif ao < 1:
            assert c.mean() < plain.mean() - 0.1  # occluded: less ambient and diffuse light
        else:
            plain = c
        mesh.release()
