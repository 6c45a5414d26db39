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


def test_skin_test_rejects_hair_shadow_and_eyes():
    """Texels far from the frame's own cheek colour (hair, ear shadow, sclera) get no weight."""
    from training.textures import capture_regions, skin_weight

    reg = capture_regions(TEXTURE_SIZE)
    rng = np.random.default_rng(0)
    skin = np.array([0.78, 0.58, 0.48])
    colour = np.clip(skin + rng.normal(0, 0.01, (TEXTURE_SIZE, TEXTURE_SIZE, 3)), 0, 1)
    hair = reg["reference"].copy()
    hair[:, TEXTURE_SIZE // 2 - 40 :] = False  # a dark-brown patch over one cheek (a minority of the skin)
    colour[hair] = (0.12, 0.08, 0.06)
    colour[reg["eyes"]] = (0.9, 0.9, 0.88)  # a real eye's white mapped onto the lids
    accept, base = skin_weight(colour, np.ones((TEXTURE_SIZE, TEXTURE_SIZE)))
    clean = reg["reference"] & ~hair
    assert accept[clean].mean() > 0.95
    assert accept[hair].max() == 0.0 and accept[reg["eyes"]].mean() < 0.05
    assert np.allclose(base, skin, atol=0.03)


def test_combined_captures_vote_out_one_bad_frame():
    from training.textures import combine_captures

    good = np.full((8, 8, 3), 0.6)
    bad = good.copy()
    bad[:4] = 0.1  # e.g. a hand or a shadow in one frame
    w = np.ones((8, 8))
    colour, weight = combine_captures([(good, w), (good, w), (bad, w), (good, w)])
    assert np.abs(colour - 0.6).max() < 0.02 and weight.min() == 1.0


def test_hair_clothing_neck_fade_and_occlusion(gen):
    """Materials per corner: hair on the scalp but not the ears, the neck's cut fades out, AO in creases."""
    m, lay = gen.model, gen.layout
    ident = next(i for i in map(gen.identity, range(50)) if i.params["hairline_shift_cm"] < 10)
    alb, mat, hair = gen._albedo(ident)
    top = m.neutral[lay.corner_vertex, 1] > 13.0
    assert hair[top, 2].min() > 0.9  # the crown is covered
    ear = lay.hair_allow[lay.corner_vertex] < 0.05
    assert ear.any() and hair[ear, 2].max() < 0.05
    bottom = m.neutral[lay.corner_vertex, 1] < -19.0
    assert mat[bottom, 3].max() < 0.1 and mat[~bottom, 3].max() == 1.0
    ao = gen.ao
    assert ao.min() >= 0 and ao.max() <= 1
    assert ao[m.landmarks68[30]] > 0.9 > 0.7 > ao[m.masks["mouth_socket"]].mean()  # nose tip open, mouth closed in
    hm = gen.hair_map(ident)
    assert hm.shape[2] == 4 and hm.dtype == np.uint8 and hm[..., 3].std() > 10  # strands, not a flat cap
