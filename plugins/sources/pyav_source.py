"""Video sources decoded with PyAV: files (``file``), network streams (``stream``) and cameras (``webcam``).

Every source yields :class:`engine.frame.Frame` objects with a per-stream 0-based ``index``, ``pts`` in
seconds (``None`` when the container has none), ``time`` = ``time.time()`` at decode and an HxWx3 uint8
RGB ``image``, turned upright by the stream's display matrix (engine/video.py: the one decode core).
``meta`` carries ``source_uri``, ``total_frames`` when the container knows it, and ``end_of_stream=True`` on the last frame of a stream (the file source decodes one frame ahead to know).
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import av
from pydantic import Field, field_validator

from engine.frame import Frame
from engine.plugin import PluginOptions, Source, path_option
from engine.video import DECODE_ERRORS, VIDEO_EXTENSIONS, open_video, rgb, upright

__all__ = ["VIDEO_EXTENSIONS", "FileSource", "StreamSource", "WebcamSource", "upright"]  # upright: tests import it here

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")
MAX_BAD_PACKETS_IN_A_ROW = 100  # after this many damaged packets in a row the rest of a file is skipped


def _to_frame(vf: av.VideoFrame, stream_id: str, index: int, meta: dict[str, Any]) -> Frame:
    return Frame(stream_id=stream_id, index=index, pts=vf.time, time=time.time(), image=rgb(vf, stream_id),
                 meta=dict(meta))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------- file


class FileSource(Source):
    """Video files: one file, every video file in a folder, or a glob; each file is its own stream."""

    name = "file"

    class Options(PluginOptions):
        path: str = path_option(
            description="A video file, a folder (every video file in it, sorted by name) or a glob pattern "
            "such as 'clips/*.mp4'. Several files give one stream each, with id '<source id>/<file stem>'."
        )
        realtime: bool = Field(
            False,
            description="Pace frames by their timestamps like a live camera (and treat the source as live, "
            "so a slow pipeline drops frames); false decodes as fast as the pipeline consumes.",
        )
        loop: bool = Field(False, description="Start each file again when it ends (pts keeps increasing).")
        max_frames: int | None = Field(
            None, ge=1, description="Stop each stream after this many frames (across loops); none = no limit."
        )

    options: Options

    def __init__(self, options: Options, source_id: str):
        super().__init__(options, source_id)
        # A paced file behaves like a camera: the runtime should drop rather than block it.
        self.live = options.realtime

    def paths(self) -> list[Path]:
        """The files this source reads, in order (empty when nothing matches). An existing file or
        folder is taken literally even when its name has glob characters (``take[1].mp4``). Raises
        ``OSError`` for a folder that cannot be listed."""
        raw = self.options.path
        p = Path(raw).expanduser()
        if p.is_dir():
            return sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
        if not p.exists() and glob.has_magic(raw):
            return [Path(f) for f in sorted(glob.glob(str(p), recursive=True)) if Path(f).is_file()]
        return [p]

    def planned_streams(self) -> list[str]:
        try:
            return self.stream_ids(self.paths())
        except OSError:
            return [self.source_id]

    def check_input(self) -> list[str]:
        raw = self.options.path
        try:
            paths = self.paths()
        except OSError as exc:
            return [f"path: cannot list {raw} ({_describe(exc)}); check its permissions"]
        if not paths:
            return [f"path: nothing matches {raw!r} (video files: {', '.join(sorted(VIDEO_EXTENSIONS))}); fix the path"]
        if len(paths) == 1 and not paths[0].is_file():
            return [f"path: {raw} does not exist; fix the path (relative paths start at the config's folder)"]
        return [f"path: {p} is not readable; check its permissions" for p in paths if not os.access(p, os.R_OK)]

    def stream_ids(self, paths: list[Path]) -> list[str]:
        if len(paths) == 1:
            return [self.source_id]
        stems = [f.stem for f in paths]
        # Same stem twice (a.mp4, a.mkv): keep the extension so ids stay unique.
        return [f"{self.source_id}/{f.stem if stems.count(f.stem) == 1 else f.name}" for f in paths]

    def frames(self, stop_event: threading.Event) -> Iterator[Frame]:
        try:
            paths = self.paths()
        except OSError as exc:
            self._error(f"file source {self.source_id!r}: cannot list {self.options.path!r} ({_describe(exc)}); "
                        "check the folder's permissions")
            return
        if not paths:
            self._error(f"file source {self.source_id!r}: no video files match path {self.options.path!r} "
                        f"(looked for {', '.join(sorted(VIDEO_EXTENSIONS))})")
            return
        for path, stream_id in zip(paths, self.stream_ids(paths)):
            if stop_event.is_set():
                return
            yield from self._file_frames(path, stream_id, stop_event)

    def _error(self, message: str) -> None:
        log.error(message)
        self.errors.append(message)

    def _file_frames(self, path: Path, stream_id: str, stop_event: threading.Event) -> Iterator[Frame]:
        index = 0
        pts_offset = 0.0  # added to pts on each loop so timestamps keep increasing
        clock: tuple[float, float] | None = None  # (perf_counter, pts) of the stream's first frame
        pending: Frame | None = None  # one frame of look-ahead to mark end_of_stream
        max_frames = self.options.max_frames
        while not stop_event.is_set():
            try:
                container, stream = open_video(str(path))
            except DECODE_ERRORS as exc:
                self._error(f"{path}: cannot open ({_describe(exc)}); skipped")
                break
            meta: dict[str, Any] = {"source_uri": str(path)}
            if stream.frames:
                meta["total_frames"] = int(stream.frames)
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            last_pts = None
            decoded = skipped = bad_run = 0
            try:
                with container:
                    for packet in container.demux(stream):
                        try:
                            decoded_frames = packet.decode()
                            bad_run = 0
                        except DECODE_ERRORS as exc:
                            # damage inside the file: skip this packet, count it, go on (as GStreamer's
                            # max-errors and FFmpeg's default error concealment do)
                            skipped, bad_run = skipped + 1, bad_run + 1
                            self.count(stream_id, "decode_errors")
                            if skipped == 1:
                                log.warning("%s: damaged packet skipped (%s); counting further ones", path, _describe(exc))
                            if bad_run >= MAX_BAD_PACKETS_IN_A_ROW:
                                raise
                            continue
                        for vf in decoded_frames:
                            if stop_event.is_set():
                                return
                            frame = _to_frame(vf, stream_id, index, meta)
                            if frame.pts is not None:
                                last_pts = frame.pts
                                frame.pts += pts_offset
                            if pending is not None:
                                clock = self._pace(pending, clock, stop_event)
                                if stop_event.is_set():
                                    return
                                yield pending
                            pending = frame
                            index += 1
                            decoded += 1
                            if max_frames is not None and index >= max_frames:
                                break
                        if max_frames is not None and index >= max_frames:
                            break
            except DECODE_ERRORS as exc:
                self._error(f"{path}: decoding failed after {decoded} frames ({_describe(exc)}); rest skipped")
                break
            if skipped:
                log.warning("%s: %d damaged packet(s) skipped, %d frames decoded", path, skipped, decoded)
            if decoded == 0 and index == 0:
                self._error(f"{path}: the video stream has no decodable frames; skipped")
                break
            total = meta.get("total_frames")
            if total and decoded + skipped + max(2, total // 100) < total and (max_frames is None or index < max_frames):
                # Threaded decoding can end quietly on a cut-off file instead of raising. The slack allows
                # for edit lists that legitimately hide a frame or two of the container's count.
                self._error(f"{path}: only {decoded} of {total} frames decodable (truncated or corrupt file)")
                break
            if not self.options.loop or (max_frames is not None and index >= max_frames) or decoded == 0:
                break
            if last_pts is not None:
                pts_offset += last_pts + 1.0 / rate
        if pending is not None and not stop_event.is_set():
            pending.meta["end_of_stream"] = True
            self._pace(pending, clock, stop_event)
            yield pending

    def _pace(
        self, frame: Frame, clock: tuple[float, float] | None, stop_event: threading.Event
    ) -> tuple[float, float] | None:
        """In realtime mode, wait until ``frame`` is due on the wall clock; returns the (perf_counter, pts)
        anchor of the stream's first frame."""
        if not self.options.realtime or frame.pts is None:
            return clock
        if clock is None:
            return time.perf_counter(), frame.pts
        due = clock[0] + (frame.pts - clock[1]) - time.perf_counter()
        if due > 0:
            stop_event.wait(due)  # wakes at once on stop
        frame.time = time.time()
        return clock


# ---------------------------------------------------------------------------------- live sources


class _LiveSource(Source):
    """A live input opened with PyAV: decode until stopped, reopening with exponential backoff."""

    live = True

    def __init__(self, options: PluginOptions, source_id: str):
        super().__init__(options, source_id)
        self.reconnects = 0  # successful re-opens after the input was lost

    # subclasses provide these
    def _uri(self) -> str:
        raise NotImplementedError

    def _open_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError

    def _backoff(self) -> tuple[float, float, int | None]:
        """(initial delay s, max delay s, max consecutive failed attempts or None = forever)."""
        raise NotImplementedError

    def frames(self, stop_event: threading.Event) -> Iterator[Frame]:
        uri = self._uri()
        initial, max_delay, max_attempts = self._backoff()
        max_frames: int | None = getattr(self.options, "max_frames", None)
        index = 0
        failures = 0  # consecutive attempts that produced no frame
        delay = initial
        connections = 0
        last_pts: float | None = None  # last pts sent: a new connection's timestamps continue after it
        while not stop_event.is_set():
            got_frames = False
            reason = "ended"
            try:
                container, stream = open_video(uri, **self._open_kwargs())
            except DECODE_ERRORS as exc:
                reason = f"cannot open ({_describe(exc)})"
            else:
                connections += 1
                if connections > 1:
                    self.reconnects += 1
                    self.count(self.source_id, "reconnects")
                    log.info("%s %r: reconnected to %s (reconnect #%d)", self.name, self.source_id, uri, self.reconnects)
                meta = {"source_uri": uri, "connection": connections}
                step = 1.0 / float(stream.average_rate or stream.guessed_rate or 25)
                pts_offset: float | None = None
                try:
                    with container:
                        for packet in container.demux(stream):
                            try:
                                decoded = packet.decode()
                            except DECODE_ERRORS as exc:  # a damaged packet: skip and count it, go on
                                self.count(self.source_id, "decode_errors")
                                log.debug("%s %r: damaged packet skipped (%s)", self.name, self.source_id, _describe(exc))
                                continue
                            for vf in decoded:
                                if stop_event.is_set():
                                    return
                                got_frames = True
                                self.reconnecting = False
                                frame = _to_frame(vf, self.source_id, index, meta)
                                if frame.pts is not None:
                                    if pts_offset is None:  # never let pts jump back after a reconnect
                                        pts_offset = 0.0 if last_pts is None or frame.pts > last_pts else last_pts + step - frame.pts
                                    frame.pts += pts_offset
                                    last_pts = frame.pts
                                yield frame
                                index += 1
                                if max_frames is not None and index >= max_frames:
                                    return
                except DECODE_ERRORS as exc:
                    reason = f"lost ({_describe(exc)})"
                if got_frames and not stop_event.is_set():
                    self.count(self.source_id, "outages")
            if stop_event.is_set():
                return
            if got_frames:
                failures, delay = 0, initial
            else:
                failures += 1
            if max_attempts is not None and failures >= max_attempts:
                message = f"{self.name} {self.source_id!r}: {uri} {reason}; gave up after {failures} failed attempts"
                log.error(message)
                self.errors.append(message)
                self.reconnecting = False
                return
            log.warning("%s %r: %s %s; reconnecting in %.1f s", self.name, self.source_id, uri, reason, delay)
            self.reconnecting = True  # until the next frame (service status)
            stop_event.wait(delay)  # wakes at once on stop
            delay = min(delay * 2, max_delay)


class StreamSource(_LiveSource):
    """A network stream (RTSP, RTMP, HTTP(S), UDP, TCP, SRT) with automatic reconnection."""

    name = "stream"

    class Options(PluginOptions):
        url: str = Field(description=f"Stream URL; scheme one of {', '.join(STREAM_SCHEMES)}.")
        rtsp_transport: Literal["tcp", "udp"] = Field(
            "tcp", description="RTSP transport; TCP avoids the packet loss (smeared frames) UDP has on busy networks."
        )
        open_timeout_s: float = Field(10.0, gt=0, description="Give up opening the stream after this many seconds.")
        read_timeout_s: float = Field(10.0, gt=0, description="Treat the stream as lost after this long without data.")
        reconnect_initial_s: float = Field(0.5, ge=0, description="First reconnect delay; doubles on each failure.")
        reconnect_max_s: float = Field(30.0, gt=0, description="Upper bound of the reconnect delay.")
        max_attempts: int | None = Field(
            None, ge=1, description="Give up after this many consecutive failed attempts; none = retry forever."
        )
        max_frames: int | None = Field(None, ge=1, description="Stop after this many frames; none = no limit.")
        av_options: dict[str, str] = Field(
            default_factory=dict, description="Extra FFmpeg options passed to av.open (override the defaults)."
        )

        @field_validator("url")
        @classmethod
        def _known_scheme(cls, url: str) -> str:
            scheme = urlsplit(url).scheme.lower()
            if scheme not in STREAM_SCHEMES:
                raise ValueError(f"URL scheme {scheme!r} is not a stream ({', '.join(STREAM_SCHEMES)}); "
                                 "use a 'file' source for files")
            return url

    options: Options

    def _uri(self) -> str:
        return self.options.url

    def _open_kwargs(self) -> dict[str, Any]:
        opts: dict[str, str] = {}
        if urlsplit(self.options.url).scheme.lower().startswith("rtsp"):
            opts["rtsp_transport"] = self.options.rtsp_transport
        opts.update(self.options.av_options)
        # PyAV's (open, read) timeouts act through FFmpeg's interrupt callback, so they work for every protocol.
        return {"options": opts, "timeout": (self.options.open_timeout_s, self.options.read_timeout_s)}

    def _backoff(self) -> tuple[float, float, int | None]:
        o = self.options
        return o.reconnect_initial_s, o.reconnect_max_s, o.max_attempts


def _default_camera() -> tuple[str, str]:
    """(device, FFmpeg input format) of the platform's first camera."""
    if sys.platform == "darwin":
        return "0", "avfoundation"
    if sys.platform.startswith("win"):
        return "video=Integrated Camera", "dshow"
    return "/dev/video0", "v4l2"


class WebcamSource(_LiveSource):
    """A local camera through FFmpeg's capture devices (v4l2 on Linux, avfoundation on macOS, dshow on Windows)."""

    name = "webcam"

    class Options(PluginOptions):
        device: str = Field(
            default_factory=lambda: _default_camera()[0],
            description="Camera device: /dev/video0 (Linux), '0' (macOS), 'video=<name>' (Windows).",
        )
        input_format: str = Field(
            default_factory=lambda: _default_camera()[1],
            description="FFmpeg capture format: v4l2, avfoundation or dshow.",
        )
        width: int | None = Field(None, ge=16, description="Requested capture width (with height); none = camera default.")
        height: int | None = Field(None, ge=16, description="Requested capture height (with width).")
        fps: float | None = Field(None, gt=0, description="Requested frame rate; none = camera default.")
        pixel_format: str | None = Field(
            None, description="Camera pixel/input format, e.g. 'mjpeg' for high resolutions over USB 2."
        )
        open_timeout_s: float = Field(10.0, gt=0, description="Give up opening the camera after this many seconds.")
        reconnect_initial_s: float = Field(1.0, ge=0, description="First reopen delay after the camera is lost.")
        reconnect_max_s: float = Field(10.0, gt=0, description="Upper bound of the reopen delay.")
        max_attempts: int | None = Field(
            3, ge=1, description="Give up after this many consecutive failed opens; none = retry forever."
        )
        max_frames: int | None = Field(None, ge=1, description="Stop after this many frames; none = no limit.")

    options: Options

    def _uri(self) -> str:
        return self.options.device

    def _open_kwargs(self) -> dict[str, Any]:
        o = self.options
        opts: dict[str, str] = {}
        if o.width and o.height:
            opts["video_size"] = f"{o.width}x{o.height}"
        if o.fps:
            opts["framerate"] = f"{o.fps:g}"
        if o.pixel_format:
            opts["input_format" if o.input_format == "v4l2" else "pixel_format"] = o.pixel_format
        return {"format": o.input_format, "options": opts, "timeout": (o.open_timeout_s, o.open_timeout_s)}

    def _backoff(self) -> tuple[float, float, int | None]:
        o = self.options
        return o.reconnect_initial_s, o.reconnect_max_s, o.max_attempts
