"""The Python API (README "Use the model from Python"): the README example runs as written, the
result object behaves like supervision's, and the one predictor gives the stage's numbers."""

import re
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.assets import REPO_ROOT, sample_clip
from engine.frame import Face, Frame
from engine.video import read_frames
from plugins.detectors import CenterFace, Detections
from plugins.landmarks import Faces, LandmarkModel
from plugins.landmarks.stage import LandmarkStage

EXAMPLE = re.compile(r"<!-- python-api-example -->\s*```python\n(.*?)```", re.S)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return next(read_frames(sample_clip()))


@pytest.fixture(scope="module")
def model() -> LandmarkModel:
    return LandmarkModel.from_bundle(backend="onnxruntime")


def test_readme_example_runs(monkeypatch, capsys):
    code = EXAMPLE.search((REPO_ROOT / "README.md").read_text()).group(1)
    monkeypatch.chdir(REPO_ROOT)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    faces, frame = scope["faces"], scope["frame"]
    assert isinstance(faces, Faces) and len(faces) == 1 and faces.landmarks_2d.shape == (1, 68, 2)
    assert isinstance(frame, Frame) and frame.index == 10 and frame.faces[0].landmarks_3d.shape == (68, 3)
    assert capsys.readouterr().out.count("\n") == 1 + 11  # one line for the image, one per face of frames 0..10


def test_faces_index_like_supervision(model, image):
    det = CenterFace()(image)
    assert isinstance(det, Detections) and len(det) == 1
    faces = model.predict(image, np.concatenate([det.boxes, det.boxes + 5]))  # plain boxes: two faces
    assert len(faces) == 2 and faces.score.tolist() == [1.0, 1.0]
    for name, shape in {"landmarks_2d": (68, 2), "landmarks_3d": (68, 3), "rotation": (3, 3), "euler": (3,),
                        "confidence": (68,), "box": (4,), "keypoints": (5, 2), "visibility": (68,)}.items():
        assert getattr(faces, name).shape == (2, *shape), name
    assert len(faces[0]) == 1 and np.array_equal(faces[1].box[0], faces.box[1])
    assert len(faces[faces.score > 2]) == 0 and len(faces[1:]) == 1 and len(list(faces)) == 2
    back = Faces.from_faces(faces.to_faces())
    assert all(np.array_equal(getattr(back, n), getattr(faces, n)) for n in ("landmarks_2d", "rotation", "box"))
    assert len(model.predict(image, np.zeros((0, 4)))) == 0


def test_predictor_gives_the_stage_output(model, image):
    det = CenterFace()(image)
    frame = Frame("s", 0, 0.0, 0.0, image)
    frame.faces = [Face(box=b, score=float(s), keypoints=k) for b, s, k in zip(det.boxes, det.scores, det.keypoints)]
    stage = LandmarkStage(LandmarkStage.Options(backend="onnxruntime", tracking=False))
    stage.start()
    stage.process([frame])
    stage.close()
    faces = model.predict(image, det)
    np.testing.assert_array_equal(faces.landmarks_2d[0], frame.faces[0].landmarks_2d)
    np.testing.assert_array_equal(faces.rotation[0], frame.faces[0].rotation)
    twice = model.predict(image, det, passes=2)
    assert not np.array_equal(twice.landmarks_2d, faces.landmarks_2d)  # cropped again from its landmarks


def test_stream_from_a_toml_file(tmp_path: Path):
    clip = tmp_path / "clip.mp4"
    clip.symlink_to(sample_clip())
    (tmp_path / "p.toml").write_text('[[sources]]\ntype = "file"\nid = "c"\npath = "clip.mp4"\nmax_frames = 5\n'
                                     '[[stages]]\ntype = "centerface"\ninput_size = 320\n')
    stream = engine.stream(tmp_path / "p.toml")  # relative paths: against the file's folder
    frames = list(stream)
    assert [f.index for f in frames] == list(range(5)) and all(len(f.faces) == 1 for f in frames)
    assert stream.summary is not None and stream.summary["frames"] == 5
