"""Runtime: real decoding + the real CenterFace stage, order per stream, end-of-stream, batching,
drop-oldest for live sources, stage failures counted (not fatal), start failures fatal, one context per
pipeline (re-detection requests of one pipeline never reach another)."""

import os
import threading

import numpy as np
import pytest
import zmq
from clips import make_clip

from engine.client import read_messages
from engine.config import parse_config
from engine.context import PipelineContext
from engine.frame import Frame
from engine.messages import EndOfStream, FrameMessage
from engine.plugin import PluginOptions, Stage, discover
from engine.runtime import Channel, Pipeline, PipelineStartError
from engine.runtime import EndOfStream as Marker


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {
        "face": make_clip(d / "face.mp4", frames=24),
        "noface": make_clip(d / "noface.mp4", frames=16, face=False),
        "fast": make_clip(d / "fast.mp4", frames=120, fps=1000),  # realtime-paced: 1000 fps "camera"
    }


class FlakyStage(Stage):
    """Fails on every batch holding a frame with index % 5 == 2 (fault injection for the runtime)."""

    name = "flaky"

    class Options(PluginOptions):
        pass

    def process(self, frames: list[Frame]) -> list[Frame]:
        if any(f.index % 5 == 2 for f in frames):
            raise ValueError("injected failure")
        for f in frames:
            f.meta["flaky_ok"] = True
        return frames


class SlowStage(Stage):
    """20 ms per frame: a pipeline that certainly lags a 1000 fps camera, however fast CenterFace runs."""

    name = "slow"

    class Options(PluginOptions):
        pass

    def process(self, frames: list[Frame]) -> list[Frame]:
        threading.Event().wait(0.02 * len(frames))
        return frames


class RequestStage(Stage):
    """Asks for a re-detection on every frame and never forgets it (as a landmark stage losing its track)."""

    name = "request"

    class Options(PluginOptions):
        pass

    def process(self, frames: list[Frame]) -> list[Frame]:
        for f in frames:
            self.context.redetect.request(f.stream_id)
        return frames


class TakeStage(Stage):
    """Records, per frame, whether a re-detection was pending for its stream (as the detector asks)."""

    name = "take"

    class Options(PluginOptions):
        pass

    def __init__(self, options):
        super().__init__(options)
        self.taken: list[bool] = []

    def process(self, frames: list[Frame]) -> list[Frame]:
        self.taken += [self.context.redetect.take(f.stream_id) for f in frames]
        return frames


def _run(doc: dict, extra_plugins: dict | None = None) -> dict:
    plugins = discover() | (extra_plugins or {})
    return Pipeline(parse_config(doc, plugins)).run(handle_signals=False)


def _frames(path) -> tuple[list[FrameMessage], EndOfStream]:
    msgs = list(read_messages(path))
    assert isinstance(msgs[-1], EndOfStream), f"{path} does not end with an end-of-stream message"
    assert all(isinstance(m, FrameMessage) for m in msgs[:-1])
    return msgs[:-1], msgs[-1]


def test_two_files_centerface_file_sinks(clips, tmp_path):
    doc = {
        "pipeline": {"queue_size": 4, "log_interval_s": 0.5},
        "sources": [
            {"type": "file", "id": "face", "path": str(clips["face"])},
            {"type": "file", "id": "noface", "path": str(clips["noface"])},
        ],
        "stages": [{"type": "centerface", "input_size": 320, "batch_size": 4, "max_wait_ms": 20}],
        "sinks": [
            {"type": "file_sink", "directory": str(tmp_path / "mp")},
            {"type": "file_sink", "directory": str(tmp_path / "js"), "format": "jsonl"},
        ],
    }
    summary = _run(doc)
    assert summary["streams"]["face"] == {"frames": 24, "faces": summary["streams"]["face"]["faces"], "drops": 0, "errors": 0}
    assert summary["streams"]["noface"]["frames"] == 16 and summary["streams"]["noface"]["faces"] == 0
    assert summary["streams"]["face"]["faces"] >= 22  # the astronaut is found on (nearly) every frame
    cf = summary["stages"]["centerface"]
    assert cf["frames"] == 40 and cf["errors"] == 0 and cf["batches"] < 40  # it batched
    assert summary["frames"] == 40 and summary["fps"] > 0 and not summary["stopped"]
    for fmt in ("mp/face.msgpack", "js/face.jsonl"):
        frames, eos = _frames(tmp_path / fmt)
        assert [m.index for m in frames] == list(range(24)) and eos.frames == 24
        assert all(len(m.faces) >= 1 for m in frames[2:])
        face = frames[5].faces[0]
        assert face.box.shape == (4,) and face.keypoints.shape == (5, 2) and 0.5 <= face.score <= 1
        assert (frames[5].width, frames[5].height) == (320, 240)
    frames, eos = _frames(tmp_path / "mp/noface.msgpack")
    assert [m.index for m in frames] == list(range(16)) and all(not m.faces for m in frames)
    # msgpack and jsonl carry the same detections
    a, _ = _frames(tmp_path / "mp/face.msgpack")
    b, _ = _frames(tmp_path / "js/face.jsonl")
    np.testing.assert_allclose(a[7].faces[0].box, b[7].faces[0].box)


def test_stage_failure_is_counted_not_fatal(clips, tmp_path):
    doc = {
        "sources": [{"type": "file", "id": "face", "path": str(clips["face"])}],
        "stages": [{"type": "flaky"}],
        "sinks": [{"type": "file_sink", "directory": str(tmp_path)}],
    }
    summary = _run(doc, {"flaky": FlakyStage})
    failing = [i for i in range(24) if i % 5 == 2]
    assert summary["stages"]["flaky"]["errors"] == len(failing)  # batch_size 1: one batch per frame
    assert summary["streams"]["face"]["errors"] == len(failing)
    frames, eos = _frames(tmp_path / "face.msgpack")
    assert [m.index for m in frames] == list(range(24)) and eos.frames == 24


def test_live_source_drops_oldest_and_keeps_order(clips, tmp_path):
    # realtime pacing makes the file source live: a 1000 fps "camera" outruns the detector + a slow stage
    # (the slow stage makes the lag certain: CenterFace alone on a tiny clip can nearly keep up)
    doc = {
        "pipeline": {"queue_size": 2},
        "sources": [{"type": "file", "id": "cam", "path": str(clips["fast"]), "realtime": True}],
        "stages": [{"type": "centerface", "input_size": 320, "batch_size": 1}, {"type": "slow"}],
        "sinks": [{"type": "file_sink", "directory": str(tmp_path)}],
    }
    summary = _run(doc, {"slow": SlowStage})
    s = summary["streams"]["cam"]
    assert s["drops"] > 0 and s["frames"] + s["drops"] == 120, s
    frames, eos = _frames(tmp_path / "cam.msgpack")
    indices = [m.index for m in frames]
    assert indices == sorted(indices) and len(indices) == s["frames"] == eos.frames
    assert indices[-1] == 119  # drop-OLDEST: the newest frame always gets through


def test_plugin_start_failure_is_fatal_and_named(clips, tmp_path):
    sock = zmq.Context.instance().socket(zmq.PUB)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        doc = {
            "sources": [{"type": "file", "id": "face", "path": str(clips["face"])}],
            "sinks": [
                {"type": "file_sink", "directory": str(tmp_path)},
                {"type": "zmq_pub", "endpoint": f"tcp://127.0.0.1:{port}"},
            ],
        }
        with pytest.raises(PipelineStartError, match=r"sinks\[1\] \(type 'zmq_pub'\) failed to start: .*cannot bind"):
            _run(doc)
        assert not list(tmp_path.iterdir())  # nothing ran
    finally:
        sock.close(0)


def test_channel_batches_across_lanes_in_order():
    abort = threading.Event()
    ch = Channel("t", abort)
    a, b = ch.add_lane(10), ch.add_lane(10)
    img = np.zeros((2, 2, 3), np.uint8)
    for i in range(3):
        ch.put(a, Frame("a", i, None, 0.0, img))
        ch.put(b, Frame("b", i, None, 0.0, img))
    ch.put(a, Marker("a"))
    ch.close(a)
    ch.close(b)
    batch = ch.get_batch(4, 0.05)
    assert [(f.stream_id, f.index) for f in batch] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    rest = ch.get_batch(10, 0.05)
    assert [getattr(x, "index", "eos") for x in rest] == [2, 2, "eos"]
    assert ch.get_batch(4, 0.05) is None  # closed and empty


def test_prometheus_metrics_served_during_run(clips, tmp_path):
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    doc = {
        "pipeline": {"metrics_port": port, "log_interval_s": 0.2},
        "sources": [{"type": "file", "id": "face", "path": str(clips["face"]), "realtime": True}],  # ~1 s
        "stages": [{"type": "centerface", "input_size": 320}],
        "sinks": [{"type": "file_sink", "directory": str(tmp_path)}],
    }
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(_run(doc)))
    thread.start()
    text, deadline = "", time.monotonic() + 20
    while thread.is_alive() and time.monotonic() < deadline:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            pass  # server not up yet
        if 'engine_stream_frames_total{pipeline="pipeline",stream="face"}' in text:
            break
        time.sleep(0.05)
    thread.join(30)
    assert 'engine_stream_frames_total{pipeline="pipeline",stream="face"}' in text
    assert 'engine_stage_batch_seconds_bucket{le="0.5",pipeline="pipeline",stage="centerface"}' in text
    assert "engine_end_to_end_seconds_count" in text and "engine_queue_depth" in text
    assert result["streams"]["face"]["frames"] == 24
    with pytest.raises(OSError):  # the server is shut down with the pipeline
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_redetect_requests_stay_in_their_pipeline(clips, tmp_path):
    # two pipelines in one process, same stream id: A's pending requests must not reach B's "detector"
    plugins = discover() | {"request": RequestStage, "take": TakeStage}

    def pipeline(stage: str, folder: str) -> Pipeline:
        return Pipeline(parse_config({"sources": [{"type": "file", "id": "cam", "path": str(clips["noface"])}],
                                      "stages": [{"type": stage}],
                                      "sinks": [{"type": "file_sink", "directory": str(tmp_path / folder)}]}, plugins))

    a, b = pipeline("request", "a"), pipeline("take", "b")
    assert a.context is not b.context
    a.run(handle_signals=False)
    assert a.context.redetect.pending() == {"cam"}  # left pending on purpose (RequestStage never forgets)
    b.run(handle_signals=False)
    (taker,) = b._stages
    assert taker.context is b.context and len(taker.taken) == 16 and not any(taker.taken)
    assert b.context.redetect.pending() == set() and a.context.redetect.pending() == {"cam"}


def test_plugins_get_their_pipelines_context_or_a_private_one():
    ctx_a, ctx_b = PipelineContext(), PipelineContext()
    ctx_a.redetect.request("cam")
    assert not ctx_b.redetect.take("cam") and ctx_a.redetect.pending() == {"cam"}
    assert ctx_a.redetect.take("cam") and not ctx_a.redetect.take("cam")  # once
    ctx_a.redetect.request("cam")
    ctx_a.redetect.forget("cam")
    assert not ctx_a.redetect.pending()

    # built outside a runtime: each stage has its own context (stable), unless one is given to both
    one, two = RequestStage(RequestStage.Options()), TakeStage(TakeStage.Options())
    assert one.context is one.context and one.context is not two.context
    one.process([Frame("cam", 0, None, 0.0, np.zeros((2, 2, 3), np.uint8))])
    assert two.process([Frame("cam", 0, None, 0.0, np.zeros((2, 2, 3), np.uint8))]) and two.taken == [False]
    shared = PipelineContext()
    one.context = two.context = shared
    one.process([Frame("cam", 1, None, 0.0, np.zeros((2, 2, 3), np.uint8))])
    two.process([Frame("cam", 1, None, 0.0, np.zeros((2, 2, 3), np.uint8))])
    assert two.taken == [False, True]


class CpuStage(Stage):
    """Records the CPUs its runtime thread may use (``dedicated`` option: a CPU-bound model stage)."""

    name = "cpus"

    class Options(PluginOptions):
        dedicated: bool = False

    def __init__(self, options: Options):
        super().__init__(options)
        self.dedicated_cpus = options.dedicated
        self.seen: set[frozenset[int]] = set()

    def process(self, frames: list[Frame]) -> list[Frame]:
        self.seen.add(frozenset(os.sched_getaffinity(0)))
        return frames


def test_cpu_pinning_plan():
    from engine.affinity import plan

    assert plan("auto", 1, [0, 1]) == [{0}, {1}]
    assert plan("auto", 1, list(range(16))) == [set(range(8)), set(range(8, 16))]
    assert plan("auto", 2, [0, 1, 2, 3]) == [{0}, {1, 2}, {3}]  # (nearly) equal groups, in order
    assert plan("auto", 2, [0, 1]) is None  # a group each is impossible: the OS places the threads
    assert plan("auto", 0, [0, 1]) is None and plan("auto", 1, [0]) is None and plan("off", 1, [0, 1]) is None
    # which built-ins ask for CPUs of their own: the landmark model; the detector only on every frame
    from plugins.detectors.centerface import CenterFaceDetector
    from plugins.landmarks.stage import LandmarkStage

    assert LandmarkStage.dedicated_cpus
    assert CenterFaceDetector(CenterFaceDetector.Options(detect_every=1)).dedicated_cpus
    assert not CenterFaceDetector(CenterFaceDetector.Options(detect_every=30)).dedicated_cpus


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs 2 usable CPUs")
def test_cpu_pinning_auto_gives_the_dedicated_stage_its_own_cpus(clips, tmp_path):
    from engine.affinity import plan, usable_cpus

    plugins = discover() | {"cpus": CpuStage}
    doc = {"pipeline": {"cpu_pinning": "auto"},
           "sources": [{"type": "file", "id": "a", "path": str(clips["noface"])}],
           "stages": [{"type": "cpus"}, {"type": "cpus", "dedicated": True}, {"type": "cpus"}],
           "sinks": [{"type": "file_sink", "directory": str(tmp_path / "out")}]}
    pipe = Pipeline(parse_config(doc, plugins))
    summary = pipe.run(handle_signals=False)
    assert summary["frames"] == 16
    dedicated, rest = plan("auto", 1, usable_cpus())
    first, model, last = pipe._stages
    assert model.seen == {frozenset(dedicated)} and first.seen == last.seen == {frozenset(rest)}
    assert os.sched_getaffinity(0) == set(usable_cpus())  # the caller's thread is left as it was

    doc["pipeline"]["cpu_pinning"] = "off"  # the default: nothing pinned
    pipe = Pipeline(parse_config(doc, plugins))
    pipe.run(handle_signals=False)
    assert all(s.seen == {frozenset(usable_cpus())} for s in pipe._stages)
