"""``overlay`` sink: an annotated video per stream (PyAV, H.264 yuv420p), and/or preview PNGs.

Each stream's frames are drawn with :mod:`plugins.sinks.draw` (boxes, track ids, keypoints or the 68
landmarks coloured by visibility, head-pose axes) and encoded to ``<directory>/<stream>.mp4``. The frame
rate is ``fps`` when set, otherwise measured from the first two frames' pts (the source's rate), else
25. Frames are placed by their pts, so frames a live source dropped leave gaps rather than speeding the
video up. yuv420p needs even sizes: an odd last row/column is cut off.

``preview_frames = N`` also saves every ``preview_every``-th frame as ``<stream>_<index>.png``, up to N
per stream (``python -m engine run --preview DIR`` adds this sink with ``video = false``).
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image
from pydantic import Field

from engine.frame import Frame
from engine.plugin import PluginOptions, Sink, path_option
from plugins.sinks.draw import DrawStyle, annotate
from plugins.sinks.file_sink import stream_filename

log = logging.getLogger(__name__)

DEFAULT_FPS = 25.0
# Tried in order when the configured codec has no encoder in this FFmpeg build.
FALLBACK_CODECS = ("libx264", "libopenh264", "h264_nvenc", "h264_vaapi", "mpeg4")


def pick_encoder(preferred: str) -> str:
    """``preferred`` if this FFmpeg build can encode with it, else the first available fallback."""
    for name in (preferred, *FALLBACK_CODECS):
        try:
            av.codec.Codec(name, "w")
        except (av.codec.codec.UnknownCodecError, ValueError):
            continue
        if name != preferred:
            log.warning("overlay: encoder %r unavailable, using %r", preferred, name)
        return name
    raise RuntimeError(f"overlay: no video encoder available (tried {preferred}, {', '.join(FALLBACK_CODECS)})")


def rate_from_pts(first: float | None, second: float | None) -> Fraction | None:
    """Frame rate from two consecutive pts (e.g. 0.04 s -> 25, 0.0333667 -> 30000/1001)."""
    if first is None or second is None or second <= first:
        return None
    return Fraction(1.0 / (second - first)).limit_denominator(1001)


class _VideoWriter:
    """One stream's encoder. Opened on its first frame once the rate is known."""

    def __init__(self, path: Path, codec: str, rate: Fraction, size: tuple[int, int], options: dict[str, str]):
        self.path = path
        self.rate = rate
        self.width, self.height = size[0] // 2 * 2, size[1] // 2 * 2
        if self.width == 0 or self.height == 0:
            raise ValueError(f"frame too small to encode: {size[0]}x{size[1]}")
        self.container = av.open(str(path), "w")
        try:
            self.stream = self.container.add_stream(codec, rate=rate)
            self.stream.width, self.stream.height = self.width, self.height
            self.stream.pix_fmt = "yuv420p"
            self.stream.codec_context.time_base = 1 / rate
            self.stream.options = options
        except Exception:
            self.container.close()
            raise
        self.frames = 0
        self._pts0: float | None = None
        self._last = -1

    def write(self, image: np.ndarray, pts: float | None) -> None:
        image = image[: self.height, : self.width]
        if image.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame size {image.shape[1]}x{image.shape[0]} differs from the stream's {self.width}x{self.height}")
        index = self._last + 1
        if pts is not None:
            if self._pts0 is None:
                self._pts0 = pts
            index = max(index, round((pts - self._pts0) * self.rate))
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        vf.pts, vf.time_base = index, 1 / self.rate
        self.container.mux(self.stream.encode(vf))
        self._last = index
        self.frames += 1

    def close(self) -> None:
        try:
            self.container.mux(self.stream.encode(None))
        finally:
            self.container.close()


class OverlaySink(Sink):
    """Annotated video per stream (boxes, track ids, landmarks by visibility, pose axes) and preview PNGs."""

    name = "overlay"

    class Options(PluginOptions):
        directory: Path = path_option(Path("overlay"), description="Output folder (created): <stream>.mp4 and PNGs.")
        video: bool = Field(True, description="write the annotated video (false: preview PNGs only)")
        codec: str = Field("libx264", description="FFmpeg encoder; falls back to another H.264/MPEG-4 one if missing")
        crf: int = Field(23, ge=0, le=51, description="x264 quality (lower = better, larger)")
        preset: str = Field("veryfast", description="x264 speed preset")
        fps: float | None = Field(None, gt=0, description="output frame rate; none = the source's, from pts")
        preview_frames: int = Field(0, ge=0, description="PNG previews per stream (0 = none)")
        preview_every: int = Field(25, ge=1, description="a preview PNG of every k-th frame")
        boxes: bool = Field(True, description="draw face boxes")
        track_ids: bool = Field(True, description="draw track ids")
        scores: bool = Field(False, description="draw detector scores")
        keypoints: bool = Field(True, description="draw the 5 detector keypoints on faces without landmarks")
        landmarks: bool = Field(True, description="draw the 68 landmarks (green visible, red occluded)")
        axes: bool = Field(True, description="draw head-pose axes (red right, green up, blue forward)")
        line_width: int = Field(2, ge=1, le=20, description="line width, pixels")
        axis_scale: float = Field(0.6, gt=0, description="pose axis length in face-box widths")

    options: Options

    def __init__(self, options: Options):
        super().__init__(options)
        o = options
        self.style = DrawStyle(
            boxes=o.boxes, track_ids=o.track_ids, scores=o.scores, keypoints=o.keypoints, landmarks=o.landmarks,
            axes=o.axes, line_width=o.line_width, axis_scale=o.axis_scale,
        )
        self.codec: str | None = None
        self.writers: dict[str, _VideoWriter] = {}
        self.pending: dict[str, list[tuple[np.ndarray, float | None]]] = {}  # frames waiting for the rate
        self.previews: dict[str, list[Path]] = {}
        self.videos: dict[str, Path] = {}  # stream -> finished video

    def start(self) -> None:
        self.options.directory.mkdir(parents=True, exist_ok=True)
        if self.options.video:
            self.codec = pick_encoder(self.options.codec)

    def video_path(self, stream_id: str) -> Path:
        return self.options.directory / stream_filename(stream_id, "mp4")

    def write(self, frame: Frame) -> None:
        o = self.options
        want_preview = o.preview_frames and frame.index % o.preview_every == 0 and len(
            self.previews.get(frame.stream_id, [])
        ) < o.preview_frames
        if not (o.video or want_preview):
            return
        image = annotate(frame.image, frame.faces, self.style, _camera_k(frame))
        if want_preview:
            path = o.directory / (stream_filename(frame.stream_id, "png")[:-4] + f"_{frame.index:06d}.png")
            Image.fromarray(image).save(path)
            self.previews.setdefault(frame.stream_id, []).append(path)
        if o.video:
            self._encode(frame.stream_id, image, frame.pts, frame.size)

    def _encode(self, stream_id: str, image: np.ndarray, pts: float | None, size: tuple[int, int]) -> None:
        writer = self.writers.get(stream_id)
        if writer is not None:
            writer.write(image, pts)
            return
        pending = self.pending.setdefault(stream_id, [])
        pending.append((image, pts))
        if self.options.fps is None and len(pending) < 2:
            return  # need a second pts to know the rate
        self._open(stream_id, size)

    def _open(self, stream_id: str, size: tuple[int, int]) -> None:
        pending = self.pending.pop(stream_id, [])
        if not pending:
            return
        o = self.options
        rate = Fraction(o.fps).limit_denominator(1001) if o.fps else None
        if rate is None and len(pending) >= 2:
            rate = rate_from_pts(pending[0][1], pending[1][1])
        rate = rate or Fraction(DEFAULT_FPS)
        path = self.video_path(stream_id)
        options = {"crf": str(o.crf), "preset": o.preset} if self.codec == "libx264" else {}
        writer = self.writers[stream_id] = _VideoWriter(path, self.codec, rate, size, options)
        log.info("overlay: writing stream %r to %s (%s, %s fps)", stream_id, path, self.codec, float(rate))
        for image, pts in pending:
            writer.write(image, pts)

    def end_of_stream(self, stream_id: str) -> None:
        self.previews.pop(stream_id, None)  # a later stream with this id gets its own previews
        if stream_id in self.pending:  # a one-frame stream: the rate never got measured
            image = self.pending[stream_id][0][0]
            self._open(stream_id, (image.shape[1], image.shape[0]))
        writer = self.writers.pop(stream_id, None)
        if writer is not None:
            writer.close()
            self.videos[stream_id] = writer.path
            log.info("overlay: %s complete (%d frames)", writer.path, writer.frames)

    def close(self) -> None:
        for stream_id in list(self.pending) + list(self.writers):
            try:
                self.end_of_stream(stream_id)
            except Exception:  # close must not raise; the other streams still get flushed
                log.exception("overlay: closing the video of stream %r failed", stream_id)


def _camera_k(frame: Frame) -> np.ndarray | None:
    """The full-frame intrinsics the landmark stage assumed (``frame.meta["camera_matrix"]``), if any."""
    k: Any = frame.meta.get("camera_matrix")
    if k is None:
        return None
    k = np.asarray(k, np.float64)
    return k if k.shape == (3, 3) else None
