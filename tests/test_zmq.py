"""ZeroMQ sinks over real TCP sockets: every frame arrives (PUSH/PULL, and PUB/SUB after a
slow-joiner handshake), the decoded faces equal the detector's, topics filter streams, send timeouts
count drops instead of hanging."""

import socket
import threading

import av
import numpy as np
import pytest
from clips import make_clip

from engine.client import Subscriber
from engine.config import parse_config
from engine.messages import EndOfStream, FrameMessage
from engine.runtime import Pipeline
from plugins.detectors.centerface import CenterFace


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("zclips")
    return {"face": make_clip(d / "face.mp4", frames=24), "noface": make_clip(d / "noface.mp4", frames=16, face=False)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Background:
    """Run a pipeline in a thread (signal handlers need the main thread, so they are off here)."""

    def __init__(self, doc: dict):
        self.pipeline = Pipeline(parse_config(doc))
        self.summary: dict | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.summary = self.pipeline.run(handle_signals=False)
        except BaseException as exc:  # re-raised in the test thread by join()
            self.error = exc

    def join(self, timeout: float = 60) -> dict:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "pipeline did not finish"
        if self.error:
            raise self.error
        return self.summary


def _collect(sub: Subscriber) -> tuple[dict[str, list[FrameMessage]], dict[str, EndOfStream]]:
    frames: dict[str, list[FrameMessage]] = {}
    eos: dict[str, EndOfStream] = {}
    for msg in sub:
        if isinstance(msg, EndOfStream):
            eos[msg.stream_id] = msg
        else:
            frames.setdefault(msg.stream_id, []).append(msg)
    return frames, eos


def test_push_pull_every_frame_with_the_detectors_faces(clips):
    with Subscriber("tcp://127.0.0.1:*", kind="pull", mode="bind", timeout_s=30, stop_after_eos=1) as sub:
        run = Background(
            {
                "sources": [{"type": "file", "id": "face", "path": str(clips["face"])}],
                "stages": [{"type": "centerface", "input_size": 320, "batch_size": 4}],
                "sinks": [{"type": "zmq_push", "endpoint": sub.endpoint, "mode": "connect", "hwm": 2}],
            }
        )
        frames, eos = _collect(sub)
    summary = run.join()
    got = frames["face"]
    assert [m.index for m in got] == list(range(24)) and eos["face"].frames == 24
    assert summary["streams"]["face"]["frames"] == 24
    # the same detector run directly on the same decoded frames gives the same faces
    detector = CenterFace(input_size=320)
    with av.open(str(clips["face"])) as container:
        images = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for msg, det in zip(got, detector.detect_batch(images)):
        assert len(msg.faces) == len(det)
        for face, box, score, kps in zip(msg.faces, det.boxes, det.scores, det.keypoints):
            np.testing.assert_allclose(face.box, box, atol=1e-3)
            np.testing.assert_allclose(face.keypoints, kps, atol=1e-3)
            assert face.score == pytest.approx(float(score), abs=1e-5)
    assert sum(len(m.faces) for m in got) >= 22


def test_pub_sub_after_handshake_every_frame_and_topic_filter(clips):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # subscribers connect before the PUB binds; zmq_pub waits for both subscriptions before data flows
    with (
        Subscriber(endpoint, timeout_s=20, stop_after_eos=2) as everything,
        Subscriber(endpoint, topics=["face"], timeout_s=20, stop_after_eos=1) as face_only,
    ):
        run = Background(
            {
                "sources": [
                    {"type": "file", "id": "face", "path": str(clips["face"])},
                    {"type": "file", "id": "noface", "path": str(clips["noface"])},
                ],
                "sinks": [{"type": "zmq_pub", "endpoint": endpoint, "wait_for_subscribers": 2, "wait_timeout_s": 10}],
            }
        )
        all_frames, all_eos = _collect(everything)
        face_frames, face_eos = _collect(face_only)
    run.join()
    assert [m.index for m in all_frames["face"]] == list(range(24))
    assert [m.index for m in all_frames["noface"]] == list(range(16))
    assert all_eos["face"].frames == 24 and all_eos["noface"].frames == 16
    assert list(face_frames) == ["face"] and list(face_eos) == ["face"]
    assert [m.index for m in face_frames["face"]] == list(range(24))


def test_push_send_timeout_counts_drops_instead_of_blocking(clips):
    # nobody listens: a lossless PUSH would block forever; with a send timeout it drops and counts
    doc = {
        "sources": [{"type": "file", "id": "face", "path": str(clips["face"])}],
        "sinks": [
            {
                "type": "zmq_push",
                "endpoint": f"tcp://127.0.0.1:{free_port()}",
                "mode": "connect",
                "hwm": 2,
                "send_timeout_ms": 5,
                "linger_ms": 0,
            }
        ],
    }
    summary = Background(doc).join(timeout=30)
    assert summary["streams"]["face"]["frames"] == 24
    (drops,) = summary["sink_drops"].values()
    assert 10 <= drops <= 25  # 24 frames + 1 end-of-stream, minus the few the HWM queue holds
