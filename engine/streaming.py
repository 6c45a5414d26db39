"""``engine.stream(config)``: run a pipeline in this process and iterate over its processed frames.

The pipeline runs exactly as ``python -m engine run`` runs it (same threads, queues, plugins and
sinks), with one more sink that hands each frame to the caller's loop. The frames are
:class:`engine.frame.Frame` objects (``stream_id``, ``index``, ``pts``, ``image``, ``faces``), in
each stream's order. The hand-off queue is bounded, so a slow loop slows the pipeline (files stay
lossless; live sources drop the oldest frames and count it, as they do for slow sinks). Leaving the
loop early (``break``) stops the sources and waits for the pipeline to drain and close.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.config import PipelineConfig, PluginSpec, load_config, parse_config
from engine.frame import Frame
from engine.plugin import Plugin, PluginOptions, Sink
from engine.runtime import Pipeline

log = logging.getLogger(__name__)

_DONE = object()


class _QueueSink(Sink):
    """Hands frames to the iterating thread; drops them once the caller left the loop."""

    name = "python"

    def __init__(self, frames: queue.Queue, closed: threading.Event):
        super().__init__(PluginOptions())
        self.frames, self.closed = frames, closed

    def write(self, frame: Frame) -> None:
        while not self.closed.is_set():
            try:
                self.frames.put(frame, timeout=0.1)
                return
            except queue.Full:
                continue


@dataclasses.dataclass
class _SinkSpec(PluginSpec):
    instance: Plugin | None = None

    def create(self) -> Plugin:
        assert self.instance is not None
        return self.instance


class PipelineStream:
    """Iterable over a pipeline's frames; ``summary`` is the run summary once the iteration ended."""

    def __init__(self, config: PipelineConfig, queue_size: int | None = None):
        self.config = config
        self.summary: dict[str, Any] | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size or config.pipeline.queue_size)
        self._closed = threading.Event()
        sink = _QueueSink(self._queue, self._closed)
        spec = _SinkSpec(role="sink", type=sink.name, cls=_QueueSink, options=sink.options,
                         path=f"sinks[{len(config.sinks)}]", instance=sink)
        self.pipeline = Pipeline(dataclasses.replace(config, sinks=[*config.sinks, spec]))
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.summary = self.pipeline.run(handle_signals=False)
        except BaseException as exc:  # re-raised in the iterating thread
            self._error = exc
        finally:
            self._queue.put(_DONE)

    def __iter__(self) -> Iterator[Frame]:
        if self._thread is not None:
            raise RuntimeError("a pipeline stream can be iterated once")
        self._thread = threading.Thread(target=self._run, name="engine-stream", daemon=True)
        self._thread.start()
        finished = False
        try:
            while (item := self._queue.get()) is not _DONE:
                yield item
            finished = True
        finally:
            if not finished:  # the caller left the loop: stop the sources, let the rest drain
                self.close()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the sources, drain what was decoded and wait until every plugin closed."""
        self._closed.set()
        self.pipeline.request_stop()
        if self._thread is None:
            return
        while self._thread.is_alive() or not self._queue.empty():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self) -> PipelineStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream(config: str | Path | dict[str, Any] | PipelineConfig, base_dir: str | Path | None = None,
           queue_size: int | None = None) -> PipelineStream:
    """Iterate over the frames of a pipeline (a ``pipeline.toml`` path, the same document as a dict, or
    a parsed :class:`PipelineConfig`) run in this process. ``base_dir``: what relative paths of a dict
    config resolve against (a file's own folder for a path). ``queue_size``: frames held for the loop
    (default ``pipeline.queue_size``)."""
    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = parse_config(config, base_dir=base_dir)
    return PipelineStream(config, queue_size)
