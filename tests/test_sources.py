"""PyAV sources on real clips and a real TCP stream (an MPEG-TS muxed by PyAV in a server thread)."""

from __future__ import annotations

import socket
import threading
import time
from fractions import Fraction
from importlib.metadata import entry_points
from pathlib import Path

import av
import numpy as np
import pytest
from clips import make_clip, make_corrupt_file, make_truncated_copy
from pydantic import ValidationError

from plugins.sources.pyav_source import FileSource, StreamSource, WebcamSource


def collect(source, stop: threading.Event | None = None) -> list:
    return list(source.frames(stop or threading.Event()))


def file_source(path, source_id: str = "cam", **options) -> FileSource:
    return FileSource(FileSource.Options(path=str(path), **options), source_id)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "face.mp4", frames=30, size=(160, 120), fps=25)


def test_entry_points_name_these_classes():
    eps = {ep.name: ep.value for ep in entry_points(group="engine.plugins")}
    assert eps["file"] == "plugins.sources.pyav_source:FileSource"
    assert eps["stream"] == "plugins.sources.pyav_source:StreamSource"
    assert eps["webcam"] == "plugins.sources.pyav_source:WebcamSource"
    for cls in (FileSource, StreamSource, WebcamSource):
        assert all(f.description for f in cls.Options.model_fields.values()), cls


def test_file_source_frames_indices_pts_meta(clip):
    frames = collect(file_source(clip))
    assert [f.index for f in frames] == list(range(30))
    assert {f.stream_id for f in frames} == {"cam"}
    assert np.allclose([f.pts for f in frames], np.arange(30) / 25, atol=1e-6)
    first = frames[0]
    assert first.image.shape == (120, 160, 3) and first.image.dtype == np.uint8
    assert first.meta["total_frames"] == 30 and first.meta["source_uri"] == str(clip)
    assert [f.meta.get("end_of_stream", False) for f in frames] == [False] * 29 + [True]
    assert frames[-1].time >= first.time > 0
    # RGB, not BGR: the astronaut's red-dominated flag/suit region makes mean R > mean B on this clip
    assert first.image[..., 0].mean() > first.image[..., 2].mean()


def test_loop_and_max_frames_keep_pts_increasing(clip):
    frames = collect(file_source(clip, loop=True, max_frames=70))
    assert len(frames) == 70 and [f.index for f in frames] == list(range(70))
    assert np.all(np.diff([f.pts for f in frames]) > 0)


def test_folder_and_glob_give_one_stream_per_file(tmp_path):
    for name, n in [("b", 12), ("a", 8), ("c", 5)]:
        make_clip(tmp_path / f"{name}.mp4", frames=n, size=(96, 64))
    (tmp_path / "notes.txt").write_text("not a video")
    for path in (tmp_path, tmp_path / "*.mp4"):
        frames = collect(file_source(path, "src"))
        ids = [f.stream_id for f in frames]
        assert ids == ["src/a"] * 8 + ["src/b"] * 12 + ["src/c"] * 5  # sorted by name, one after another
        assert [f.index for f in frames if f.stream_id == "src/b"] == list(range(12))


def test_corrupt_and_truncated_files_are_reported_and_skipped(tmp_path, clip):
    make_corrupt_file(tmp_path / "a_garbage.mp4")
    make_truncated_copy(clip, tmp_path / "b_truncated.mp4")  # index at the end: unreadable
    faststart = make_clip(tmp_path / "src" / "fs.mp4", frames=30, size=(160, 120), faststart=True)
    make_truncated_copy(faststart, tmp_path / "c_cut.mp4")  # index first: decodes partially
    make_clip(tmp_path / "d_good.mp4", frames=20, size=(96, 64))
    source = file_source(tmp_path, "src")
    frames = collect(source)
    good = [f for f in frames if f.stream_id == "src/d_good"]
    assert [f.index for f in good] == list(range(20))
    assert not any(f.stream_id in ("src/a_garbage", "src/b_truncated") for f in frames)
    assert 0 < sum(f.stream_id == "src/c_cut" for f in frames) < 30
    assert len(source.errors) == 3
    for name, error in zip(["a_garbage", "b_truncated", "c_cut"], source.errors):
        assert str(tmp_path / f"{name}.mp4") in error


def test_missing_path_is_an_error_not_a_crash(tmp_path):
    source = file_source(tmp_path / "nothing_here" / "*.mp4")
    assert collect(source) == [] and "no video files match" in source.errors[0]
    source = file_source(tmp_path / "missing.mp4")
    assert collect(source) == [] and "missing.mp4" in source.errors[0]


def test_realtime_paces_by_pts(clip):
    source = file_source(clip, realtime=True, max_frames=15)  # 15 frames at 25 fps: 0.56 s of video
    assert source.live
    start = time.perf_counter()
    frames = collect(source)
    elapsed = time.perf_counter() - start
    assert len(frames) == 15
    assert 0.5 < elapsed < 2.0, elapsed


def test_stop_event_returns_promptly(clip):
    stop = threading.Event()
    source = file_source(clip, realtime=True, loop=True)  # endless unless stopped
    threading.Timer(0.3, stop.set).start()
    start = time.perf_counter()
    frames = collect(source, stop)
    assert 0.25 < time.perf_counter() - start < 1.0
    assert frames


# ------------------------------------------------------------------------------------ network stream


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_mpegts(port: int, frames: int, fps: int = 25) -> None:
    """Accept one TCP client and send it ``frames`` live H.264 frames in MPEG-TS, then hang up.

    Python accepts the socket (PyAV's own listen=1 holds the GIL while it blocks); PyAV muxes into it.
    """
    with socket.create_server(("127.0.0.1", port)) as server:
        server.settimeout(10)
        conn, _ = server.accept()
    with conn, conn.makefile("wb") as out, av.open(out, "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for i in range(frames):
            image = np.full((120, 160, 3), (i * 8) % 256, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            time.sleep(1 / fps)  # live pace
        container.mux(stream.encode(None))


def test_stream_reads_live_tcp_and_reconnects():
    port = free_port()

    def server() -> None:
        serve_mpegts(port, 20)
        time.sleep(0.3)  # the server is gone: connections are refused
        serve_mpegts(port, 20)

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    options = StreamSource.Options(
        url=f"tcp://127.0.0.1:{port}", reconnect_initial_s=0.05, reconnect_max_s=0.4, max_attempts=6, read_timeout_s=3
    )
    source = StreamSource(options, "live")
    assert source.live
    start = time.perf_counter()
    frames = collect(source)
    thread.join(5)
    assert time.perf_counter() - start < 15
    assert [f.index for f in frames] == list(range(len(frames)))
    assert 30 <= len(frames) <= 40  # both sessions, minus what the decoder needs to start up
    assert {f.meta["connection"] for f in frames} == {1, 2}
    assert source.reconnects == 1
    assert frames[0].image.shape == (120, 160, 3) and frames[0].pts is not None
    assert "gave up after 6 failed attempts" in source.errors[-1]  # after the second session ended


def test_dead_stream_gives_up_with_clear_error():
    options = StreamSource.Options(url=f"tcp://127.0.0.1:{free_port()}", reconnect_initial_s=0.05, max_attempts=3)
    source = StreamSource(options, "dead")
    start = time.perf_counter()
    assert collect(source) == []
    assert time.perf_counter() - start < 5
    assert "gave up after 3 failed attempts" in source.errors[0] and "dead" in source.errors[0]


def test_stream_stop_event_interrupts_backoff():
    stop = threading.Event()
    options = StreamSource.Options(url=f"tcp://127.0.0.1:{free_port()}", reconnect_initial_s=30)  # retry forever
    threading.Timer(0.3, stop.set).start()
    start = time.perf_counter()
    assert collect(StreamSource(options, "s"), stop) == []
    assert time.perf_counter() - start < 2


def test_options_are_validated():
    with pytest.raises(ValidationError, match="scheme"):
        StreamSource.Options(url="/tmp/video.mp4")
    with pytest.raises(ValidationError, match="extra"):
        FileSource.Options(path="x.mp4", fps=3)
    assert StreamSource(StreamSource.Options(url="rtsp://cam/1"), "c")._open_kwargs()["options"] == {
        "rtsp_transport": "tcp"
    }


def test_missing_webcam_is_reported(tmp_path):
    options = WebcamSource.Options(device=str(tmp_path / "video9"), input_format="v4l2", max_attempts=1)
    source = WebcamSource(options, "cam")
    assert source.live
    assert collect(source) == []
    assert "video9" in source.errors[0]
