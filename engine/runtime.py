"""The pipeline runtime: threads, bounded queues, drop policies, batching, shutdown.

Topology (each box is a thread, each arrow a bounded queue of ``pipeline.queue_size`` frames)::

    source 0 --lane--\\
    source 1 --lane---> stage 0 --> stage 1 --> ... --> sink dispatcher -> every sink (fan-out)

Each source has its own lane into the first stage: files block when it is full (lossless), live sources
drop their oldest frame (counted per stream), so decoding never waits for inference more than a queue
allows and a slow camera never stalls a file. A stage takes up to ``batch_size`` frames across lanes,
waiting at most ``max_wait_ms`` after the first; lanes keep each stream in order. End-of-stream markers
travel the same queues behind a stream's last frame. Stop (SIGINT/SIGTERM, :meth:`Pipeline.request_stop`):
sources stop, what was decoded drains through stages and sinks, everything closes; a second signal
aborts without draining.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from engine.config import PipelineConfig, PluginSpec
from engine.frame import Frame
from engine.metrics import Metrics, format_summary
from engine.plugin import Plugin, Sink, Source, Stage

log = logging.getLogger(__name__)

ABORT_GRACE_S = 3.0  # after a second signal, how long threads get to notice before they are abandoned


class PipelineStartError(RuntimeError):
    """A plugin failed to construct or start; nothing ran."""


@dataclass(frozen=True)
class EndOfStream:
    """Queue marker: ``stream_id`` delivered its last frame."""

    stream_id: str


Item = Frame | EndOfStream

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_INPUTS_FAILED = 0, 1, 2, 3


def exit_code(summary: dict[str, Any]) -> int:
    """The run's exit status: 1 if it ended abnormally, 3 if some input failed or was unusable (see
    ``summary["source_errors"]``), else 0 (also after a stop by SIGINT/SIGTERM)."""
    if summary.get("fatal"):
        return EXIT_FATAL
    return EXIT_INPUTS_FAILED if summary.get("source_errors") else EXIT_OK


class _Lane:
    def __init__(self, maxsize: int, drop_oldest: bool):
        self.items: deque[Item] = deque()
        self.maxsize = maxsize
        self.drop_oldest = drop_oldest
        self.closed = False


class Channel:
    """Bounded multi-lane queue with one consumer. One condition variable serves all lanes, so the
    consumer can wait for "any lane has data" and producers for "my lane has room"."""

    def __init__(self, name: str, abort: threading.Event, on_drop: Any = None):
        self.name = name
        self._cond = threading.Condition()
        self._lanes: list[_Lane] = []
        self._next = 0  # round-robin start, so no lane starves another
        self._abort = abort
        self._on_drop = on_drop

    def add_lane(self, maxsize: int, drop_oldest: bool = False) -> _Lane:
        lane = _Lane(maxsize, drop_oldest)
        with self._cond:
            self._lanes.append(lane)
        return lane

    def depth(self) -> int:
        with self._cond:
            return sum(len(lane.items) for lane in self._lanes)

    def put(self, lane: _Lane, item: Item) -> None:
        with self._cond:
            if len(lane.items) >= lane.maxsize:
                if lane.drop_oldest and isinstance(item, Frame):
                    for i, old in enumerate(lane.items):  # markers are never dropped
                        if isinstance(old, Frame):
                            del lane.items[i]
                            if self._on_drop:
                                self._on_drop(old.stream_id)
                            break
                else:
                    while len(lane.items) >= lane.maxsize and not self._abort.is_set():
                        self._cond.wait(0.2)
            lane.items.append(item)
            self._cond.notify_all()

    def close(self, lane: _Lane) -> None:
        with self._cond:
            lane.closed = True
            self._cond.notify_all()

    def _pop(self) -> Item | None:
        n = len(self._lanes)
        for k in range(n):
            lane = self._lanes[(self._next + k) % n]
            if lane.items:
                self._next = (self._next + k + 1) % n
                return lane.items.popleft()
        return None

    def _finished(self) -> bool:
        return all(lane.closed and not lane.items for lane in self._lanes)

    def get_batch(self, max_frames: int, max_wait_s: float) -> list[Item] | None:
        """Up to ``max_frames`` frames (plus any markers between them), waiting at most ``max_wait_s``
        after the first item for more. ``None`` once every lane is closed and empty (or on abort)."""
        batch: list[Item] = []
        frames = 0
        with self._cond:
            while not self._abort.is_set():
                item = self._pop()
                if item is not None:
                    break
                if self._finished():
                    return None
                self._cond.wait(0.5)
            else:
                return None
            deadline = time.monotonic() + max_wait_s
            while True:
                batch.append(item)
                frames += isinstance(item, Frame)
                if frames >= max_frames:
                    break
                item = self._pop()
                while item is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._finished() or self._abort.is_set():
                        break
                    self._cond.wait(remaining)
                    item = self._pop()
                if item is None:
                    break
            self._cond.notify_all()  # room for blocked producers
        return batch


class Pipeline:
    """Builds plugins from a :class:`PipelineConfig` and runs them until the sources end or stop."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.stop_event = threading.Event()
        self.abort_event = threading.Event()
        self.metrics: Metrics | None = None
        self._plugins: list[tuple[PluginSpec, Plugin]] = []
        self._threads: list[threading.Thread] = []
        self._source_threads: list[threading.Thread] = []
        self._running = False  # all threads spawned (for /ready)
        self._fatal: list[str] = []
        self._abandoned = False

    # ------------------------------------------------------------ control

    def request_stop(self) -> None:
        """Stop the sources; what was decoded still drains through stages and sinks."""
        self.stop_event.set()

    def abort(self) -> None:
        """Stop now without draining (second Ctrl-C)."""
        self.stop_event.set()
        self.abort_event.set()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.stop_event.is_set():
            log.warning("%s again: aborting without draining", name)
            self.abort()
        else:
            log.info("%s: stopping sources, draining decoded frames (send again to abort)", name)
            self.request_stop()

    # ------------------------------------------------------------ setup

    def _start_plugins(self) -> tuple[list[Source], list[Stage], list[Sink]]:
        cfg = self.config
        # sinks first (sockets bound before data), sources last (nothing decodes before all is ready)
        for spec in [*cfg.sinks, *cfg.stages, *cfg.sources]:
            try:
                plugin = spec.create()
                self._plugins.append((spec, plugin))
                plugin.stop_event = self.stop_event
                plugin.on_count = self.metrics.count
                if isinstance(plugin, Sink):
                    plugin.counts_of = self.metrics.counts_of  # type: ignore[method-assign]
                plugin.start()
            except Exception as exc:
                self._close_plugins()
                raise PipelineStartError(
                    f"{spec.path} (type {spec.type!r}) failed to start: {type(exc).__name__}: {exc}"
                ) from exc
        by_role: dict[str, list[Any]] = {"source": [], "stage": [], "sink": []}
        for spec, plugin in self._plugins:
            by_role[spec.role].append(plugin)
        return by_role["source"], by_role["stage"], by_role["sink"]

    def _close_plugins(self) -> None:
        if self._abandoned:  # a thread may still be inside a plugin: closing under it is unsafe
            log.warning("abort: plugins not closed (threads still running)")
            return
        for spec, plugin in reversed(self._plugins):
            try:
                plugin.close()
            except Exception:  # close must not raise; if it does, the others still close
                log.exception("%s (%s): close failed", spec.path, spec.type)
        self._plugins = []

    # ------------------------------------------------------------ threads

    def _run_source(self, spec: PluginSpec, source: Source, channel: Channel, lane: _Lane) -> None:
        metrics = self.metrics
        streams: dict[str, bool] = {}  # stream id -> its end-of-stream was sent
        frames = source.frames(self.stop_event)
        try:
            for frame in frames:
                if frame.stream_id not in streams:
                    streams[frame.stream_id] = False
                    metrics.stream_total(frame.stream_id, frame.meta.get("total_frames"))
                channel.put(lane, frame)
                if frame.meta.get("end_of_stream"):  # the source knows; end the stream now, not at exit
                    channel.put(lane, EndOfStream(frame.stream_id))
                    streams[frame.stream_id] = True
                if self.stop_event.is_set():
                    break
        except Exception as exc:
            log.exception("%s (%s, id %r) failed", spec.path, spec.type, spec.id)
            source.errors.append(f"source failed: {type(exc).__name__}: {exc}")
        finally:
            if hasattr(frames, "close"):
                frames.close()  # runs the generator's cleanup (closes containers)
            for stream_id, ended in streams.items():
                if not ended:
                    channel.put(lane, EndOfStream(stream_id))
            channel.close(lane)
            metrics.source_errors[spec.id] = list(source.errors)

    def _run_stage(self, name: str, stage: Stage, inbox: Channel, outbox: Channel, lane: _Lane) -> None:
        metrics = self.metrics
        batch_size = max(1, int(stage.batch_size))
        max_wait_s = max(0.0, float(stage.max_wait_ms)) / 1000.0
        failures = 0
        try:
            while (batch := inbox.get_batch(batch_size, max_wait_s)) is not None:
                frames = [item for item in batch if isinstance(item, Frame)]
                if frames:
                    t0 = time.perf_counter()
                    failed = False
                    try:
                        out = stage.process(frames)
                        if len(out) != len(frames):
                            raise RuntimeError(f"process returned {len(out)} frames for {len(frames)}")
                    except Exception as exc:
                        # one bad batch must not stop the stream: frames go on without this stage's output
                        failed, out, failures = True, frames, failures + 1
                        if failures <= 3:
                            log.exception("stage %s failed on a batch of %d frames", name, len(frames))
                        else:
                            log.error("stage %s failed on a batch (%d failures): %s", name, failures, exc)
                        for frame in frames:
                            metrics.stream_errors(frame.stream_id)
                    metrics.stage_batch(name, len(frames), time.perf_counter() - t0, failed)
                    if not failed:  # decode -> this stage's output, per frame (e.g. landmarks done)
                        done = time.time()
                        metrics.frame_latency(name, [done - frame.time for frame in frames])
                    replaced = iter(out)
                    batch = [next(replaced) if isinstance(item, Frame) else item for item in batch]
                for item in batch:
                    outbox.put(lane, item)
        except Exception:
            log.exception("stage %s thread crashed", name)
            self._fatal.append(f"stage {name} thread crashed")
            self.abort()
        finally:
            outbox.close(lane)

    def _run_sinks(self, sinks: list[tuple[PluginSpec, Sink]], inbox: Channel) -> None:
        metrics = self.metrics
        bars: dict[str, tqdm] = {}
        failures = 0
        try:
            while (batch := inbox.get_batch(64, 0.0)) is not None:
                t0 = time.perf_counter()
                n = 0
                for item in batch:
                    if isinstance(item, Frame):
                        n += 1
                        failed = False
                        for spec, sink in sinks:
                            try:
                                sink.write(item)
                            except Exception:
                                failed, failures = True, failures + 1
                                if failures <= 3:
                                    log.exception("%s (%s) failed to write a frame", spec.path, spec.type)
                        if failed:
                            metrics.stream_errors(item.stream_id)
                        metrics.delivered(item.stream_id, len(item.faces), time.time() - item.time)
                        self._progress(bars, item)
                    else:
                        for spec, sink in sinks:
                            try:
                                sink.end_of_stream(item.stream_id)
                            except Exception:
                                log.exception("%s (%s): end_of_stream failed", spec.path, spec.type)
                                metrics.stream_errors(item.stream_id)
                        metrics.stream_ended(item.stream_id)
                        if item.stream_id in bars:
                            bars.pop(item.stream_id).close()
                if n:
                    metrics.stage_batch("sinks", n, time.perf_counter() - t0)
        except Exception:
            log.exception("sink dispatcher crashed")
            self._fatal.append("sink dispatcher crashed")
            self.abort()
        finally:
            for bar in bars.values():
                bar.close()

    @staticmethod
    def _progress(bars: dict[str, tqdm], frame: Frame) -> None:
        bar = bars.get(frame.stream_id)
        if bar is None:
            total = frame.meta.get("total_frames")
            if not total:
                return  # unknown length: the periodic log line reports progress
            # disable=None: no bar when stderr is not a terminal (logs carry progress there)
            bar = tqdm(total=int(total), desc=frame.stream_id, unit="frame", position=len(bars), disable=None)
            bars[frame.stream_id] = bar
        bar.update(1)

    # ------------------------------------------------------------ run

    def run(self, handle_signals: bool = True) -> dict[str, Any]:
        """Start every plugin, run until all sources end (or a stop), close everything, and return
        the run summary (see :meth:`engine.metrics.Metrics.summary`). Raises
        :class:`PipelineStartError` if a plugin cannot start."""
        settings = self.config.pipeline
        old_handlers = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old_handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            try:
                self.metrics = Metrics(settings.name, settings.metrics_port, settings.metrics_host, self.readiness)
            except OSError as exc:
                raise PipelineStartError(f"pipeline.metrics_port {settings.metrics_port} on metrics_host "
                                         f"{settings.metrics_host}: {exc}") from exc
            sources, stages, sinks = self._start_plugins()
            with logging_redirect_tqdm():
                self._run_threads(sources, stages, sinks)
            # sinks that can lose messages (zmq_push with a send timeout) report how many
            sink_drops = {f"{spec.path} {spec.type}": int(getattr(plugin, "dropped", 0)) for spec, plugin in self._plugins
                          if spec.role == "sink" and getattr(plugin, "dropped", 0)}
        finally:
            self._close_plugins()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            if self.metrics is not None:
                self.metrics.close()
        summary = self.metrics.summary()
        summary["sink_drops"] = sink_drops
        summary["stopped"] = self.stop_event.is_set()
        summary["aborted"] = self.abort_event.is_set()
        if self._fatal:
            summary["fatal"] = list(self._fatal)
        log.debug("run summary\n%s", format_summary(summary))
        return summary

    def _run_threads(self, sources: list[Source], stages: list[Stage], sinks: list[Sink]) -> None:
        cfg, metrics = self.config, self.metrics
        size = cfg.pipeline.queue_size
        metrics.started = time.monotonic()  # wall time and fps cover processing, not model loading
        first = Channel("input", self.abort_event, on_drop=metrics.dropped)
        for spec, source in zip(cfg.sources, sources):
            lane = first.add_lane(size, drop_oldest=bool(source.live))
            self._spawn(f"source-{spec.id}", self._run_source, spec, source, first, lane)
        names = [spec.type for spec in cfg.stages]
        inbox = first
        for i, (spec, stage) in enumerate(zip(cfg.stages, stages)):
            name = spec.type if names.count(spec.type) == 1 else f"{spec.type}#{i}"
            outbox = Channel(f"after-{name}", self.abort_event)
            out_lane = outbox.add_lane(size)
            metrics.add_stage(name, inbox.depth)
            self._spawn(f"stage-{name}", self._run_stage, name, stage, inbox, outbox, out_lane)
            inbox = outbox
        metrics.add_stage("sinks", inbox.depth)
        self._spawn("sinks", self._run_sinks, list(zip(cfg.sinks, sinks)), inbox)
        self._running = True
        log.info(
            "pipeline %s running: %d source(s), stages [%s], sinks [%s]",
            cfg.pipeline.name,
            len(sources),
            ", ".join(s.type for s in cfg.stages),
            ", ".join(s.type for s in cfg.sinks),
        )
        next_log = time.monotonic() + cfg.pipeline.log_interval_s
        # join with a timeout: keeps the main thread responsive to signals and drives the log line
        abort_deadline = None
        while any(t.is_alive() for t in self._threads):
            if self.abort_event.is_set():
                abort_deadline = abort_deadline or time.monotonic() + ABORT_GRACE_S
                if time.monotonic() > abort_deadline:
                    # e.g. a sink blocked in a send to a dead peer: leave it to process exit
                    stuck = [t.name for t in self._threads if t.is_alive()]
                    log.error("abort: threads still busy after %.0f s, abandoning them: %s", ABORT_GRACE_S, stuck)
                    self._abandoned = True
                    return
            for t in self._threads:
                t.join(timeout=0.1)
                if time.monotonic() >= next_log:
                    log.info("%s", metrics.log_line())
                    next_log = time.monotonic() + cfg.pipeline.log_interval_s

    def _spawn(self, name: str, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        if target == self._run_source:
            self._source_threads.append(thread)
        thread.start()

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) for the ``/ready`` probe: the pipeline runs and at least one source still produces."""
        if self.stop_event.is_set():
            return False, "stopping"
        if not self._running:
            return False, "starting (loading models, opening inputs)"
        running = sum(t.is_alive() for t in self._source_threads)
        if not running:
            return False, "every source has ended"
        return True, f"{running} of {len(self._source_threads)} source(s) running"


def run_pipeline(config: PipelineConfig, handle_signals: bool = True) -> dict[str, Any]:
    """Convenience: ``Pipeline(config).run()``."""
    return Pipeline(config).run(handle_signals=handle_signals)
