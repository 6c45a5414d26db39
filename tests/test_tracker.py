"""Face tracking: one id through the real sample clip (real decoder, detector, runtime), and the
association rules on synthetic boxes (crossing faces, max_age, mark_lost, landmarks)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.assets import sample_clip
from engine.client import read_messages
from engine.config import parse_config
from engine.frame import Face, Frame
from engine.messages import FrameMessage
from engine.runtime import Pipeline
from plugins.trackers import IoUTracker, box_iou, landmark_similarity
from plugins.trackers.stage import TrackerStage


def _box(cx: float, cy: float, size: float = 60.0) -> np.ndarray:
    return np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2], np.float32)


def test_sample_clip_keeps_one_id(tmp_path):
    """samples/astronaut.mp4 (225 frames, one face, camera zoom/pan/roll): one track id throughout."""
    config = parse_config(
        {
            "pipeline": {"log_level": "WARNING"},
            "sources": [{"type": "file", "id": "sample", "path": str(sample_clip())}],
            # 256 px detector input keeps the test quick; the face is still found on every frame
            "stages": [{"type": "centerface", "input_size": 256, "batch_size": 8}, {"type": "tracker"}],
            "sinks": [{"type": "file_sink", "directory": str(tmp_path), "format": "msgpack"}],
        }
    )
    summary = Pipeline(config).run(handle_signals=False)
    assert not summary.get("fatal")
    frames = [m for m in read_messages(tmp_path / "sample.msgpack") if isinstance(m, FrameMessage)]
    assert len(frames) == 225
    with_face = [m for m in frames if m.faces]
    assert len(with_face) >= 220, f"detector found the face on only {len(with_face)} of 225 frames"
    ids = {face.track_id for m in frames for face in m.faces}
    assert ids == {1}, f"track ids seen: {sorted(ids)}"


@pytest.mark.parametrize("scenario", ["same_size", "occluded"])
def test_crossing_faces_keep_their_ids(scenario):
    """Two faces walk past each other. ``same_size``: equal boxes on one line, identical at the crossing
    frame (only the motion model can tell them apart after it; that one frame is ambiguous and not
    checked). ``occluded``: a near (70 px) and a far (50 px) face; the far one is hidden behind the near
    one (not detected) for 3 frames around the crossing."""
    tracker = IoUTracker(iou_threshold=0.3, max_age=5)
    rng = np.random.default_rng(0)
    near_ids, far_ids = [], []
    near_size, far_size, far_y = (60, 60, 200) if scenario == "same_size" else (70, 50, 195)
    for i in range(41):
        near = _box(100 + 5 * i + rng.normal(0, 1), 200 + rng.normal(0, 1), near_size)  # left -> right
        far = _box(300 - 5 * i + rng.normal(0, 1), far_y + rng.normal(0, 1), far_size)  # meet at i = 20
        hidden = scenario == "occluded" and 19 <= i <= 21
        boxes = np.stack([near] if hidden else [near, far])
        order = rng.permutation(len(boxes))  # detection order must not matter
        ids = np.empty(len(boxes), np.int64)
        ids[order] = tracker.update(boxes[order], np.full(len(boxes), 0.9), i)
        if scenario == "same_size" and i == 20:
            continue
        near_ids.append(ids[0])
        if not hidden:
            far_ids.append(ids[1])
    assert len(set(near_ids)) == 1 and len(set(far_ids)) == 1, (near_ids, far_ids)
    assert near_ids[0] != far_ids[0]


def test_missed_frames_keep_id_until_max_age():
    tracker = IoUTracker(max_age=5)
    box = _box(100, 100)
    assert tracker.update(box[None], [0.9], 0).tolist() == [1]
    # absent for 5 frames (1..5): still the same track on frame 6
    assert [t.track_id for t in tracker.predict(5)] == [1]
    assert tracker.predict(5)[0].age == 5
    assert tracker.update(box[None], [0.9], 6).tolist() == [1]
    # absent for 6 frames (7..12) > max_age: the face comes back as a new track
    assert tracker.predict(13) == []
    assert tracker.update(box[None], [0.9], 13).tolist() == [2]
    # empty frames are fine and return no ids
    assert tracker.update(np.zeros((0, 4)), np.zeros(0), 14).shape == (0,)


def test_mark_lost_and_refresh():
    tracker = IoUTracker(max_age=3)
    lm = np.random.default_rng(1).uniform(80, 120, (68, 2))
    (tid,) = tracker.update(_box(100, 100)[None], [0.9], 0, landmarks=lm[None])
    # landmark-only frames (no detection) keep the track alive past max_age, and move its box along
    for i in range(1, 8):
        tracker.refresh(tid, i, lm + [2.0 * i, 0.0])
    (track,) = tracker.predict(8)
    assert track.track_id == tid and track.age == 1 and track.hits == 8
    np.testing.assert_allclose(track.box, _box(114, 100), atol=1e-3)
    np.testing.assert_allclose(track.landmarks, lm + [14.0, 0.0], atol=1e-3)
    tracker.mark_lost(tid)
    assert tracker.predict(8) == []
    assert tracker.update(_box(114, 100)[None], [0.9], 8).tolist() == [tid + 1]
    with pytest.raises(KeyError):
        tracker.refresh(tid, 9, lm)


def test_landmarks_rescue_a_jumpy_detector_box():
    """A detector box that changes shape (IoU below threshold) still continues the track when the
    landmarks agree; without landmark association it starts a new track."""
    lm = np.random.default_rng(2).uniform(80, 140, (68, 2))
    first, jumpy = np.array([[70, 60, 150, 150]]), np.array([[90, 40, 200, 200]])
    assert box_iou(first, jumpy)[0, 0] < 0.3
    assert landmark_similarity(lm, lm + 1.0) > 0.9
    for use_landmarks, expected in ((True, [1, 1]), (False, [1, 2])):
        tracker = IoUTracker(iou_threshold=0.3, use_landmarks=use_landmarks)
        ids = [tracker.update(first, [0.9], 0, lm[None])[0], tracker.update(jumpy, [0.9], 1, (lm + 1.0)[None])[0]]
        assert ids == expected, use_landmarks


def test_bad_input_is_a_clear_error():
    tracker = IoUTracker()
    with pytest.raises(ValueError, match="landmarks must be"):
        tracker.update(_box(1, 1)[None], [1.0], 0, landmarks=np.zeros((2, 68, 2)))
    tracker.update(_box(1, 1)[None], [1.0], 5)
    with pytest.raises(ValueError, match="backwards"):
        tracker.update(_box(1, 1)[None], [1.0], 4)


def test_stage_ids_are_per_stream():
    stage = TrackerStage(TrackerStage.Options(max_age=2))
    image = np.zeros((8, 8, 3), np.uint8)

    def frame(stream: str, index: int, *centres: float) -> Frame:
        faces = [Face(box=_box(c, 100), score=0.9, keypoints=np.zeros((5, 2), np.float32)) for c in centres]
        return Frame(stream_id=stream, index=index, pts=None, time=0.0, image=image, faces=faces)

    out = stage.process([frame("a", 0, 100, 300), frame("b", 0, 300), frame("a", 1, 102, 298), frame("b", 1, 301)])
    assert [[f.track_id for f in fr.faces] for fr in out] == [[1, 2], [1], [1, 2], [1]]
    last = frame("a", 2, 104)
    last.meta["end_of_stream"] = True
    stage.process([last])
    assert "a" not in stage.trackers and "b" in stage.trackers


def test_similarity_matrix_equals_pairwise():
    from plugins.trackers.iou_tracker import landmark_similarity_matrix

    rng = np.random.default_rng(4)
    a = rng.uniform(0, 100, (3, 68, 2)) + rng.uniform(0, 300, (3, 1, 2))
    b = np.concatenate([a[:2] + rng.normal(0, 2, (2, 68, 2)), rng.uniform(0, 400, (2, 68, 2))])
    want = np.array([[landmark_similarity(x, y) for y in b] for x in a])
    np.testing.assert_allclose(landmark_similarity_matrix(a, b), want, atol=1e-12)
