"""The embedded ICT head generator with a texture bank built here from a real clip."""

import numpy as np
import pytest
from scipy import ndimage

from engine.geometry import visibility_mask
from training.cameras import AugmentedCameraSpace, rig_camera
from training.generators import Generator
from training.generators.ict_head import ICTHeadGenerator
from training.textures import HELD_OUT_CLIPS, TEXTURE_SIZE, build_bank, texture_clips


@pytest.fixture(scope="module")
def bank(shared):
    clip = shared / "assets" / "videos" / "liveportrait_d18.mp4"
    return build_bank(clips=[clip], frames_per_clip=1, out=None)


@pytest.fixture(scope="module")
def gen(bank):
    return ICTHeadGenerator(bank=bank)


def test_texture_bank_from_a_real_clip(bank):
    assert len(bank) == 1 and bank.textures.shape == (1, TEXTURE_SIZE, TEXTURE_SIZE, 3)
    assert bank.sources[0].startswith("liveportrait_d18.mp4:")
    tex = bank.textures[0].astype(float)
    assert tex.std() > 10  # real detail, not a flat colour
    r, g, b = bank.base_colours[0]
    assert r > g > b  # skin: red > green > blue
    assert len(bank.backgrounds) > 0


def test_held_out_clips_are_excluded():
    names = [c.name for c in texture_clips()]
    assert not set(HELD_OUT_CLIPS) & set(names) and len(names) == 10
    with pytest.raises(ValueError, match="held out"):
        build_bank(clips=[texture_clips()[0].parent / HELD_OUT_CLIPS[0]], out=None)


def test_renders_are_deterministic_by_seed(gen):
    assert isinstance(gen, Generator)
    cam = AugmentedCameraSpace().sample(np.random.default_rng(5), 96)
    a = gen.render(gen.identity(11), cam)
    b = gen.render(gen.identity(11), cam)
    c = gen.render(gen.identity(12), cam)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.landmarks_head, b.landmarks_head)
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (96, 96, 3) and a.image.dtype == np.uint8


def test_landmarks_fall_on_the_rendered_face(gen):
    from training.generators.ict_model import load_ict_model, vertex_normals

    m = load_ict_model()
    normals = vertex_normals(m.neutral, m.triangles)[m.landmarks68]
    for az, el in [(0, 0), (40, 10), (-60, -10)]:
        r = gen.render(gen.identity(3), rig_camera(az, el, 128))
        assert np.allclose(r.landmarks_2d, r.camera.project(r.landmarks_head))
        vis = visibility_mask(r.camera.R, normals)
        px = np.round(r.landmarks_2d[vis]).astype(int)
        # contour points can sit on the silhouette: allow the 1-pixel neighbourhood there
        near_fg = ndimage.binary_dilation(r.mask, iterations=1)
        assert near_fg[px[:, 1], px[:, 0]].all() and r.mask[px[:, 1], px[:, 0]].mean() > 0.9
        # visible landmarks are on the visible surface: rendered depth matches their camera depth
        z = r.camera.to_camera(r.landmarks_head[vis])[:, 2]
        assert np.median(np.abs(r.depth[px[:, 1], px[:, 0]] - z)) < 1.0
        assert r.vertices_cam.shape == (m.num_vertices, 3) and r.faces.shape[1] == 3


def test_frontal_render_shows_subjects_right_eye_on_image_left(gen):
    r = gen.render(gen.identity(0), rig_camera(0, 0, 128))
    assert r.landmarks_2d[36, 0] < r.landmarks_2d[45, 0]
    assert r.mask[64, 64]  # the face is in the middle
    assert not r.mask[2, 2]
