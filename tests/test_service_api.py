"""Service mode in one process: ``Pipeline(serve=True)`` with ``add_source`` / ``remove_source`` /
``streams()``, the stages' ``end_of_stream`` hook releasing per-stream state for every source kind, the
control API's token and address rules, and the ``engine streams`` CLI against a live API."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from clips import make_clip
from test_sources import free_port, serve_mpegts

from engine.cli import main
from engine.config import ConfigError, parse_config
from engine.plugin import PluginOptions, Stage, discover
from engine.runtime import NotRunning, Pipeline, SourceRejected, StreamConflict
from engine.service import ApiServer, InsecureAddress, parse_address


class StatefulStage(Stage):
    """Keeps a counter per stream (as trackers do) and records the end_of_stream calls it gets."""

    name = "stateful"
    batch_size = 4
    max_wait_ms = 5.0

    class Options(PluginOptions):
        pass

    def __init__(self, options):
        super().__init__(options)
        self.per_stream: dict[str, int] = {}
        self.ended: list[str] = []

    def process(self, frames):
        for f in frames:
            self.per_stream[f.stream_id] = self.per_stream.get(f.stream_id, 0) + 1
            self.context.redetect.request(f.stream_id)  # state outside the stage too: forgotten by the detector's hook
        return frames

    def end_of_stream(self, stream_id: str) -> None:
        self.per_stream.pop(stream_id, None)
        self.context.redetect.forget(stream_id)
        self.ended.append(stream_id)


PLUGINS = discover() | {"stateful": StatefulStage}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("svc")
    return {"short": make_clip(folder / "short.mp4", frames=10, size=(64, 48), face=False),
            "long": make_clip(folder / "long.mp4", frames=150, size=(64, 48), face=False)}


@pytest.fixture
def service(tmp_path):
    """A serving pipeline (no sources; stages: centerface, stateful, tracker; file_sink) in a thread."""
    doc = {"stages": [{"type": "centerface", "input_size": 64, "detect_every": 2}, {"type": "stateful"},
                      {"type": "tracker"}],
           "sinks": [{"type": "file_sink", "directory": str(tmp_path / "out")}]}
    pipeline = Pipeline(parse_config(doc, PLUGINS, require_sources=False), serve=True)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("summary", pipeline.run(handle_signals=False)))
    thread.start()
    deadline = time.monotonic() + 60
    while not pipeline.readiness()[0]:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    yield pipeline
    pipeline.request_stop()
    thread.join(60)
    assert not thread.is_alive() and not result["summary"].get("fatal")


def wait_state(pipeline: Pipeline, sid: str, states: tuple[str, ...], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {s["id"]: s for s in pipeline.streams()}.get(sid)
        if found and found["state"] in states:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{sid} never reached {states}: {pipeline.streams()}")


def test_python_api_adds_removes_and_releases_per_stream_state(service, clips):
    stages = {type(s).__name__: s for s in service._stages}
    stateful, tracker, detector = stages["StatefulStage"], stages["TrackerStage"], stages["CenterFaceDetector"]
    assert all(plugin.context is service.context for plugin in [*service._stages, *service._sinks])
    service.add_source({"type": "file", "id": "short", "path": str(clips["short"])})
    service.add_source({"type": "file", "id": "paced", "path": str(clips["long"]), "realtime": True})
    with pytest.raises(StreamConflict, match="'short' in use"):
        service.add_source({"type": "file", "id": "short", "path": str(clips["short"])})
    with pytest.raises(ConfigError, match=r"source\.path: Field required"):
        service.add_source({"type": "file", "id": "x"})
    with pytest.raises(ConfigError, match=r"source\.type: unknown source plugin 'nope'"):
        service.add_source({"type": "nope", "id": "x"})
    with pytest.raises(SourceRejected, match=r"source\.path: .*missing\.mp4 does not exist"):
        service.add_source({"type": "file", "id": "x", "path": "missing.mp4"})

    ended = wait_state(service, "short", ("ended",))
    assert ended["frames"] == 10 and ended["streams"] == ["short"] and "short" in stateful.ended
    assert "short" not in stateful.per_stream and "short" not in tracker.trackers
    assert "short" not in detector._since_detection

    paced = wait_state(service, "paced", ("running",))
    assert "paced" in stateful.per_stream and "paced" in tracker.trackers  # state exists while it runs
    final = service.remove_source("paced")
    assert final["removed"] and final["state"] == "ended" and 0 < final["frames"] < 150 and paced["frames"] <= final["frames"]
    assert "paced" in stateful.ended and "paced" not in stateful.per_stream and "paced" not in tracker.trackers
    assert "paced" not in detector._since_detection and "paced" not in service.context.redetect.pending()
    assert [s["id"] for s in service.streams()] == ["short"]
    assert "paced" not in service.metrics.streams and 'stream="paced"' not in _metrics_text(service)
    assert all(k[0] != "paced" for plugin in service._sinks for k in plugin.counters)

    # the id is free again: a new stream under it starts from scratch and completes
    service.add_source({"type": "file", "id": "paced", "path": str(clips["short"])})
    assert wait_state(service, "paced", ("ended",))["frames"] == 10
    with pytest.raises(KeyError):
        service.remove_source("nope")


def test_live_stream_gets_end_of_stream_when_removed(service):
    port = free_port()
    threading.Thread(target=lambda: _quietly(serve_mpegts, port, 250), daemon=True).start()
    stateful = next(s for s in service._stages if isinstance(s, StatefulStage))
    service.add_source({"type": "stream", "id": "cam", "url": f"tcp://127.0.0.1:{port}", "reconnect_initial_s": 0.1})
    wait_state(service, "cam", ("running",))
    final = service.remove_source("cam")
    assert final["removed"] and final["frames"] > 0 and "cam" in stateful.ended and "cam" not in stateful.per_stream

    # a stream that never connects: reconnecting, and removable at once
    service.add_source({"type": "stream", "id": "dead", "url": f"tcp://127.0.0.1:{free_port()}",
                        "reconnect_initial_s": 5})
    wait_state(service, "dead", ("reconnecting",))
    start = time.monotonic()
    assert service.remove_source("dead")["removed"] and time.monotonic() - start < 3


def test_add_source_before_running_is_refused():
    pipeline = Pipeline(parse_config({"stages": [], "sinks": []}, PLUGINS, require_sources=False), serve=True)
    with pytest.raises(NotRunning, match="starting"):
        pipeline.add_source({"type": "file", "id": "a", "path": "x.mp4"})


def test_run_still_requires_sources_and_serve_does_not():
    with pytest.raises(ConfigError, match="at least one"):
        parse_config({"stages": []}, PLUGINS)
    assert parse_config({"stages": []}, PLUGINS, require_sources=False).sources == []


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except OSError:  # the client went away
        pass


def _metrics_text(pipeline: Pipeline) -> str:
    from prometheus_client import generate_latest

    return generate_latest(pipeline.metrics.registry).decode()


# ------------------------------------------------------------------------------ HTTP API and CLI


def _call(url: str, method: str = "GET", body: dict | None = None, token: str | None = None) -> tuple[int, object]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if response.headers.get_content_type() == "application/json" else raw
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_api_token_probes_and_cli(service, clips, tmp_path, capsys):
    (tmp_path / "token").write_text("s3cret\n")
    api = ApiServer(service, "127.0.0.1", 0, token="s3cret")
    api.start()
    try:
        base = api.url
        assert _call(base + "/streams")[0] == 401
        assert _call(base + "/streams", token="wrong")[0] == 401
        assert _call(base + "/streams", token="s3cret") == (200, [])
        assert _call(base + "/healthz") == (200, b"ok\n") and _call(base + "/ready")[0] == 200  # probes: open
        code, error = _call(base + "/streams", "POST", ["not", "a", "table"], token="s3cret")
        assert code == 422 and "expected a JSON object" in error["detail"]

        cli = ["--api", f"127.0.0.1:{api.port}", "--token-file", str(tmp_path / "token")]
        assert main(["streams", "add", "clip", "file", f"path={clips['short']}", "max_frames=5", *cli]) == 0
        assert "added clip" in capsys.readouterr().out
        assert main(["streams", "add", "clip", "file", f"path={clips['short']}", *cli]) == 2
        assert "'clip' in use" in capsys.readouterr().err
        assert main(["streams", "add", "bad", "file", "pth=x", *cli]) == 2
        assert "source.pth: unknown key" in capsys.readouterr().err
        wait_state(service, "clip", ("ended",))
        assert main(["streams", "ls", *cli]) == 0
        out = capsys.readouterr().out
        assert "clip" in out and "ended" in out and " 5 " in out
        assert main(["streams", "rm", "clip", *cli]) == 0
        assert "removed clip: 5 frames" in capsys.readouterr().out
        assert main(["streams", "ls", "--api", f"127.0.0.1:{api.port}"]) == 2  # no token
        assert "unauthorized" in capsys.readouterr().err
    finally:
        api.stop()
    assert main(["streams", "ls", "--api", f"127.0.0.1:{free_port()}"]) == 1
    assert "no answer from the control API" in capsys.readouterr().err


def test_non_loopback_api_needs_a_token_or_allow_insecure(service):
    with pytest.raises(InsecureAddress, match="--token-file"):
        ApiServer(service, "0.0.0.0", 0)
    ApiServer(service, "0.0.0.0", 0, token="t").socket.close()
    ApiServer(service, "0.0.0.0", 0, allow_insecure=True).socket.close()
    assert parse_address("127.0.0.1:8080") == ("127.0.0.1", 8080) and parse_address("[::1]:9") == ("::1", 9)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address("8080")
