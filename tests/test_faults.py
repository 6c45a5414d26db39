"""Bad inputs, faults and hostile messages (issue 14): each case asserts the exit code, the message and
the counts. Most run the CLI in-process (``engine.cli.main``) on tiny clips; a few need a real process
(SIGKILL, SIGINT)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import msgpack
import numpy as np
import pytest
import zmq
from clips import make_clip, make_corrupt_file

from engine.assets import REPO_ROOT
from engine.cli import main
from engine.client import Subscriber, read_messages
from engine.config import parse_config
from engine.frame import Face, Frame
from engine.messages import EndOfStream, FrameMessage, MessageError, decode, encode, encode_eos
from engine.plugin import PluginOptions, Stage, discover
from engine.runtime import Pipeline
from plugins.sinks.file_sink import FileSink
from plugins.sources.pyav_source import FileSource, StreamSource
from test_sources import free_port, serve_mpegts


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    good = make_clip(d / "good.mp4", frames=12, size=(64, 48), face=False)
    sixty = make_clip(d / "sixty.mp4", frames=60, size=(160, 120))
    return {"dir": d, "good": good, "sixty": sixty, "damaged": damage(sixty, d / "damaged.mp4", [30]),
            "damaged3": damage(sixty, d / "damaged3.mp4", [10, 25, 40])}


def damage(src: Path, dst: Path, packets: list[int]) -> Path:
    """A copy of ``src`` with the payload of the given video packets overwritten (one damaged region each)."""
    data = bytearray(src.read_bytes())
    with av.open(str(src)) as c:
        spans = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    for i in packets:
        pos, size = spans[i]
        data[pos + 4:pos + size] = b"\xff" * (size - 4)
    dst.write_bytes(bytes(data))
    return dst


def zero_frame_clip(path: Path) -> Path:
    """A container with a video stream and no frames (a YUV4MPEG header alone)."""
    path.write_bytes(b"YUV4MPEG2 W64 H48 F25:1 Ip A1:1 C420jpeg\n")
    return path


def toml_value(v) -> str:
    return json.dumps(str(v)) if isinstance(v, (str, Path)) else json.dumps(v) if not isinstance(v, bool) else str(v).lower()


def write_config(path: Path, sources: list[dict], sinks: list[dict] | None = None, stages: list[dict] | None = None) -> Path:
    lines = []
    for section, tables in (("sources", sources), ("stages", stages or []), ("sinks", sinks or [])):
        for t in tables:
            lines.append(f"[[{section}]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in t.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def run_cfg(capsys, tmp_path, sources, sinks=None, stages=None) -> tuple[int, str, str, dict]:
    cfg = write_config(tmp_path / "p.toml", sources, sinks, stages)
    code, out, err = cli(capsys, "run", cfg, "--summary-json", tmp_path / "s.json", "--log-level", "WARNING")
    summary = json.loads((tmp_path / "s.json").read_text()) if (tmp_path / "s.json").exists() else {}
    return code, out, err, summary


def file_src(path, sid: str = "cam", **kw) -> dict:
    return {"type": "file", "id": sid, "path": str(path), **kw}


# ------------------------------------------------------------------------------- exit code policy


def test_all_inputs_good_exits_0(capsys, tmp_path, media):
    code, out, err, s = run_cfg(capsys, tmp_path, [file_src(media["good"])], [{"type": "file_sink", "directory": tmp_path / "o"}])
    assert code == 0 and s["streams"]["cam"]["frames"] == 12 and not s["source_errors"]
    assert "input(s) failed" not in err


@pytest.mark.parametrize("kind", ["missing_file", "glob_nothing", "non_video_folder", "non_video_file", "zero_frames",
                                  "garbage"])
def test_unusable_input_exits_3_naming_it(capsys, tmp_path, kind):
    path, expect = {
        "missing_file": (tmp_path / "nope.mp4", "cannot open"),
        "glob_nothing": (tmp_path / "none" / "*.mp4", "no video files match"),
        "non_video_folder": (tmp_path / "docs", "no video files match"),
        "non_video_file": (tmp_path / "notes.txt", "cannot open"),
        "zero_frames": (tmp_path / "empty.y4m", "no decodable frames"),
        "garbage": (tmp_path / "garbage.mp4", "cannot open"),
    }[kind]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x")
    (tmp_path / "notes.txt").write_text("not a video")
    zero_frame_clip(tmp_path / "empty.y4m")
    make_corrupt_file(tmp_path / "garbage.mp4")
    code, out, err, s = run_cfg(capsys, tmp_path, [file_src(path)])
    assert code == 3, err
    (errors,) = s["source_errors"].values()
    assert len(errors) == 1 and expect in errors[0]
    assert f"source cam: " in out and expect in out
    assert "error: 1 input(s) failed or were unusable" in err and "exit code 3" in err
    assert s["frames"] == 0


def test_one_bad_input_among_good_ones_exits_3_and_processes_the_rest(capsys, tmp_path, media):
    code, out, err, s = run_cfg(capsys, tmp_path, [file_src(media["good"], "a"), file_src(tmp_path / "gone.mp4", "b")])
    assert code == 3 and s["streams"]["a"]["frames"] == 12 and list(s["source_errors"]) == ["b"]
    assert "gone.mp4" in s["source_errors"]["b"][0]


def test_dead_url_exits_3(capsys, tmp_path):
    src = {"type": "stream", "id": "live", "url": f"tcp://127.0.0.1:{free_port()}", "max_attempts": 2,
           "reconnect_initial_s": 0.01}
    code, out, err, s = run_cfg(capsys, tmp_path, [src])
    assert code == 3 and "gave up after 2 failed attempts" in s["source_errors"]["live"][0]


def test_unreadable_folder_is_a_clear_error_and_exit_3(capsys, tmp_path, monkeypatch, media):
    folder = tmp_path / "locked"
    folder.mkdir()
    real = Path.iterdir

    def iterdir(self):
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    code, out, err, s = run_cfg(capsys, tmp_path, [file_src(folder)])
    assert code == 3 and "Traceback" not in err
    (msg,) = s["source_errors"]["cam"]
    assert "cannot list" in msg and "Permission denied" in msg and "permissions" in msg


@pytest.mark.parametrize("name", ["take[1].mp4", "a*b.mp4", "what?.mp4"])
def test_literal_file_names_with_glob_characters(capsys, tmp_path, media, name):
    clip = tmp_path / name
    clip.write_bytes(media["good"].read_bytes())
    code, out, err, s = run_cfg(capsys, tmp_path, [file_src(clip)])
    assert code == 0 and s["streams"]["cam"]["frames"] == 12


def test_glob_still_works_when_no_literal_file(tmp_path, media):
    for n in ("x1", "x2"):
        (tmp_path / f"{n}.mp4").write_bytes(media["good"].read_bytes())
    source = FileSource(FileSource.Options(path=str(tmp_path / "x[12].mp4")), "s")
    assert [p.name for p in source.paths()] == ["x1.mp4", "x2.mp4"]


@pytest.mark.parametrize("kind", ["folder", "not_utf8", "missing", "bad_toml"])
def test_bad_config_path_exits_2_with_one_line(capsys, tmp_path, kind):
    path = tmp_path / "c.toml"
    if kind == "folder":
        path.mkdir()
    elif kind == "not_utf8":
        path.write_bytes(b"[pipeline]\nname = \"\xff\xfe\"\n")
    elif kind == "bad_toml":
        path.write_text("[[sources]\n")
    code, out, err = cli(capsys, "run", path)
    assert code == 2 and "Traceback" not in err
    assert {"folder": "is a folder", "not_utf8": "not UTF-8", "missing": "file not found",
            "bad_toml": "not valid TOML"}[kind] in err


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run"])
    assert exc.value.code == 2


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("facelift-engine ")


# ------------------------------------------------------------------------------- decode resilience


def test_damaged_packet_is_skipped_and_counted(capsys, tmp_path, media):
    code, out, err, s = run_cfg(capsys, tmp_path, [file_src(media["damaged"])], [{"type": "file_sink", "directory": tmp_path / "o"}])
    st = s["streams"]["cam"]
    assert code == 0 and st["frames"] == 59 and st["decode_errors"] == 1  # stopping at the packet gave 28-29
    assert "1 decode errors" in out
    msgs = list(read_messages(tmp_path / "o" / "cam.msgpack"))
    assert msgs[-1].frames == 59 and msgs[-1].lost["decode_errors"] == 1


def test_three_damaged_regions_counted(media):
    source = FileSource(FileSource.Options(path=str(media["damaged3"])), "cam")
    frames = list(source.frames(threading.Event()))
    assert len(frames) == 57 and source.counters["cam", "decode_errors"] == 3 and not source.errors
    assert [f.index for f in frames] == list(range(57))


def test_hopeless_file_gives_up_after_many_bad_packets(tmp_path, media, monkeypatch):
    import plugins.sources.pyav_source as mod

    monkeypatch.setattr(mod, "MAX_BAD_PACKETS_IN_A_ROW", 2)
    bad = damage(media["sixty"], tmp_path / "bad.mp4", list(range(20, 30)))
    source = FileSource(FileSource.Options(path=str(bad)), "cam")
    frames = list(source.frames(threading.Event()))
    assert 15 <= len(frames) <= 20 and source.counters["cam", "decode_errors"] == 2
    assert "decoding failed after" in source.errors[0] and "rest skipped" in source.errors[0]


def test_zero_frame_container_is_reported(tmp_path):
    source = FileSource(FileSource.Options(path=str(zero_frame_clip(tmp_path / "z.y4m"))), "z")
    assert list(source.frames(threading.Event())) == []
    assert "no decodable frames" in source.errors[0] and "z.y4m" in source.errors[0]


def test_live_stream_cut_and_reconnect_is_counted_and_pts_never_go_back():
    port = free_port()

    def server() -> None:
        serve_mpegts(port, 15)
        time.sleep(0.3)
        serve_mpegts(port, 15)

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    options = StreamSource.Options(url=f"tcp://127.0.0.1:{port}", reconnect_initial_s=0.05, reconnect_max_s=0.2,
                                   max_attempts=3, read_timeout_s=3)
    source = StreamSource(options, "live")
    frames = list(source.frames(threading.Event()))
    thread.join(5)
    pts = [f.pts for f in frames]
    assert {f.meta["connection"] for f in frames} == {1, 2} and np.all(np.diff(pts) > 0)
    assert source.counters["live", "reconnects"] == 1 and source.counters["live", "outages"] == 2
    assert "gave up after 3 failed attempts" in source.errors[-1]


# ------------------------------------------------------------------------------- file sink


def test_overwrite_false_fails_once_at_start(capsys, tmp_path, media):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "cam.msgpack").write_bytes(b"old")
    code, out, err, s = run_cfg(capsys, tmp_path, [file_src(media["good"])],
                                [{"type": "file_sink", "directory": tmp_path / "o", "overwrite": False}])
    assert code == 2 and err.count("exists") == 1 and "sinks[0].overwrite:" in err and not s
    assert (tmp_path / "o" / "cam.msgpack").read_bytes() == b"old"


@pytest.mark.parametrize("ids", [("cam 1", "cam/1"), ("a.b", "a.b.")])
def test_two_streams_one_file_name_refused(capsys, tmp_path, media, ids):
    code, out, err, s = run_cfg(capsys, tmp_path, [file_src(media["good"], ids[0]), file_src(media["good"], ids[1])],
                                [{"type": "file_sink", "directory": tmp_path / "o"}])
    assert code == 2 and "sinks[0].directory:" in err and repr(ids[0]) in err and repr(ids[1]) in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_folder_streams_colliding_after_sanitising_refused(capsys, tmp_path, media):
    (tmp_path / "in").mkdir()
    for name in ("a b.mp4", "a_b.mp4"):
        (tmp_path / "in" / name).write_bytes(media["good"].read_bytes())
    code, out, err, s = run_cfg(capsys, tmp_path, [file_src(tmp_path / "in", "src")],
                                [{"type": "file_sink", "directory": tmp_path / "o"}])
    assert code == 2 and "'src/a b'" in err and "'src/a_b'" in err


def test_complete_file_only_at_final_name(capsys, tmp_path, media):
    code, *_ = run_cfg(capsys, tmp_path, [file_src(media["good"])], [{"type": "file_sink", "directory": tmp_path / "o",
                                                                      "format": "jsonl"}])
    assert code == 0 and sorted(p.name for p in (tmp_path / "o").iterdir()) == ["cam.jsonl"]


def test_aborted_stream_stays_partial(tmp_path):
    sink = FileSink(FileSink.Options(directory=tmp_path))
    sink.start()
    sink.write(Frame(stream_id="cam", index=0, pts=0.0, time=1.0, image=np.zeros((4, 4, 3), np.uint8)))
    sink.close()  # no end-of-stream
    assert [p.name for p in tmp_path.iterdir()] == ["cam.msgpack.partial"]


def test_sigkill_of_run_never_leaves_a_final_name(tmp_path, media):
    cfg = write_config(tmp_path / "p.toml", [file_src(media["sixty"], realtime=True)],
                       [{"type": "file_sink", "directory": tmp_path / "o"}])
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(cfg)], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "o" / "cam.msgpack.partial"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (partial.exists() and partial.stat().st_size > 0):
        time.sleep(0.02)
    proc.kill()
    proc.wait(10)
    assert not (tmp_path / "o" / "cam.msgpack").exists()
    msgs = list(read_messages(partial))  # a reader of the partial file sees frames and no end-of-stream
    assert msgs and not any(isinstance(m, EndOfStream) for m in msgs)


# ------------------------------------------------------------------------------- ZeroMQ losses


class FatStage(Stage):
    """Adds ``faces`` faces with landmarks to each frame (60: ~150 KB messages, so queues fill on loopback),
    taking ``sleep_ms`` per frame (a pace a fast subscriber keeps up with)."""

    name = "fat"

    class Options(PluginOptions):
        faces: int = 60
        sleep_ms: float = 0.0

    def process(self, frames):
        for f in frames:
            time.sleep(self.options.sleep_ms / 1000)
            f.faces = [Face(box=np.zeros(4), score=1.0, keypoints=np.zeros((5, 2)), landmarks_2d=np.zeros((68, 2)),
                            landmarks_3d=np.zeros((68, 3)), landmarks_canonical=np.zeros((68, 3)),
                            confidence=np.zeros(68)) for _ in range(self.options.faces)]
        return frames


class Background:
    def __init__(self, doc: dict, plugins: dict | None = None):
        self.pipeline = Pipeline(parse_config(doc, discover() | (plugins or {})))
        self.summary: dict | None = None
        self.thread = threading.Thread(target=lambda: setattr(self, "summary", self.pipeline.run(handle_signals=False)))
        self.thread.start()

    def join(self, timeout: float = 60) -> dict:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "pipeline did not finish"
        return self.summary


def slow_subscriber(endpoint: str) -> Subscriber:
    """A SUB socket with tiny queues (1 message, 4 KiB kernel buffer) that the test does not read at first."""
    sub = Subscriber(endpoint, hwm=1, timeout_s=10, stop_after_eos=1)
    sub.socket.setsockopt(zmq.RCVBUF, 4096)  # applies to the connection made once the sink binds
    return sub


def test_zmq_pub_slow_subscriber_loses_only_its_own_messages_and_counts_them(media):
    # default drop_policy = "subscriber" (PUB semantics): the slow subscriber's losses do not touch the
    # fast one, the pipeline counts no sink drops, and each subscriber counts its own loss (seq gaps, eos)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    fast_got: list = []
    slow_may_read = threading.Event()

    def read_fast(sub: Subscriber) -> None:
        for m in sub:
            fast_got.append(m)
            if isinstance(m, FrameMessage) and m.index == 40:
                slow_may_read.set()

    with slow_subscriber(endpoint) as slow, Subscriber(endpoint, timeout_s=20, stop_after_eos=1) as fast:
        reader = threading.Thread(target=read_fast, args=(fast,))
        reader.start()
        run = Background({"sources": [file_src(media["sixty"])], "stages": [{"type": "fat", "faces": 150, "sleep_ms": 30}],
                          "sinks": [{"type": "zmq_pub", "endpoint": endpoint, "hwm": 2, "wait_for_subscribers": 2,
                                     "linger_ms": 20000, "eos_timeout_ms": 20000}]}, {"fat": FatStage})
        assert slow_may_read.wait(30)  # the slow one did not read while 41 frames were published
        slow_got = list(slow)
        reader.join(30)
        summary = run.join()
    assert summary["streams"]["cam"]["frames"] == 60 and not summary["streams"]["cam"].get("sink_drops")
    assert not any(summary["sink_drops"].values())
    for sub, got in ((fast, fast_got), (slow, slow_got)):
        frames = [m for m in got if isinstance(m, FrameMessage)]
        seqs = [m.seq for m in frames]
        assert seqs == sorted(seqs) and sub.received["cam"] == len(frames)
        eos = [m for m in got if isinstance(m, EndOfStream)]
        # a subscriber still behind when the stream ends may miss the marker too (PUB semantics); then
        # its known losses are the gaps it saw, else everything the marker says was sent and never arrived
        sent = eos[0].frames if eos else seqs[-1] + 1
        assert sub.lost["cam"] == sent - len(frames) and (sub.ended == {"cam"}) == bool(eos)
        assert all(m.frames == 60 and m.dropped == 0 for m in eos)
    assert fast.ended == {"cam"} and fast.lost["cam"] == 0 and fast.received["cam"] == 60
    assert slow.lost["cam"] > 0 and slow.received["cam"] + slow.lost["cam"] <= 60


def test_subscriber_counts_seq_gaps_and_the_tail_from_eos():
    with Subscriber("tcp://127.0.0.1:*", kind="pull", mode="bind", timeout_s=5, stop_after_eos=1) as sub:
        push = _push(sub.endpoint)
        for seq in (0, 1, 4, 5):  # 2 and 3 lost on the way
            push.send_multipart([b"c", encode(Frame(stream_id="c", index=seq, pts=None, time=0.0,
                                                    image=np.zeros((2, 2, 3), np.uint8)), seq=seq)])
        got = [sub.recv() for _ in range(4)]
        assert sub.lost == {"c": 2} and sub.received == {"c": 4} and not sub.ended and got[2].seq == 4
        push.send_multipart([b"c", encode_eos("c", 8)])  # 6 and 7 lost too: only the marker can say
        assert isinstance(sub.recv(), EndOfStream) and sub.lost == {"c": 4} and sub.ended == {"c"}
        push.close(0)


def test_zmq_pub_drop_policy_all_counts_drops_in_the_pipeline(media):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with slow_subscriber(endpoint) as sub:
        run = Background({"sources": [file_src(media["sixty"])], "stages": [{"type": "fat"}],
                          "sinks": [{"type": "zmq_pub", "endpoint": endpoint, "hwm": 1, "wait_for_subscribers": 1,
                                     "eos_timeout_ms": 10000, "drop_policy": "all"}]}, {"fat": FatStage})
        time.sleep(1.5)  # the subscriber does not read: the publisher's queue fills
        got = [m for m in sub]
    summary = run.join()
    frames = [m for m in got if isinstance(m, FrameMessage)]
    (eos,) = [m for m in got if isinstance(m, EndOfStream)]
    dropped = summary["streams"]["cam"]["sink_drops"]
    assert dropped > 0 and eos.dropped == dropped and list(summary["sink_drops"].values()) == [dropped]
    assert eos.frames + eos.dropped == 60 and len(frames) == eos.frames  # nothing lost without being counted
    assert sub.lost["cam"] == 0  # what was sent arrived; the losses are the pipeline's count


def test_zmq_push_without_receiver_stops_on_request(media):
    run = Background({"sources": [file_src(media["good"])],
                      "sinks": [{"type": "zmq_push", "endpoint": f"tcp://127.0.0.1:{free_port()}", "hwm": 1,
                                 "linger_ms": 300}]})
    time.sleep(1.0)
    assert run.thread.is_alive()  # lossless: waiting for a receiver
    t0 = time.monotonic()
    run.pipeline.request_stop()
    summary = run.join(10)
    assert time.monotonic() - t0 < 5 and summary["stopped"]
    (drops,) = summary["sink_drops"].values()
    assert drops >= 1 and summary["streams"]["cam"]["sink_drops"] == drops


def test_zmq_push_sigint_stops_the_cli(tmp_path, media):
    cfg = write_config(tmp_path / "p.toml", [file_src(media["good"])],
                       [{"type": "zmq_push", "endpoint": f"tcp://127.0.0.1:{free_port()}", "hwm": 1, "linger_ms": 200}])
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(cfg)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0 and "SIGINT: stopping" in err and "Traceback" not in err
    assert re.search(r"stream cam: \d+ frames.*\d+ sink drops", out), out


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:5599", "tcp://*:5599", "tcp://192.168.1.10:5599"])
def test_non_loopback_bind_without_keys_refused(capsys, tmp_path, media, endpoint):
    cfg = write_config(tmp_path / "p.toml", [file_src(media["good"])], [{"type": "zmq_pub", "endpoint": endpoint}])
    code, out, err = cli(capsys, "validate", cfg)
    assert code == 2 and "sinks[0]" in err and "curve_secret" in err and "allow_insecure" in err
    write_config(cfg, [file_src(media["good"])], [{"type": "zmq_pub", "endpoint": endpoint, "allow_insecure": True}])
    assert cli(capsys, "validate", cfg)[0] == 0


# ------------------------------------------------------------------------------- hostile messages


def _frame_obj() -> dict:
    f = Frame(stream_id="c", index=1, pts=0.1, time=1.0, image=np.zeros((4, 6, 3), np.uint8),
              faces=[Face(box=np.zeros(4), score=0.5, keypoints=np.zeros((5, 2)))])
    return msgpack.unpackb(encode(f), raw=False)


def _arr(obj: dict, **kw) -> dict:
    obj["faces"][0]["box"].update(kw)
    return obj


HOSTILE = {
    "object_dtype": lambda o: _arr(o, dtype="|O"),
    "bad_dtype": lambda o: _arr(o, dtype="nonsense"),
    "wide_dtype": lambda o: _arr(o, dtype="<c16"),
    "negative_shape": lambda o: _arr(o, shape=[-1, 4]),
    "shape_mismatch": lambda o: _arr(o, shape=[3]),
    "odd_byte_count": lambda o: _arr(o, data=b"\x00" * 15),
    "data_not_bytes": lambda o: _arr(o, data="abcd"),
    "shape_not_list": lambda o: _arr(o, shape=4),
    "shape_strings": lambda o: _arr(o, shape=["x"]),
    "array_not_map": lambda o: _arr(o) and {**o, "faces": [{**o["faces"][0], "box": [1, 2, 3, 4]}]},
    "face_not_map": lambda o: {**o, "faces": [7]},
    "faces_not_list": lambda o: {**o, "faces": 3},
    "size_wrong": lambda o: {**o, "size": [1]},
    "index_string": lambda o: {**o, "index": "x"},
    "score_string": lambda o: o["faces"][0].update(score="high") or o,
    "no_version": lambda o: {k: v for k, v in o.items() if k != "version"},
    "unknown_type": lambda o: {**o, "type": "nope"},
    "not_a_map": lambda o: [1, 2, 3],
    "eos_bad_lost": lambda o: {"type": "eos", "version": [1, 2], "stream": "c", "frames": 1, "lost": [1]},
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_malformed_message_raises_message_error(case):
    payload = msgpack.packb(HOSTILE[case](_frame_obj()), use_bin_type=True)
    with pytest.raises(MessageError):
        decode(payload)


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01"])
def test_not_msgpack_raises_message_error(data):
    with pytest.raises(MessageError):
        decode(data)


def _push(endpoint: str) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 1000)
    s.connect(endpoint)
    return s


def test_subscriber_skips_and_counts_invalid_messages():
    with Subscriber("tcp://127.0.0.1:*", kind="pull", mode="bind", timeout_s=5, stop_after_eos=1, skip_invalid=True) as sub:
        push = _push(sub.endpoint)
        push.send_multipart([b"c", b"\xc1garbage"])
        push.send_multipart([b"only-one-part"])
        push.send_multipart([b"c", encode(Frame(stream_id="c", index=0, pts=None, time=1.0, image=np.zeros((2, 2, 3), np.uint8)))])
        push.send_multipart([b"c", encode_eos("c", 1)])
        got = list(sub)
        push.close()
    assert [type(m).__name__ for m in got] == ["FrameMessage", "EndOfStream"] and sub.invalid == 2


def test_subscriber_raises_message_error_by_default():
    with Subscriber("tcp://127.0.0.1:*", kind="pull", mode="bind", timeout_s=5) as sub:
        push = _push(sub.endpoint)
        push.send_multipart([b"c", b"\xc1"])
        with pytest.raises(MessageError):
            sub.recv()
        push.close()


def test_subscriber_refuses_oversized_message():
    with Subscriber("tcp://127.0.0.1:*", kind="pull", mode="bind", timeout_s=1.5, max_message_bytes=1 << 20) as sub:
        push = _push(sub.endpoint)
        push.send_multipart([b"c", b"\x00" * (4 << 20)])  # 4 MiB against a 1 MiB limit: never delivered
        with pytest.raises(TimeoutError):
            sub.recv()
        push.close(0)


def test_subscribe_cli_survives_a_bad_message(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "engine", "subscribe", f"tcp://127.0.0.1:{port}", "--pull", "--bind",
                             "--eos", "1", "--timeout", "30"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    push = _push(f"tcp://127.0.0.1:{port}")
    push.send_multipart([b"c", msgpack.packb({"type": "frame", "version": [1, 2], "faces": 1})])
    push.send_multipart([b"c", encode(Frame(stream_id="c", index=0, pts=None, time=time.time(), image=np.zeros((2, 2, 3), np.uint8)))])
    push.send_multipart([b"c", encode_eos("c", 1, {"decode_errors": 2}, dropped=3)])
    out, err = proc.communicate(timeout=60)
    push.close()
    assert proc.returncode == 0, err
    assert "received 1 frame message(s), 1 invalid message(s) skipped" in err
    assert "c end of stream (1 frames sent, 1 received, 0 lost here, 3 dropped by the sink, upstream: decode_errors 2)" in out


# ------------------------------------------------------------------------------- validate


def _validate(capsys, tmp_path, sources, stages=None, sinks=None) -> tuple[int, str]:
    cfg = write_config(tmp_path / "v.toml", sources, sinks if sinks is not None else [{"type": "zmq_pub"}], stages)
    code, out, err = cli(capsys, "validate", cfg)
    return code, out + err


def test_validate_ok(capsys, tmp_path, media):
    code, text = _validate(capsys, tmp_path, [file_src(media["good"])], [{"type": "centerface"}, {"type": "landmarks"}])
    assert code == 0 and text.startswith("OK:")


@pytest.mark.parametrize("path, expect", [("missing.mp4", "does not exist"), ("none/*.mp4", "nothing matches"),
                                          ("emptydir", "nothing matches")])
def test_validate_missing_input(capsys, tmp_path, path, expect):
    (tmp_path / "emptydir").mkdir()
    code, text = _validate(capsys, tmp_path, [file_src(path)])
    assert code == 2 and f"sources[0]: path: " in text and expect in text


def test_validate_missing_bundle(capsys, tmp_path, media):
    code, text = _validate(capsys, tmp_path, [file_src(media["good"])],
                           [{"type": "centerface"}, {"type": "landmarks", "bundle": "no_such_bundle"}])
    assert code == 2 and "stages[1].bundle:" in text and "no_such_bundle does not exist" in text


def test_validate_stage_order(capsys, tmp_path, media):
    code, text = _validate(capsys, tmp_path, [file_src(media["good"])], [{"type": "landmarks"}, {"type": "centerface"}])
    assert code == 2 and "stages[0].type: 'landmarks' needs faces from stages[1]" in text


def test_run_refuses_stage_order_too(capsys, tmp_path, media):
    code, out, err, s = run_cfg(capsys, tmp_path, [file_src(media["good"])], stages=[{"type": "tracker"}, {"type": "centerface"}])
    assert code == 2 and "stages[0].type: 'tracker' needs faces" in err and not s


def test_validate_no_sinks_warns(capsys, tmp_path, media):
    code, text = _validate(capsys, tmp_path, [file_src(media["good"])], sinks=[])
    assert code == 0 and "warning: sinks: none configured" in text and "1 warning(s)" in text


def test_validate_landmarks_without_detector_warns(capsys, tmp_path, media):
    code, text = _validate(capsys, tmp_path, [file_src(media["good"])], [{"type": "landmarks"}])
    assert code == 0 and "no stage before it detects them" in text


# ------------------------------------------------------------------------------- batch


BATCH_CONFIG = '[[sources]]\ntype = "file"\nid = "unused"\npath = "unused.mp4"\n[[stages]]\ntype = "centerface"\ninput_size = 128\n'


def test_batch_out_is_a_file(capsys, tmp_path, media):
    (tmp_path / "b.toml").write_text(BATCH_CONFIG)
    (tmp_path / "out").write_text("x")
    code, out, err = cli(capsys, "batch", "--config", tmp_path / "b.toml", "--input", media["good"], "--out", tmp_path / "out")
    assert code == 2 and "--out" in err and "is a file" in err


def test_batch_unreadable_input_folder(capsys, tmp_path, monkeypatch):
    (tmp_path / "b.toml").write_text(BATCH_CONFIG)
    (tmp_path / "in").mkdir()
    real = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if self.name == "in" else real(self))
    code, out, err = cli(capsys, "batch", "--config", tmp_path / "b.toml", "--input", tmp_path / "in", "--out", tmp_path / "o")
    assert code == 2 and "cannot list the folder" in err and "Traceback" not in err


@pytest.mark.parametrize("bad_id", ["../../../x", "/etc/passwd", "a/b", "..", ".hidden", "a\\b", ""])
def test_celebvhq_unsafe_clip_ids_rejected(tmp_path, media, bad_id):
    from engine.batch import list_celebvhq

    root = tmp_path / "ds"
    (root / "processed").mkdir(parents=True)
    (root / "processed" / "ok_1.mp4").write_bytes(media["good"].read_bytes())
    (tmp_path / "x.mp4").write_bytes(media["good"].read_bytes())  # what ../../../x-style ids could reach
    (root / "celebvhq_info.json").write_text(json.dumps({"clips": {"ok_1": {}, bad_id: {}}}))
    clips = list_celebvhq(root)
    assert [c.clip_id for c in clips.clips] == ["ok_1"] and clips.rejected == [bad_id] and clips.source["rejected"] == 1


def test_batch_ctrl_c_exits_cleanly(tmp_path, media):
    (tmp_path / "b.toml").write_text(BATCH_CONFIG)
    (tmp_path / "in").mkdir()
    for i in range(20):
        (tmp_path / "in" / f"c{i}.mp4").write_bytes(media["sixty"].read_bytes())
    proc = subprocess.Popen([sys.executable, "-m", "engine", "batch", "--config", str(tmp_path / "b.toml"), "--input",
                             str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--workers", "1", "--no-progress"],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "o" / "manifest.json").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
    out, err = proc.communicate(timeout=60)
    print("batch exit code", proc.returncode)
    assert proc.returncode in (130, 0), err[-2000:]  # 0 only if it finished first
    assert "Traceback" not in err, err[-3000:]
    if proc.returncode == 130:
        assert "interrupted: finished clips are kept" in err
        assert json.loads((tmp_path / "o" / "manifest.json").read_text())["runs"][-1]["status"] == "interrupted"


# ------------------------------------------------------------------------------- docs match the wire


def _documented(text: str) -> set[str]:
    return set(re.findall(r"`([a-z_0-9]+)`", re.sub(r"\([^)]*\)", "", text)))


def test_readme_and_design_schema_keys_match_encoded_messages():
    full = Face(box=np.zeros(4), score=1.0, keypoints=np.zeros((5, 2)), track_id=1, landmarks_2d=np.zeros((68, 2)),
                landmarks_3d=np.zeros((68, 3)), landmarks_canonical=np.zeros((68, 3)), rotation=np.eye(3),
                euler=np.zeros(3), translation=np.zeros(3), confidence=np.zeros(68), visibility=np.ones(68, bool),
                extra={"gaze": np.zeros(2, np.float32)})
    frame = msgpack.unpackb(encode(Frame(stream_id="c", index=0, pts=0.0, time=1.0, image=np.zeros((2, 2, 3), np.uint8),
                                         faces=[full]), seq=0), raw=False)  # as a ZeroMQ sink sends it
    eos = msgpack.unpackb(encode_eos("c", 1, {"drops": 0}), raw=False)
    readme = (REPO_ROOT / "README.md").read_text()
    para = readme[readme.index("Messages (schema in"):readme.index("Arrays are")]
    top, faces = para.split(", each with")
    assert _documented(top.split("are msgpack maps:")[1]) == set(frame)
    assert _documented(faces) == set(frame["faces"][0])
    eos_doc = readme[readme.index("an `eos` message ("):]
    assert _documented(eos_doc[eos_doc.index("("):eos_doc.index(")") + 1].strip("()")) == set(eos)
    design = (REPO_ROOT / "docs" / "DESIGN.md").read_text()
    wire = design[design.index("## Messages on the wire"):]
    assert "`index`" in wire and "`frame`, `pts`" not in wire


# ------------------------------------------------------------------------------- CURVE


def test_readme_curve_example_two_processes(tmp_path, media):
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme[readme.index("<!-- curve-example -->"):readme.index("<!-- /curve-example -->")]
    toml = block.split("```toml\n")[1].split("```")[0]
    shell = block.split("```bash\n")[1].split("```")[0].strip().splitlines()
    port = free_port()
    toml = toml.replace("5556", str(port)).replace("samples/astronaut.mp4", str(media["good"]))
    (tmp_path / "curve.toml").write_text(toml)
    engine = f"{sys.executable} -m engine"
    setup, run_line, sub_line = shell[:2], shell[2], shell[3]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for line in setup:
        subprocess.run(line.replace("python -m engine", engine), shell=True, cwd=tmp_path, check=True, env=env)
    assert run_line.endswith("&")
    server = subprocess.Popen(run_line.rstrip("& ").replace("python -m engine", engine), shell=True, cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # an anonymous client (no admitted key) gets nothing: ZAP refuses its handshake
    anon = subprocess.run(f"{engine} subscribe tcp://127.0.0.1:{port} --curve-server-key keys/server.key --timeout 4",
                          shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert anon.returncode == 0 and "received 0 frame message(s)" in anon.stderr
    sub = subprocess.run(sub_line.replace("python -m engine", engine).replace("5556", str(port)) + " --timeout 30",
                         shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90)
    out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err[-2000:]
    assert sub.returncode == 0 and "received 12 frame message(s)" in sub.stderr, sub.stderr
    assert "sample end of stream (12 frames sent, 12 received, 0 lost here, 0 dropped" in sub.stdout and "(CURVE)" in err


def test_curve_sink_rejects_plaintext_subscriber(media):
    from engine.curve import create_keys

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        public, secret = create_keys(d, "server")
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        run = Background({"sources": [file_src(media["good"])],
                          "sinks": [{"type": "zmq_pub", "endpoint": endpoint, "curve_secret": str(secret),
                                     "wait_for_subscribers": 1, "wait_timeout_s": 2}]})
        with Subscriber(endpoint, timeout_s=3) as plain:  # no CURVE: the handshake never completes
            got = list(plain)
        summary = run.join(30)
    assert got == [] and summary["streams"]["cam"]["frames"] == 12
