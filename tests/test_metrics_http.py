"""The metrics HTTP server over real sockets: /metrics (Prometheus text), /healthz (liveness), /ready
(readiness: 503 while starting and after the sources ended, 200 while they run), 404 elsewhere, and
``metrics_host`` choosing the address it binds."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from clips import make_clip
from test_sources import free_port

from engine.config import parse_config
from engine.plugin import PluginOptions, Sink, Stage, discover
from engine.runtime import Pipeline, PipelineStartError

GATES: dict[str, threading.Event] = {}


class GatedStage(Stage):
    """A stage whose start() waits for the test (like a model that takes a while to load)."""

    name = "gated_stage"

    class Options(PluginOptions):
        pass

    def start(self) -> None:
        assert GATES["start"].wait(30)

    def process(self, frames):
        return frames


class GatedSink(Sink):
    """A sink that holds the end of the stream until the test lets it go."""

    name = "gated_sink"

    class Options(PluginOptions):
        pass

    def write(self, frame) -> None:
        pass

    def end_of_stream(self, stream_id: str) -> None:
        GATES["ended"].set()
        assert GATES["finish"].wait(30)


PLUGINS = discover() | {"gated_stage": GatedStage, "gated_sink": GatedSink}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("m") / "c.mp4", frames=8, size=(64, 48), face=False)


def get(url: str) -> tuple[int, str, str]:
    """(status, body, content type) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode(), r.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers["Content-Type"]


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    try:
        while not predicate():
            assert not deadline.wait(0.05), "timed out"
    finally:
        timer.cancel()


def test_metrics_healthz_ready_and_404_over_http(clip):
    GATES.update(start=threading.Event(), ended=threading.Event(), finish=threading.Event())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    pipeline = Pipeline(parse_config({
        "pipeline": {"metrics_port": port},
        "sources": [{"type": "file", "id": "cam", "path": str(clip)}],
        "stages": [{"type": "gated_stage"}],
        "sinks": [{"type": "gated_sink"}],
    }, PLUGINS))
    summary: dict = {}
    thread = threading.Thread(target=lambda: summary.update(pipeline.run(handle_signals=False)))
    thread.start()
    try:
        wait_for(lambda: _up(base))
        # the stage is still "loading": alive, not ready
        assert get(f"{base}/healthz")[:2] == (200, "ok\n")
        assert get(f"{base}/ready")[:2] == (503, "not ready: starting (loading models, opening inputs)\n")
        status, body, ctype = get(f"{base}/metrics")
        assert status == 200 and ctype.startswith("text/plain") and "# TYPE engine_stage_frames_total counter" in body
        for path in ("/", "/metric", "/healthz/x", "/favicon.ico"):
            status, body, _ = get(base + path)
            assert status == 404 and "/metrics, /healthz and /ready" in body, path
        GATES["start"].set()
        wait_for(lambda: get(f"{base}/ready")[0] == 200 or GATES["ended"].is_set())
        if not GATES["ended"].is_set():  # 8 frames may decode before the first probe; then only the next holds
            assert get(f"{base}/ready")[1] in ("ready: 1 of 1 source(s) running\n", "not ready: every source has ended\n")
        assert GATES["ended"].wait(20)
        wait_for(lambda: get(f"{base}/ready")[0] == 503)
        assert get(f"{base}/ready")[1] == "not ready: every source has ended\n"
        assert get(f"{base}/healthz")[0] == 200
        assert 'engine_stream_frames_total{pipeline="pipeline",stream="cam"} 8.0' in get(f"{base}/metrics")[1]
    finally:
        GATES["start"].set()
        GATES["finish"].set()
        thread.join(30)
    assert summary["streams"]["cam"]["frames"] == 8
    with pytest.raises(OSError):  # the server goes with the pipeline
        urllib.request.urlopen(f"{base}/healthz", timeout=2)


def test_ready_while_a_source_runs(clip, tmp_path):
    # a paced source runs for a while: /ready answers 200 naming the running sources
    port = free_port()
    slow = make_clip(tmp_path / "slow.mp4", frames=50, size=(64, 48), face=False)
    pipeline = Pipeline(parse_config({
        "pipeline": {"metrics_port": port},
        "sources": [{"type": "file", "id": "a", "path": str(slow), "realtime": True},
                    {"type": "file", "id": "b", "path": str(clip)}],
        "sinks": [{"type": "file_sink", "directory": str(tmp_path / "o")}],
    }, PLUGINS))
    thread = threading.Thread(target=pipeline.run, kwargs={"handle_signals": False})
    thread.start()
    answers: set[str] = set()
    try:
        wait_for(lambda: _up(f"http://127.0.0.1:{port}"))
        wait_for(lambda: answers.add(get(f"http://127.0.0.1:{port}/ready")[1]) or "ready: 1 of 2 source(s) running\n" in answers)
    finally:
        pipeline.request_stop()
        thread.join(30)
    assert answers <= {"ready: 2 of 2 source(s) running\n", "ready: 1 of 2 source(s) running\n",
                       "not ready: starting (loading models, opening inputs)\n"}


def test_metrics_host_is_the_bound_address(clip):
    GATES.update(start=threading.Event(), ended=threading.Event(), finish=threading.Event())
    port = free_port()
    pipeline = Pipeline(parse_config({
        "pipeline": {"metrics_port": port, "metrics_host": "127.0.0.2"},
        "sources": [{"type": "file", "id": "cam", "path": str(clip)}],
        "stages": [{"type": "gated_stage"}],
    }, PLUGINS))
    thread = threading.Thread(target=pipeline.run, kwargs={"handle_signals": False})
    thread.start()
    try:
        wait_for(lambda: _up(f"http://127.0.0.2:{port}"))
        with pytest.raises(urllib.error.URLError):  # not on 127.0.0.1: only the configured address
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        GATES["start"].set()
        thread.join(30)


def test_bad_metrics_host_fails_at_start_naming_it(clip):
    pipeline = Pipeline(parse_config({"pipeline": {"metrics_port": free_port(), "metrics_host": "no-such-host.invalid"},
                                      "sources": [{"type": "file", "id": "cam", "path": str(clip)}]}))
    with pytest.raises(PipelineStartError, match=r"metrics_host no-such-host\.invalid"):
        pipeline.run(handle_signals=False)


def _up(base: str) -> bool:
    try:
        return get(f"{base}/healthz")[0] == 200
    except OSError:
        return False
