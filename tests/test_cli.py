"""``python -m engine``: validate, plugins, SIGTERM mid-run (exit 0, complete files), subscribe."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clips import make_clip

from engine.assets import REPO_ROOT
from engine.client import read_messages
from engine.config import parse_config
from engine.messages import EndOfStream, FrameMessage
from engine.runtime import Pipeline


def engine(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, **kwargs
    )


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("cli") / "face.mp4", frames=100, fps=25)


def test_validate_ok_and_errors(tmp_path):
    ok = engine("validate", "pipeline.toml")
    assert ok.returncode == 0 and ok.stdout.startswith("OK: pipeline.toml"), ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[[sources]]\ntype = "file"\nid = "a"\npath = "x.mp4"\nspeed = 2\n[[sinks]]\ntype = "zmq_pub"\nhwm = -1\n')
    res = engine("validate", str(bad))
    assert res.returncode == 2
    assert "sources[0].speed: unknown key; allowed keys: path, realtime, loop" in res.stderr
    assert "sinks[0].hwm: Input should be greater than or equal to 0" in res.stderr


def test_plugins_lists_roles_options_and_descriptions():
    res = engine("plugins")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for name in ("file", "stream", "webcam", "centerface", "zmq_pub", "zmq_push", "file_sink"):
        assert f"\n  {name}  (" in out
    assert out.index("sources:") < out.index("stages:") < out.index("sinks:")
    assert "score_threshold: float = default 0.5  -- Minimum heatmap score" in out
    data = json.loads(engine("plugins", "--json").stdout)
    (pub,) = [p for p in data["sink"] if p["name"] == "zmq_pub"]
    hwm = next(o for o in pub["options"] if o["name"] == "hwm")
    assert hwm == {"name": "hwm", "type": "int", "required": False, "default": 1000, "description": hwm["description"]}


def test_sigterm_mid_run_exits_0_with_complete_files(clip, tmp_path):
    config = tmp_path / "p.toml"
    config.write_text(
        f"""
[pipeline]
log_interval_s = 0.5
[[sources]]
type = "file"
id = "cam"
path = "{clip}"
realtime = true   # 100 frames at 25 fps: 4 s, so the signal lands mid-run
[[stages]]
type = "centerface"
input_size = 320
[[sinks]]
type = "file_sink"
directory = "{tmp_path / 'mp'}"
[[sinks]]
type = "file_sink"
directory = "{tmp_path / 'js'}"
format = "jsonl"
"""
    )
    summary_json = tmp_path / "summary.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "run", str(config), "--summary-json", str(summary_json)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "js" / "cam.jsonl.partial").exists() and time.monotonic() < deadline:  # written under a temp name
        time.sleep(0.05)
    time.sleep(1.0)  # some frames in
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr[-3000:]
    assert "SIGTERM: stopping sources" in stderr and "stream cam:" in stdout
    summary = json.loads(summary_json.read_text())
    n = summary["streams"]["cam"]["frames"]
    assert summary["stopped"] and not summary["aborted"] and 5 <= n < 100, summary
    for path in (tmp_path / "mp" / "cam.msgpack", tmp_path / "js" / "cam.jsonl"):
        msgs = list(read_messages(path))
        assert isinstance(msgs[-1], EndOfStream) and msgs[-1].frames == n, path
        frames = msgs[:-1]
        assert all(isinstance(m, FrameMessage) for m in frames)
        indices = [m.index for m in frames]
        assert len(indices) == n and indices == sorted(set(indices)) and indices[0] == 0
        assert sum(len(m.faces) for m in frames) >= n - 2


def test_subscribe_saves_what_arrives(clip, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "got.jsonl"
    sub = subprocess.Popen(
        [sys.executable, "-m", "engine", "subscribe", f"tcp://127.0.0.1:{port}", "--pull", "--bind",
         "--save", str(out), "--count", "30", "--timeout", "60"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ,
    )
    doc = {
        "sources": [{"type": "file", "id": "cam", "path": str(clip), "max_frames": 30}],
        "stages": [{"type": "centerface", "input_size": 320, "batch_size": 4}],
        # connect mode: PUSH queues until the subscriber has bound, nothing is lost
        "sinks": [{"type": "zmq_push", "endpoint": f"tcp://127.0.0.1:{port}", "mode": "connect", "linger_ms": 500}],
    }
    summary = Pipeline(parse_config(doc)).run(handle_signals=False)
    stdout, stderr = sub.communicate(timeout=60)
    assert sub.returncode == 0, stderr
    assert "received 30 frame message(s)" in stderr
    frames = [m for m in read_messages(out) if isinstance(m, FrameMessage)]
    assert [m.index for m in frames] == list(range(30)) and summary["streams"]["cam"]["frames"] == 30
    assert all(len(m.faces) == 1 and m.faces[0].keypoints.shape == (5, 2) for m in frames[2:])


def test_help_is_plain_text_with_the_exit_codes(capsys):
    import re

    from engine.cli import build_parser

    parser = build_parser()
    texts = [parser.format_help()]
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    texts += [p.format_help() for p in sub.choices.values()]
    for text in texts:
        assert not re.search(r"``|:class:|:func:|\*\*\w", text), text  # no reST markup (a glob's /**/ is fine)
    assert "exit codes:" in texts[0] and "\n  3    some inputs failed" in texts[0]
