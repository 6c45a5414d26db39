"""3DDFA_V2 teacher: landmarks land on real faces; the ONNX export matches torch."""

import numpy as np
import pytest
import torch
from PIL import Image

from engine.landmarks68 import FLIP_PERMUTATION
from training.teacher import LandmarkTeacher, Teacher
from training.teacher.tddfa import crop_zero_padded, roi_from_boxes


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    torch.manual_seed(0)
    return Teacher()


@pytest.fixture(scope="module")
def detector():
    from plugins.detectors.centerface import CenterFace

    return CenterFace()


def load_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("name", ["pyfeat_single_face.jpg", "skimage_astronaut.png"])
def test_landmarks_sit_on_the_detected_face(shared, teacher, detector, name):
    image = load_rgb(shared / "assets" / "images" / name)
    det = detector.detect(image)
    assert len(det.boxes) >= 1, f"{name}: detector found no face"
    box = det.boxes[int(np.argmax(det.scores))]
    res = teacher.predict_refined(image, box[None])
    lm = res.landmarks[0]
    assert lm.shape == (68, 2) and res.params.shape == (1, 62) and res.pose.shape == (1, 3)
    w, h = box[2] - box[0], box[3] - box[1]
    # Points inside the detector box (a small margin for the chin/jaw below CenterFace's box).
    assert (lm[:, 0] > box[0] - 0.1 * w).all() and (lm[:, 0] < box[2] + 0.1 * w).all()
    assert (lm[:, 1] > box[1] - 0.1 * h).all() and (lm[:, 1] < box[3] + 0.15 * h).all()
    # Outer eye corners: right eye (36) on the image left, about 40-60 % of the box width apart.
    eye = lm[45] - lm[36]
    assert eye[0] > 0 and 0.3 * w < np.linalg.norm(eye) < 0.7 * w
    assert abs(eye[1]) < 0.15 * w  # both photos are upright
    # Near-frontal faces: mirrored inner-face pairs (brows, eyes, nose, mouth) are symmetric about the
    # midline (the contour is left out: a 10 degree turn already shifts it by several percent).
    mid_x = lm[[27, 28, 29, 30, 33, 51, 57, 8], 0].mean()
    mirrored = lm[FLIP_PERMUTATION].copy()
    mirrored[:, 0] = 2 * mid_x - mirrored[:, 0]
    assert np.linalg.norm(mirrored - lm, axis=1)[17:].mean() < 0.05 * w
    assert abs(res.pose[0, 0]) < 20 and abs(res.pose[0, 2]) < 15  # near-frontal yaw and roll
    # Nose tip below the eyes, mouth below the nose (image y down).
    assert lm[36:48, 1].mean() < lm[30, 1] < lm[48:68, 1].mean() < lm[8, 1]
    assert res.confidence.shape == (1, 68) and (res.confidence > 0).all() and (res.confidence <= 1).all()
    assert res.confidence.mean() > 0.3


def test_batched_equals_single_and_protocol(shared, teacher):
    image = load_rgb(shared / "assets" / "images" / "skimage_astronaut.png")
    boxes = np.array([[165, 70, 265, 190], [150, 60, 280, 200]], dtype=np.float32)
    both = teacher.predict(image, boxes)
    one = teacher.predict(image, boxes[1:])
    np.testing.assert_allclose(both.landmarks[1], one.landmarks[0], atol=1e-3)
    again = teacher.predict_from_landmarks(image, both.landmarks)
    assert again.landmarks.shape == (2, 68, 2)
    assert isinstance(teacher, LandmarkTeacher)


def test_crop_pads_with_zeros_outside_the_image():
    image = np.full((10, 10, 3), 200, dtype=np.uint8)
    crop = crop_zero_padded(image, (-5, -5, 5, 5))
    assert crop.shape == (10, 10, 3)
    assert (crop[:5, :5] == 0).all() and (crop[5:, 5:] == 200).all()
    roi = roi_from_boxes(np.array([[0, 0, 100, 100]]))[0]
    assert roi[2] - roi[0] == 158 and np.isclose((roi[1] + roi[3]) / 2, 64)


def test_onnx_export_matches_torch(tmp_path, teacher):
    ort = pytest.importorskip("onnxruntime")
    path = teacher.export_onnx(tmp_path / "tddfa.onnx")
    x = torch.randn(3, 3, 120, 120)
    with torch.inference_mode():
        ref = teacher.net(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(out, ref, atol=1e-4)
