"""``python -m engine serve`` as a real process: streams added and removed over the control API while it
runs, their results counted in the files a ``file_sink`` writes, the status ``GET /streams`` reports,
the ``stream`` label of ``/metrics``, and the process's memory over many add/remove cycles."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from clips import make_clip
from test_sources import free_port, serve_mpegts

from engine.api_client import request
from engine.client import read_messages
from engine.messages import EndOfStream, FrameMessage

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "astronaut.mp4"  # 225 frames

CONFIG = """
[pipeline]
log_interval_s = 2.0

[[stages]]
type = "centerface"
input_size = 160
detect_every = 3

[[stages]]
type = "tracker"

[[sinks]]
type = "file_sink"
directory = "out"
"""


def call(api: str, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    return request(api, method, path, body, timeout=60)


def streams(api: str) -> dict[str, dict]:
    code, listed = call(api, "GET", "/streams")
    assert code == 200
    return {s["id"]: s for s in listed}


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert proc is None or proc.poll() is None, f"serve exited with {proc.returncode} while waiting for {what}"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def file_counts(path: Path) -> tuple[int, list[EndOfStream]]:
    msgs = list(read_messages(path))
    return sum(isinstance(m, FrameMessage) for m in msgs), [m for m in msgs if isinstance(m, EndOfStream)]


@pytest.fixture
def served(tmp_path):
    """A ``serve`` process with no sources (loopback API), its API URL, and the folder of its config."""
    (tmp_path / "serve.toml").write_text(CONFIG)
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", str(tmp_path / "serve.toml"), "--api",
                             f"127.0.0.1:{port}"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            try:
                return call(api, "GET", "/streams")[0] == 200 and call(api, "GET", "/ready")[0] == 200
            except OSError:  # not listening yet
                return False

        wait_for(ready, 120, "the API to be ready", proc)
        yield proc, api, tmp_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


@pytest.mark.timeout(600)
def test_serve_adds_and_removes_streams_at_run_time(served):
    proc, api, tmp_path = served
    assert streams(api) == {}  # started with no sources, still running
    short = make_clip(tmp_path / "short.mp4", frames=40, size=(160, 120))
    long = make_clip(tmp_path / "long.mp4", frames=200, size=(160, 120))
    live_port = free_port()

    def live_server() -> None:
        try:
            serve_mpegts(live_port, 60)
        except OSError:  # the source hung up after its max_frames
            pass

    threading.Thread(target=live_server, daemon=True).start()

    specs = [
        {"type": "file", "id": "a", "path": str(SAMPLE)},
        {"type": "file", "id": "b", "path": "short.mp4"},  # relative: the config's folder, as in [[sources]]
        {"type": "file", "id": "c", "path": str(long), "realtime": True},  # 8 s paced: removed mid-run
        {"type": "stream", "id": "live", "url": f"tcp://127.0.0.1:{live_port}", "max_frames": 25},
    ]
    for spec in specs:
        code, status = call(api, "POST", "/streams", spec)
        assert code == 201, status
        assert status["id"] == spec["id"] and status["state"] in ("starting", "running", "reconnecting")

    # refused: an id in use (409), an invalid spec (422, naming the key), a missing input (400)
    code, error = call(api, "POST", "/streams", {"type": "file", "id": "a", "path": str(short)})
    assert code == 409 and "'a' in use" in error["detail"]
    code, error = call(api, "POST", "/streams", {"type": "file", "id": "d", "path": str(short), "fps": 3})
    assert code == 422 and "source.fps: unknown key" in error["detail"]
    code, error = call(api, "POST", "/streams", {"type": "file", "id": "d", "path": "missing.mp4"})
    assert code == 400 and "source.path" in error["detail"] and "does not exist" in error["detail"]

    # c runs (paced): its status says so, then it is removed mid-run
    running = wait_for(lambda: (s := streams(api).get("c")) and s["frames"] >= 25 and s, 60, "c to run", proc)
    assert running["state"] == "running" and running["fps"] > 5 and running["uri"] == str(long)
    code, removed = call(api, "DELETE", "/streams/c")
    assert code == 200 and removed["removed"] and removed["state"] == "ended"
    assert 25 <= removed["frames"] < 200
    assert "c" not in streams(api)
    metrics = urllib.request.urlopen(api + "/metrics", timeout=10).read().decode()
    assert 'stream="c"' not in metrics  # its series went with it

    def all_ended():
        listed = streams(api)
        return all(listed[i]["state"] in ("ended", "failed") for i in ("a", "b", "live")) and listed

    listed = wait_for(all_ended, 240, "a, b and live to end", proc)
    out = tmp_path / "out"
    for sid, total in (("a", 225), ("b", 40)):  # the others are complete, whatever c did
        frames, eos = file_counts(out / f"{sid}.msgpack")
        assert frames == total and len(eos) == 1 and eos[0].frames == total
        assert listed[sid]["state"] == "ended" and listed[sid]["frames"] == total and listed[sid]["errors"] == 0
        assert listed[sid]["faces"] > 0 and listed[sid]["last_error"] is None
    frames, eos = file_counts(out / "live.msgpack")
    assert listed["live"]["state"] == "ended" and listed["live"]["type"] == "stream"
    assert frames == listed["live"]["frames"] == eos[0].frames and frames + listed["live"]["drops"] == 25
    frames, eos = file_counts(out / "c.msgpack")  # the removed one: drained, with its end-of-stream
    assert frames == removed["frames"] and len(eos) == 1 and eos[0].frames == frames
    metrics = urllib.request.urlopen(api + "/metrics", timeout=10).read().decode()
    assert 'engine_stream_frames_total{pipeline="pipeline",stream="a"} 225.0' in metrics

    for sid in ("a", "b", "live"):  # ended ones stay listed until removed; removing them is immediate
        code, removed = call(api, "DELETE", f"/streams/{sid}")
        assert code == 200 and removed["removed"]
    assert streams(api) == {}
    assert call(api, "DELETE", "/streams/a")[0] == 404

    # memory: 20 add/remove cycles of a short clip (removed mid-run or after it ended) stay flat
    tiny = make_clip(tmp_path / "tiny.mp4", frames=12, size=(160, 120))
    rss = []
    for cycle in range(20):
        assert call(api, "POST", "/streams", {"type": "file", "id": f"cycle{cycle % 3}", "path": str(tiny)})[0] == 201
        if cycle % 2:
            wait_for(lambda: streams(api)[f"cycle{cycle % 3}"]["state"] == "ended", 60, "a cycle to end", proc)
        code, removed = call(api, "DELETE", f"/streams/cycle{cycle % 3}")
        assert code == 200 and removed["removed"]
        rss.append(rss_kib(proc.pid))
    assert streams(api) == {}
    growth_mib = (rss[-1] - rss[4]) / 1024
    print(f"serve RSS after cycle 5: {rss[4] / 1024:.1f} MiB, after 20: {rss[-1] / 1024:.1f} MiB "
          f"({growth_mib:+.1f} MiB)")
    assert growth_mib < 8, rss

    proc.send_signal(signal.SIGTERM)  # drains and exits 0
    assert proc.wait(60) == 0
