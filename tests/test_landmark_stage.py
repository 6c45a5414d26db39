"""The ``landmarks`` stage on the real sample clip with real CenterFace detections and an untrained
tiny bundle (tests/landmark_bundle.py): every field filled with the right shapes and finite values,
geometry consistent (un-cropping, camera conversion), tracking between detections, lost tracks asking
for a detection, smoothing, messages round trip, and the clear error without a bundle."""

import copy
import threading

import numpy as np
import pytest

from engine.client import read_messages
from engine.config import parse_config
from engine.context import PipelineContext
from engine.crop import crop_matrix, crop_to_image, roi_from_box, transform_points, warp_crop
from engine.frame import Frame
from engine.geometry import project, rotation_from_euler
from engine.messages import SCHEMA_VERSION, EndOfStream, FrameMessage, decode, decode_obj, encode, to_json_obj
from engine.assets import sample_clip
from engine.plugin import discover
from engine.runtime import Pipeline, PipelineStartError
from landmark_bundle import tiny_bundle
from plugins.detectors.centerface import CenterFaceDetector
from plugins.landmarks.stage import LandmarkStage, crop_face, image_intrinsics, pose_to_image
from plugins.sources.pyav_source import FileSource

FIELDS = {  # name: (shape, dtype kind)
    "landmarks_2d": ((68, 2), "f"), "landmarks_3d": ((68, 3), "f"), "landmarks_canonical": ((68, 3), "f"),
    "rotation": ((3, 3), "f"), "euler": ((3,), "f"), "translation": ((3,), "f"),
    "confidence": ((68,), "f"), "visibility": ((68,), "b"),
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def detected_frames() -> list[Frame]:
    """24 sample-clip frames with CenterFace faces (detected once, deep-copied per test)."""
    source = FileSource(FileSource.Options(path=str(sample_clip()), max_frames=24), "sample")
    frames = list(source.frames(threading.Event()))
    detector = CenterFaceDetector(CenterFaceDetector.Options(input_size=320))
    detector.start()
    return detector.process(frames)


def make_stage(bundle, **options) -> LandmarkStage:
    stage = LandmarkStage(LandmarkStage.Options(bundle=str(bundle), backend="onnxruntime", **options))
    stage.start()
    return stage


def check_face(face, width: int, height: int, K: np.ndarray) -> None:
    for name, (shape, kind) in FIELDS.items():
        value = getattr(face, name)
        assert value is not None and value.shape == shape and value.dtype.kind == kind, name
        assert np.isfinite(value.astype(np.float64)).all(), name
    lm = face.landmarks_2d
    assert (lm[:, 0] >= -0.5).all() and (lm[:, 0] <= width - 0.5).all() and (lm[:, 1] >= -0.5).all() and (lm[:, 1] <= height - 0.5).all()
    roi = roi_from_box(face.box)
    side = roi[2] - roi[0]
    assert (lm >= roi[:2] - 0.25 * side).all() and (lm <= roi[2:] + 0.25 * side).all()  # near the face
    assert np.allclose(face.rotation @ face.rotation.T, np.eye(3), atol=1e-4)
    assert np.allclose(face.landmarks_3d, face.landmarks_canonical @ face.rotation.T + face.translation, atol=1e-3)
    assert face.translation[2] > 0 and ((face.confidence >= 0) & (face.confidence <= 1)).all()
    # camera conversion: the 3D landmarks project (with the assumed K) close to the exact 2D landmarks
    reproj = np.linalg.norm(project(face.landmarks_3d.astype(np.float64), K) - lm, axis=1)
    assert reproj.max() < 0.05 * side, reproj.max()


# ---------------------------------------------------------------- geometry


def test_uncrop_is_the_exact_inverse_of_crop():
    rng = np.random.default_rng(0)
    for _ in range(20):
        box = np.sort(rng.uniform(-50, 700, 4).reshape(2, 2), axis=0).T.reshape(-1)[[0, 2, 1, 3]]
        M = crop_matrix(roi_from_box(box), int(rng.choice([32, 128, 224])))
        points = rng.uniform(-100, 800, (68, 2))
        np.testing.assert_allclose(crop_to_image(M, transform_points(M, points)), points, atol=1e-9)
        np.testing.assert_allclose(transform_points(M, crop_to_image(M, points)), points, atol=1e-9)


def test_face_crop_equals_warp_crop_of_the_whole_frame():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    differ = total = 0
    for _ in range(60):  # inside, across the border, outside, up- and downscaled (box filter)
        x0, y0 = rng.uniform(-200, 700, 2)
        side, size = rng.uniform(5, 500), int(rng.choice([32, 128]))
        M = crop_matrix([x0, y0, x0 + side, y0 + side], size)
        diff = np.abs(crop_face(image, M, size).astype(int) - warp_crop(image, M, size))
        assert diff.max() <= 1
        differ, total = differ + np.count_nonzero(diff), total + diff.size
    assert differ <= 1e-5 * total  # the same taps; OpenCV's float32 coordinates may round a .5 the other way


def test_pose_conversion_exact_at_centre_and_close_off_centre():
    S, f_ratio = 128, 2.7
    K0 = np.array([[f_ratio * S, 0, (S - 1) / 2], [0, f_ratio * S, (S - 1) / 2], [0, 0, 1.0]])
    W, H = 1280, 720
    R_c, t_c = rotation_from_euler(20, -10, 5), np.array([1.0, -0.5, 60.0])
    # a crop at the principal point whose focal equals K's: the poses are the same camera
    side = 300.0
    K = image_intrinsics(W, H, focal_px=f_ratio * S * side / S)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    M = crop_matrix([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], S)  # roi centre -> crop centre
    R, t = pose_to_image(R_c, t_c, M, K0, K)
    np.testing.assert_allclose(R, R_c, atol=1e-9)
    np.testing.assert_allclose(t, t_c, atol=1e-6)
    # off-centre crop, other focal: 3D points still project near the crop's exact 2D projection (the
    # residual is the perspective of the face's depth relief, which differs between the two focals)
    points = np.random.default_rng(1).normal(0, [4.0, 5.0, 2.0], (68, 3))  # face-sized relief (cm)
    K = image_intrinsics(W, H)
    roi = [900, 400, 1100, 600]
    M = crop_matrix(roi, S)
    R, t = pose_to_image(R_c, t_c, M, K0, K)
    exact = crop_to_image(M, project(points @ R_c.T + t_c, K0))
    approx = project(points @ R.T + t, K)
    err = np.linalg.norm(approx - exact, axis=1) / (roi[2] - roi[0])
    assert err.mean() < 0.02 and err.max() < 0.07, (err.mean(), err.max())


# ---------------------------------------------------------------- the stage


def test_missing_bundle_is_a_clear_start_error(tmp_path):
    doc = {
        "sources": [{"type": "file", "id": "s", "path": str(sample_clip()), "max_frames": 2}],
        "stages": [{"type": "landmarks", "bundle": str(tmp_path / "nowhere")}],
        "sinks": [{"type": "file_sink", "directory": str(tmp_path / "out")}],
    }
    with pytest.raises(PipelineStartError, match=r"stages\[0\].*landmark model bundle not found.*training.bundle"):
        Pipeline(parse_config(doc, discover())).run(handle_signals=False)


def test_pipeline_on_sample_clip_fills_every_field(bundle, tmp_path):
    doc = {
        "pipeline": {"queue_size": 8},
        "sources": [{"type": "file", "id": "sample", "path": str(sample_clip()), "max_frames": 12}],
        "stages": [{"type": "centerface", "input_size": 320},
                   {"type": "landmarks", "bundle": str(bundle), "backend": "onnxruntime", "frame_batch": 4}],
        "sinks": [{"type": "file_sink", "directory": str(tmp_path), "format": "msgpack"}],
    }
    summary = Pipeline(parse_config(doc, discover())).run(handle_signals=False)
    msgs = list(read_messages(tmp_path / "sample.msgpack"))
    frames, eos = msgs[:-1], msgs[-1]
    assert isinstance(eos, EndOfStream) and eos.frames == 12 and len(frames) == 12
    K = image_intrinsics(640, 480)
    ids = set()
    for m in frames:
        assert isinstance(m, FrameMessage) and m.version == SCHEMA_VERSION
        assert len(m.faces) >= 1
        for face in m.faces:
            check_face(face, m.width, m.height, K)
            ids.add(face.track_id)
    assert ids == {1}  # one person, detected on every frame: one track
    lat = summary["stages"]["landmarks"]["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] and summary["latency_ms"]["p95"] >= lat["p50"]
    assert summary["stages"]["landmarks"]["errors"] == 0


def test_detect_every_tracks_between_detections_in_waves(bundle, detected_frames):
    # two streams of the same clip in one batch: waves keep each stream's order, batches cross streams
    frames = []
    for f in detected_frames[:12]:
        for sid in ("a", "b"):
            g = copy.deepcopy(f)
            g.stream_id = sid
            frames.append(g)
    for f in frames:  # as centerface with detect_every = 3 would leave them
        if f.index % 3:
            f.meta["detected"], f.faces = False, []
    stage = make_stage(bundle, max_batch=8, max_wait_ms=1000)  # flush, not the deadline, ends a wave
    for i in range(0, len(frames), 8):
        stage.process(frames[i : i + 8])
    assert max(stage.batch_sizes) >= 2  # faces of both streams in one call
    stage.close()
    for sid in ("a", "b"):
        seq = [f for f in frames if f.stream_id == sid]
        for prev, f in zip(seq, seq[1:]):
            assert f.faces, f.index
            for face in f.faces:
                check_face(face, 640, 480, f.meta["camera_matrix"])
            if not f.meta["detected"]:  # tracked from the previous frame's tracks, same ids
                assert {x.track_id for x in f.faces} <= {x.track_id for x in prev.faces}


def test_lost_track_asks_the_detector_for_a_detection(bundle, detected_frames):
    source = FileSource(FileSource.Options(path=str(sample_clip()), max_frames=4), "lost")
    frames = list(source.frames(threading.Event()))
    detector = CenterFaceDetector(CenterFaceDetector.Options(input_size=320, detect_every=10))
    detector.start()
    stage = make_stage(bundle, lost_confidence=0.99)  # the untrained model's ~0.37 counts as lost
    detector.context = stage.context = PipelineContext()  # as the runtime does for one pipeline
    out = [stage.process(detector.process([f]))[0] for f in frames]
    stage.close()
    assert [f.meta["detected"] for f in out] == [True, False, True, False]
    assert out[0].faces and not out[1].faces  # frame 1: the tracked face was lost -> request -> frame 2 detects
    assert out[2].faces


def test_smoothing_is_causal_and_reduces_jitter(bundle, detected_frames):
    def run(smoothing: bool) -> np.ndarray:
        frames = copy.deepcopy(detected_frames)
        stage = make_stage(bundle, smoothing=smoothing, crop_from="box")
        for i in range(0, len(frames), 6):
            stage.process(frames[i : i + 6])
        stage.close()
        for f in frames:
            for face in f.faces:
                check_face(face, 640, 480, f.meta["camera_matrix"])
        return np.stack([f.faces[0].landmarks_2d for f in frames])

    raw, smooth = run(False), run(True)
    np.testing.assert_allclose(smooth[0], raw[0], atol=1e-4)  # first sample passes through
    jitter = lambda x: np.abs(np.diff(x, 2, axis=0)).mean()  # noqa: E731
    assert jitter(smooth) < jitter(raw)


def test_messages_round_trip_every_landmark_field(bundle, detected_frames):
    frame = copy.deepcopy(detected_frames[0])
    stage = make_stage(bundle)
    stage.process([frame])
    stage.close()
    for msg in (decode(encode(frame)), decode_obj(to_json_obj(frame), arrays_as_lists=True)):
        assert msg.version == SCHEMA_VERSION and len(msg.faces) == len(frame.faces) >= 1
        for got, face in zip(msg.faces, frame.faces):
            assert got.track_id == face.track_id == 1 and got.score == pytest.approx(face.score)
            for name in ("box", "keypoints", *FIELDS):
                np.testing.assert_array_equal(getattr(got, name), getattr(face, name), err_msg=name)


def test_pose_conversion_vectorised_equals_one_by_one():
    rng = np.random.default_rng(6)
    K0 = np.array([[345.6, 0, 63.5], [0, 345.6, 63.5], [0, 0, 1.0]])
    R = np.stack([rotation_from_euler(*rng.uniform(-40, 40, 3)) for _ in range(5)])
    t = np.column_stack([rng.normal(0, 2, (5, 2)), rng.uniform(40, 90, 5)])
    M = np.stack([crop_matrix([x, y, x + s, y + s], 128) for x, y, s in rng.uniform([-50, -50, 40], [900, 500, 400], (5, 3))])
    K = np.stack([image_intrinsics(1280, 720), image_intrinsics(640, 480, 500.0)] * 2 + [image_intrinsics(64, 64)])
    R_all, t_all = pose_to_image(R, t, M, K0, K)
    for i in range(5):
        R_i, t_i = pose_to_image(R[i], t[i], M[i], K0, K[i])
        np.testing.assert_allclose(R_all[i], R_i, atol=1e-12)
        np.testing.assert_allclose(t_all[i], t_i, atol=1e-9)


def test_confidence_drop_asks_for_a_detection_and_keeps_the_track(bundle, detected_frames, monkeypatch):
    source = FileSource(FileSource.Options(path=str(sample_clip()), max_frames=6), "dip")
    frames = list(source.frames(threading.Event()))
    detector = CenterFaceDetector(CenterFaceDetector.Options(input_size=320, detect_every=10))
    detector.start()
    stage = make_stage(bundle)
    run = stage.backend.infer
    calls = []

    def dip_on_third_call(x):  # frame 2: confidence x 0.7 (the untrained ~0.37 stays above lost_confidence)
        out = run(x)
        calls.append(len(x))
        if len(calls) == 3:
            out = {**out, "confidence": out["confidence"] * 0.7}
        return out

    monkeypatch.setattr(stage.backend, "infer", dip_on_third_call)
    detector.context = stage.context = PipelineContext()
    out = [stage.process(detector.process([f]))[0] for f in frames]
    stage.close()
    assert [f.meta["detected"] for f in out] == [True, False, False, True, False, False]
    assert all(f.faces for f in out)
    assert out[2].faces[0].track_id == out[1].faces[0].track_id  # the dip kept its track


def test_device_crop_path_matches_host_crops(bundle, detected_frames):
    # the GPU path (crops made by the backend from whole frames), forced on torch CPU: same landmarks
    pytest.importorskip("torch")
    out = {}
    for name, backend, device_crop in (("host", "onnxruntime", False), ("device", "torch", True)):
        stage = make_stage(bundle, tracking=False) if backend == "onnxruntime" else LandmarkStage(
            LandmarkStage.Options(bundle=str(bundle), backend="torch", device="cpu", tracking=False))
        stage.start()
        stage._device_crop = device_crop
        frames = copy.deepcopy(detected_frames[:6])
        stage.process(frames)
        stage.close()
        out[name] = np.stack([face.landmarks_2d for f in frames for face in f.faces])
    np.testing.assert_allclose(out["device"], out["host"], atol=0.02)
