"""One-Euro smoothing: less jitter on a still face, bounded lag on a moving one, rotations stay rotations,
and per-track state (a new track id starts fresh)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from engine.frame import Face, Frame
from engine.geometry import FRONTAL, euler_from_rotation, rotation_from_euler
from plugins.trackers import FaceSmoother, OneEuroFilter, RotationFilter, frame_timestamp, orthonormalize

FPS = 25.0
FACE_SIZE = 100.0  # pixels


def _template(rng: np.random.Generator) -> np.ndarray:
    """68 points spanning a FACE_SIZE x FACE_SIZE box."""
    pts = rng.uniform(0, FACE_SIZE, (68, 2))
    pts[0], pts[1] = (0, 0), (FACE_SIZE, FACE_SIZE)
    return pts


def jitter(seq: np.ndarray) -> float:
    """Mean frame-to-frame landmark motion, in face sizes."""
    return float(np.mean(np.linalg.norm(np.diff(seq, axis=0), axis=-1)) / FACE_SIZE)


def _smooth(landmarks: np.ndarray) -> np.ndarray:
    smoother = FaceSmoother()
    out = []
    for i, lm in enumerate(landmarks):
        face = Face(box=np.zeros(4, np.float32), score=1.0, keypoints=np.zeros((5, 2)), track_id=1, landmarks_2d=lm)
        out.append(smoother.apply(face, i / FPS).landmarks_2d)
    return np.stack(out)


def test_still_face_jitter_drops():
    """1 px noise (1 % of the face) on a still face: jitter measured before and after smoothing."""
    rng = np.random.default_rng(0)
    noisy = _template(rng) + 200 + rng.normal(0, 1.0, (150, 68, 2))
    smoothed = _smooth(noisy)
    before, after = jitter(noisy[25:]), jitter(smoothed[25:])  # skip the filter's first second
    assert after < 0.3 * before, (before, after)


def test_moving_face_lags_little():
    """A face moving at one face size per second: the filter trails the truth by under 3 % of the face
    (with beta = 0, a plain low-pass at the same min_cutoff, the lag is several times larger)."""
    rng = np.random.default_rng(1)
    template = _template(rng)
    truth = np.stack([template + [200 + FACE_SIZE * i / FPS, 200] for i in range(150)])
    noisy = truth + rng.normal(0, 1.0, truth.shape)
    lag = np.mean(np.linalg.norm(_smooth(noisy)[50:] - truth[50:], axis=-1)) / FACE_SIZE
    plain = OneEuroFilter(min_cutoff=FaceSmoother().landmarks.min_cutoff, beta=0.0)
    plain_out = np.stack([plain(x, i / FPS) for i, x in enumerate(noisy)])
    lag_plain = np.mean(np.linalg.norm(plain_out[50:] - truth[50:], axis=-1)) / FACE_SIZE
    assert lag < 0.03, lag
    assert lag_plain > 5 * lag, (lag, lag_plain)


def test_filter_any_shape_and_time_rules():
    f = OneEuroFilter(min_cutoff=1.0, beta=0.1)
    first = f(np.ones((2, 3, 4)), 0.0)
    np.testing.assert_array_equal(first, np.ones((2, 3, 4)))  # first sample passes through
    second = f(np.zeros((2, 3, 4)), 0.04)
    assert np.all((second > 0) & (second < 1))
    np.testing.assert_array_equal(f(np.full((2, 3, 4), 5.0), 0.04), second)  # same time: no new output
    np.testing.assert_array_equal(f(np.full((2, 3, 4), 7.0), 0.0), np.full((2, 3, 4), 7.0))  # time back: restart
    np.testing.assert_array_equal(f(np.full(3, 2.0), 1.0), np.full(3, 2.0))  # new shape: restart
    with pytest.raises(ValueError):
        OneEuroFilter(min_cutoff=0.0)


def test_rotation_smoothing_stays_a_rotation_and_reduces_jitter():
    rng = np.random.default_rng(2)
    base = rotation_from_euler(20.0, -10.0, 5.0)
    filt = RotationFilter()
    raw_euler, smooth_euler = [], []
    for i in range(100):
        noise = FRONTAL @ rotation_from_euler(*rng.normal(0, 1.0, 3))  # ~1 degree per axis, near identity
        r_noisy = noise @ base
        r = filt(r_noisy, i / FPS)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(r) == pytest.approx(1.0)
        raw_euler.append(euler_from_rotation(r_noisy))
        smooth_euler.append(euler_from_rotation(r))
    raw_j = np.mean(np.abs(np.diff(raw_euler[25:], axis=0)))
    smooth_j = np.mean(np.abs(np.diff(smooth_euler[25:], axis=0)))
    assert smooth_j < 0.35 * raw_j, (raw_j, smooth_j)
    np.testing.assert_allclose(np.mean(smooth_euler[25:], axis=0), [20.0, -10.0, 5.0], atol=0.5)


def test_rotation_turning_head_lags_little():
    """Yaw sweeping at 45 deg/s: the smoothed yaw trails by a few degrees at most."""
    filt = RotationFilter()
    errors = []
    for i in range(75):
        yaw = -30.0 + 45.0 * i / FPS
        errors.append(euler_from_rotation(filt(rotation_from_euler(yaw, 0, 0), i / FPS))[0] - yaw)
    assert np.max(np.abs(errors[25:])) < 5.0, np.max(np.abs(errors))


def test_orthonormalize_fixes_reflections_and_scale():
    r = rotation_from_euler(10, 20, 30)
    np.testing.assert_allclose(orthonormalize(1.3 * r), r, atol=1e-9)
    assert np.linalg.det(orthonormalize(-r)) == pytest.approx(1.0)


def test_face_smoother_fields_and_new_track_resets():
    rng = np.random.default_rng(3)
    smoother = FaceSmoother()

    def face(track_id, offset, yaw):
        r = rotation_from_euler(yaw, 0, 0)
        return Face(
            box=np.zeros(4, np.float32), score=1.0, keypoints=np.zeros((5, 2)), track_id=track_id,
            landmarks_2d=_template(rng) + offset, landmarks_3d=rng.normal(0, 5, (68, 3)) + [0, 0, 60],
            rotation=r, euler=euler_from_rotation(r), translation=np.array([0.0, 0.0, 60.0 + offset]),
        )

    a0 = smoother.apply(face(1, 0.0, 0.0), 0.0)
    a1_in = face(1, 50.0, 30.0)
    raw = (a1_in.landmarks_2d.copy(), a1_in.translation.copy())
    a1 = smoother.apply(a1_in, 0.04)
    # the same track is smoothed towards its past: every field moved only part of the way
    assert np.all(np.abs(a1.landmarks_2d - raw[0]) > 0)
    assert 60.0 < a1.translation[2] < raw[1][2]
    assert 0.0 < a1.euler[0] < 30.0
    np.testing.assert_allclose(a1.euler, euler_from_rotation(a1.rotation), atol=1e-4)  # euler recomputed
    assert a1.landmarks_2d.dtype == np.float32 and a1.rotation.shape == (3, 3)
    # a new track id starts from its own first sample, not from track 1's state
    b_in = face(2, 50.0, 30.0)
    expected = b_in.landmarks_2d.copy()
    b = smoother.apply(b_in, 0.08)
    np.testing.assert_allclose(b.landmarks_2d, expected, atol=1e-4)
    assert b.euler[0] == pytest.approx(30.0, abs=1e-3)
    assert len(smoother) == 2
    smoother.retain([2])
    assert len(smoother) == 1
    # untracked faces are left alone
    untracked = face(None, 10.0, 10.0)
    before = untracked.landmarks_2d.copy()
    np.testing.assert_array_equal(smoother.apply(untracked, 0.12).landmarks_2d, before)
    assert a0.track_id == 1


def test_frame_timestamp_uses_pts_then_index():
    image = np.zeros((2, 2, 3), np.uint8)
    assert frame_timestamp(Frame("s", 10, 1.5, 0.0, image)) == 1.5
    assert frame_timestamp(Frame("s", 10, None, 0.0, image), fps=25.0) == pytest.approx(0.4)


def test_smoothing_lowers_jitter_on_a_real_still_head_clip(shared):
    """A real photo held still for 2 s with fresh sensor noise per frame, H.264-encoded, through the default
    pipeline's stages with the default bundle (benchmarks/bench_jitter.py): jitter measured both ways."""
    from benchmarks.bench_jitter import still_head_jitter

    result = still_head_jitter(shared / "assets" / "images" / "3ddfa_v2_JianzhuGuo.jpg", frames=50)
    print(result)
    assert result["frames"] == 50
    assert result["raw"] > 1e-4  # the noise moves raw landmarks measurably (0.01 % of the face size)
    assert result["smoothed"] < 0.5 * result["raw"], result


def test_apply_all_equals_apply_face_by_face():
    # the vectorised frame step gives what one apply per face gives (new tracks, steady ones, a restart)
    rng = np.random.default_rng(5)
    one, many = FaceSmoother(), FaceSmoother()

    def make(tid: int, k: int) -> Face:
        lm = rng.normal(0, 30, (68, 2)) + 200 + 3 * k
        return Face(box=np.zeros(4, np.float32), score=1.0, keypoints=np.zeros((5, 2), np.float32), track_id=tid,
                    landmarks_2d=lm.astype(np.float32), landmarks_3d=rng.normal(0, 5, (68, 3)).astype(np.float32),
                    translation=np.array([1, 2, 60 + k], np.float32),
                    rotation=rotation_from_euler(*rng.normal(0, 10, 3)).astype(np.float32))

    times = [0.0, 0.04, 0.08, 0.08, 0.12, 0.02, 0.06]  # a repeated time and a time going back
    for k, t in enumerate(times):
        faces = [make(tid, k) for tid in (1, 2, 3)[: 1 + min(k, 2)]]
        copies = [copy.deepcopy(f) for f in faces]
        for f in copies:
            one.apply(f, t)
        many.apply_all(faces, t)
        for a, b in zip(copies, faces):
            for name in ("landmarks_2d", "landmarks_3d", "translation", "rotation", "euler"):
                np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-5, atol=1e-4, err_msg=name)


def test_update_frames_equals_update_frame_by_frame():
    # the landmark stage smooths a batch of frames in one call: the same results as one update per frame,
    # including a track that ends mid-batch (its state is freed before the frames after it)
    rng = np.random.default_rng(7)
    normals = rng.normal(size=(68, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)

    def make(tid: int, k: int) -> Face:
        return Face(box=np.zeros(4, np.float32), score=1.0, keypoints=np.zeros((5, 2), np.float32), track_id=tid,
                    landmarks_2d=(rng.normal(0, 30, (68, 2)) + 200 + 3 * k).astype(np.float32),
                    landmarks_3d=(rng.normal(0, 5, (68, 3)) + [0, 0, 60]).astype(np.float32),
                    translation=np.array([1, 2, 60 + k], np.float32),
                    rotation=rotation_from_euler(*rng.normal(0, 10, 3)).astype(np.float32))

    frames = [[make(1, k), make(2, k)] if k < 3 else [make(1, k)] for k in range(6)]
    lives = [{1, 2} if k < 3 else {1} for k in range(6)]
    one, many = FaceSmoother(), FaceSmoother()
    copies = copy.deepcopy(frames)
    for k, faces in enumerate(copies):
        one.update(faces, k / FPS, lives[k], normals)
    many.update_frames([(faces, k / FPS, lives[k]) for k, faces in enumerate(frames)], normals)
    for a_faces, b_faces in zip(copies, frames):
        for a, b in zip(a_faces, b_faces):
            for name in ("landmarks_2d", "landmarks_3d", "landmarks_canonical", "translation", "rotation", "euler",
                         "visibility"):
                np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-6, atol=1e-5, err_msg=name)
    assert len(one) == len(many) == 1
