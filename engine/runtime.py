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

Service mode (``Pipeline(config, serve=True)``, ``python -m engine serve``): the input channel holds a
lane of its own open until stop, so the pipeline keeps running when its sources end, and sources come
and go at run time (:meth:`Pipeline.add_source`, :meth:`Pipeline.remove_source`). Each source has its
own stop event and lane; a removed source stops, its end-of-stream markers drain behind its frames, every
stage and sink gets ``end_of_stream(stream_id)`` for it (they release what they keep per stream), and
when the markers have passed the sinks the runtime forgets the stream (metrics, Prometheus series,
counters). Its id can then be used again.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from engine.affinity import pin_current_thread, plan, usable_cpus
from engine.config import ConfigError, PipelineConfig, PluginSpec, parse_source
from engine.context import PipelineContext
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


class StreamConflict(ValueError):
    """``add_source``: the id (or a stream id the source would produce) is in use."""


class SourceRejected(ValueError):
    """``add_source``: the spec is valid but the input or a sink refuses it (missing file, a file name a
    sink cannot write); ``errors`` holds one ``key: problem`` line each."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("; ".join(errors))


class NotRunning(RuntimeError):
    """``add_source``: the pipeline is still starting, or stopping."""


@dataclass(eq=False)
class _SourceHandle:
    """A running source: its plugin, stop event, lane, and the streams it produced (id -> whether their
    end-of-stream marker has passed the sinks)."""

    spec: PluginSpec
    source: Source
    stop: threading.Event
    planned: list[str]
    added: bool = False  # at run time (closed by its thread), not from the config
    streams: dict[str, bool] = field(default_factory=dict)
    done: bool = False  # its thread has finished
    removing: bool = False
    released: threading.Event = field(default_factory=threading.Event)
    final: dict[str, Any] | None = None  # its status when it was released


def _redact(uri: str | None) -> str | None:
    """``rtsp://user:pass@host/x`` -> ``rtsp://user:***@host/x``: the status is readable by more people than
    the config."""
    if not uri or "@" not in uri:
        return uri
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))

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
        self._done = False  # the consumer was told the channel finished: no lane may join any more

    def add_lane(self, maxsize: int, drop_oldest: bool = False) -> _Lane | None:
        """A new lane, or ``None`` once the channel has finished (every lane closed and consumed)."""
        lane = _Lane(maxsize, drop_oldest)
        with self._cond:
            if self._done:
                return None
            self._lanes.append(lane)
            self._cond.notify_all()
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
            self._forget_if_drained(lane)
            self._cond.notify_all()

    def _forget_if_drained(self, lane: _Lane) -> None:
        # a service's sources come and go: a closed, empty lane is dropped, not kept and scanned forever
        if lane.closed and not lane.items and lane in self._lanes:
            i = self._lanes.index(lane)
            del self._lanes[i]
            if i < self._next:
                self._next -= 1
            self._next = self._next % len(self._lanes) if self._lanes else 0

    def _pop(self) -> Item | None:
        n = len(self._lanes)
        for k in range(n):
            lane = self._lanes[(self._next + k) % n]
            if lane.items:
                self._next = (self._next + k + 1) % n
                item = lane.items.popleft()
                self._forget_if_drained(lane)
                return item
        return None

    def _finished(self) -> bool:
        if all(lane.closed and not lane.items for lane in self._lanes):
            self._done = True
        return self._done

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

    def __init__(self, config: PipelineConfig, serve: bool = False):
        self.config = config
        self.serve = serve  # keep running when the sources end; sources are added and removed at run time
        self.stop_event = threading.Event()
        self.abort_event = threading.Event()
        self.metrics: Metrics | None = None
        # shared by this pipeline's plugins only (redetect requests, ...): set as plugin.context before start()
        self.context = PipelineContext()
        self._plugins: list[tuple[PluginSpec, Plugin]] = []
        self._threads: list[threading.Thread] = []
        self._pinning: list[set[int]] | None = None  # [pipeline] cpu_pinning (engine/affinity.py)
        self._source_threads: list[threading.Thread] = []
        self._running = False  # all threads spawned (for /ready)
        self._fatal: list[str] = []
        self._abandoned = False
        # sources by id and the stream ids they produce; the lock guards both against the API's threads
        self._lock = threading.RLock()
        self._sources: dict[str, _SourceHandle] = {}
        self._stream_owner: dict[str, _SourceHandle] = {}
        self._input: Channel | None = None
        self._stages: list[Stage] = []
        self._sinks: list[Sink] = []
        self.base_dir = Path(config.path).resolve().parent if config.path else Path.cwd()

    # ------------------------------------------------------------ control

    def request_stop(self) -> None:
        """Stop the sources; what was decoded still drains through stages and sinks."""
        self.stop_event.set()
        with self._lock:  # RLock: also safe from a signal handler that interrupted a holder
            for handle in self._sources.values():
                handle.stop.set()

    def abort(self) -> None:
        """Stop now without draining (second Ctrl-C)."""
        self.request_stop()
        self.abort_event.set()

    # ------------------------------------------------------------ streams at run time

    def add_source(self, spec: dict[str, Any] | PluginSpec) -> dict[str, Any]:
        """Start a source while the pipeline runs; returns its status (see :meth:`streams`). ``spec`` is
        a ``[[sources]]`` table as a dict (relative paths: against the config file's folder) or a parsed
        :class:`PluginSpec`. Raises :class:`~engine.config.ConfigError` (invalid spec, naming the key),
        :class:`StreamConflict` (id in use), :class:`SourceRejected` (input or sink check failed, or the
        source failed to start) or :class:`NotRunning`."""
        if not isinstance(spec, PluginSpec):
            spec = parse_source(spec, base_dir=self.base_dir)
        source = spec.create()
        assert isinstance(source, Source)
        planned = source.planned_streams()
        problems = [f"source.{line}" for line in source.check_input()]
        with self._lock:
            if not self._running or self.stop_event.is_set():
                raise NotRunning("the pipeline is stopping" if self.stop_event.is_set() else
                                 "the pipeline is starting (loading models); try again shortly")
            taken = sorted({spec.id, *planned} & (set(self._sources) | set(self._stream_owner) | self._planned()))
            if taken:
                raise StreamConflict(f"source.id: {', '.join(map(repr, taken))} in use; remove it first or "
                                     "choose another id")
            active = sorted(self._planned() | set(self._stream_owner))
            for sink_spec in self.config.sinks:
                problems += [f"{sink_spec.path}.{line}" for line in
                             sink_spec.cls.check_streams(sink_spec.options, active + planned)]
            if problems:
                raise SourceRejected(problems)
            handle = _SourceHandle(spec, source, threading.Event(), planned, added=True)
            try:
                self._attach(handle)
                source.start()
            except Exception as exc:
                raise SourceRejected([f"source (type {spec.type!r}) failed to start: {type(exc).__name__}: {exc}"]) from exc
            lane = self._input.add_lane(self.config.pipeline.queue_size, drop_oldest=bool(source.live))
            if lane is None:
                raise NotRunning("the pipeline is ending")
            self._sources[spec.id] = handle
            self._spawn(f"source-{spec.id}", self._run_source, handle, self._input, lane)
        log.info("stream %r added (%s %s)", spec.id, spec.type, self._uri(handle))
        return self._status(handle)

    def remove_source(self, source_id: str, wait_s: float | None = 30.0) -> dict[str, Any]:
        """Stop a source: what it decoded drains, its end-of-stream goes out through the sinks, every stage
        and sink releases its state, then the runtime forgets it (status, metrics, Prometheus series).
        Waits up to ``wait_s`` for that and returns its final status (``removed: true``), or its current
        status (``state: stopping``) if it takes longer (it is released when it ends). ``KeyError`` if
        no source has this id."""
        with self._lock:
            handle = self._sources.get(source_id)
            if handle is None:
                raise KeyError(source_id)
            if not handle.removing:
                log.info("stream %r: removing (draining what was decoded)", source_id)
            handle.removing = True
            handle.stop.set()
            self._maybe_release(handle)  # one that already ended goes at once
        if handle.released.wait(wait_s):
            return handle.final or {}
        return self._status(handle)

    def streams(self) -> list[dict[str, Any]]:
        """Status of every source: ``id``, ``type``, ``uri``, ``state`` (starting, running, reconnecting,
        stopping, ended, failed), ``streams`` (the stream ids it produced), ``frames``, ``faces``, ``drops``,
        ``errors``, ``fps`` (now), ``last_error``, ``events`` (decode_errors, reconnects, ...). Ended and
        failed sources stay listed until removed."""
        with self._lock:
            handles = list(self._sources.values())
        return [self._status(h) for h in handles]

    def _planned(self) -> set[str]:
        return {sid for h in self._sources.values() for sid in h.planned}

    @staticmethod
    def _uri(handle: _SourceHandle) -> str | None:
        options = handle.spec.options
        for key in ("url", "path", "device"):
            if isinstance(getattr(options, key, None), str | Path):
                return _redact(str(getattr(options, key)))
        return None

    def _status(self, handle: _SourceHandle) -> dict[str, Any]:
        with self._lock:
            if handle.final is not None:
                return handle.final
            stream_ids = list(handle.streams)
            drained = handle.done and all(handle.streams.values())
        per_stream = [self.metrics.stream_status(sid) for sid in stream_ids] if self.metrics else []
        errors = list(handle.source.errors)
        if handle.removing:
            state = "stopping"
        elif drained:
            state = "failed" if errors else "ended"
        elif handle.source.reconnecting:
            state = "reconnecting"
        elif not stream_ids:
            state = "starting"
        else:
            state = "running"
        events: dict[str, int] = {}
        for st in per_stream:
            for key, n in st["events"].items():
                events[key] = events.get(key, 0) + n
        last_errors = [st["last_error"] for st in per_stream if st["last_error"]]
        return {
            "id": handle.spec.id,
            "type": handle.spec.type,
            "uri": self._uri(handle),
            "state": state,
            "streams": stream_ids,
            **{key: sum(st[key] for st in per_stream) for key in ("frames", "faces", "drops", "errors")},
            "fps": round(sum(st["fps"] for st in per_stream), 2),
            "last_error": errors[-1] if errors else (last_errors[-1] if last_errors else None),
            "events": events,
        }

    def _attach(self, handle: _SourceHandle) -> None:
        source = handle.source
        source.context = self.context
        source.stop_event = handle.stop
        source.on_count = self.metrics.count

    def _stream_done(self, stream_id: str) -> None:
        """The sinks have handled ``stream_id``'s end-of-stream marker."""
        with self._lock:
            handle = self._stream_owner.get(stream_id)
            if handle is not None:
                handle.streams[stream_id] = True
                self._maybe_release(handle)

    def _maybe_release(self, handle: _SourceHandle) -> None:
        """Forget a source being removed once its thread ended and its markers passed the sinks (the
        stages' and sinks' ``end_of_stream`` have run by then). Called with the lock held."""
        if not (handle.removing and handle.done and all(handle.streams.values())) or handle.released.is_set():
            return
        status = self._status(handle)
        for stream_id in handle.streams:
            self._stream_owner.pop(stream_id, None)
            self.metrics.remove_stream(stream_id)
            for plugin in [handle.source, *self._stages, *self._sinks]:
                counters = plugin.__dict__.get("counters")
                for key in [k for k in counters or () if k[0] == stream_id]:
                    del counters[key]
        self.metrics.source_errors.pop(handle.spec.id, None)
        if self._sources.get(handle.spec.id) is handle:
            del self._sources[handle.spec.id]
        handle.final = {**status, "state": "failed" if handle.source.errors else "ended", "removed": True}
        handle.released.set()
        log.info("stream %r removed: %d frame(s), %d face(s), %d dropped, %d error(s)", handle.spec.id,
                 status["frames"], status["faces"], status["drops"], status["errors"])

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
                plugin.context = self.context
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
        self._stages, self._sinks = by_role["stage"], by_role["sink"]
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

    def _run_source(self, handle: _SourceHandle, channel: Channel, lane: _Lane) -> None:
        metrics, spec, source = self.metrics, handle.spec, handle.source
        ended: set[str] = set()  # streams whose end-of-stream marker was sent
        frames = source.frames(handle.stop)
        try:
            for frame in frames:
                if frame.stream_id not in handle.streams:
                    with self._lock:
                        handle.streams[frame.stream_id] = False
                        self._stream_owner[frame.stream_id] = handle
                    metrics.stream_total(frame.stream_id, frame.meta.get("total_frames"))
                channel.put(lane, frame)
                if frame.meta.get("end_of_stream"):  # the source knows; end the stream now, not at exit
                    channel.put(lane, EndOfStream(frame.stream_id))
                    ended.add(frame.stream_id)
                if handle.stop.is_set():
                    break
        except Exception as exc:
            log.exception("%s (%s, id %r) failed", spec.path, spec.type, spec.id)
            source.errors.append(f"source failed: {type(exc).__name__}: {exc}")
        finally:
            if hasattr(frames, "close"):
                frames.close()  # runs the generator's cleanup (closes containers)
            # every stream this source began ends with a marker (stopped, failed, removed): stages and
            # sinks release it on that marker
            for stream_id in list(handle.streams):
                if stream_id not in ended:
                    channel.put(lane, EndOfStream(stream_id))
            channel.close(lane)
            metrics.source_errors[spec.id] = list(source.errors)
            if handle.added:  # a config source is closed with the pipeline, as before
                try:
                    source.close()
                except Exception:
                    log.exception("%s (%s, id %r): close failed", spec.path, spec.type, spec.id)
            with self._lock:
                handle.done = True
                self._maybe_release(handle)

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
                            metrics.stream_errors(frame.stream_id, message=f"stage {name}: {type(exc).__name__}: {exc}")
                    metrics.stage_batch(name, len(frames), time.perf_counter() - t0, failed)
                    if not failed:  # decode -> this stage's output, per frame (e.g. landmarks done)
                        done = time.time()
                        metrics.frame_latency(name, [done - frame.time for frame in frames])
                    replaced = iter(out)
                    batch = [next(replaced) if isinstance(item, Frame) else item for item in batch]
                # a stream's marker follows its last frame, and its id is only reused once the marker has
                # passed the sinks, so no frame in this batch belongs to a stream released here
                for item in batch:
                    if isinstance(item, EndOfStream):
                        try:
                            stage.end_of_stream(item.stream_id)
                        except Exception:
                            log.exception("stage %s: end_of_stream(%r) failed", name, item.stream_id)
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
                            except Exception as exc:
                                failed, failures = True, failures + 1
                                error = f"{spec.path} ({spec.type}): {type(exc).__name__}: {exc}"
                                if failures <= 3:
                                    log.exception("%s (%s) failed to write a frame", spec.path, spec.type)
                        if failed:
                            metrics.stream_errors(item.stream_id, message=error)
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
                        self._stream_done(item.stream_id)
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
        dedicated = [i for i, stage in enumerate(stages) if stage.dedicated_cpus]
        self._pinning = plan(cfg.pipeline.cpu_pinning, len(dedicated))
        if self._pinning is not None:
            log.info("cpu_pinning: %s; every other pipeline thread on CPUs %s", ", ".join(
                f"{cfg.stages[i].type} on CPUs {sorted(g)}" for i, g in zip(dedicated, self._pinning)),
                sorted(self._pinning[-1]))
        elif cfg.pipeline.cpu_pinning == "auto":
            log.info("cpu_pinning: off (%d dedicated stage(s), %d usable CPU(s))", len(dedicated), len(usable_cpus()))
        first = self._input = Channel("input", self.abort_event, on_drop=metrics.dropped)
        # service: a lane that stays open until stop keeps the stages running with no source at all
        hold = first.add_lane(1) if self.serve else None
        for spec, source in zip(cfg.sources, sources):
            handle = _SourceHandle(spec, source, threading.Event(), source.planned_streams())
            self._attach(handle)
            with self._lock:
                self._sources[spec.id] = handle
            lane = first.add_lane(size, drop_oldest=bool(source.live))
            self._spawn(f"source-{spec.id}", self._run_source, handle, first, lane)
        names = [spec.type for spec in cfg.stages]
        inbox = first
        for i, (spec, stage) in enumerate(zip(cfg.stages, stages)):
            name = spec.type if names.count(spec.type) == 1 else f"{spec.type}#{i}"
            outbox = Channel(f"after-{name}", self.abort_event)
            out_lane = outbox.add_lane(size)
            metrics.add_stage(name, inbox.depth)
            self._spawn(f"stage-{name}", self._run_stage, name, stage, inbox, outbox, out_lane,
                        cpu_group=dedicated.index(i) if i in dedicated else -1)
            inbox = outbox
        metrics.add_stage("sinks", inbox.depth)
        self._spawn("sinks", self._run_sinks, list(zip(cfg.sinks, sinks)), inbox)
        with self._lock:
            self._running = True
            if self.stop_event.is_set():  # a signal before the sources had their stop events
                self.request_stop()
        log.info(
            "pipeline %s %s: %d source(s), stages [%s], sinks [%s]",
            cfg.pipeline.name,
            "serving" if self.serve else "running",
            len(sources),
            ", ".join(s.type for s in cfg.stages),
            ", ".join(s.type for s in cfg.sinks),
        )
        next_log = time.monotonic() + cfg.pipeline.log_interval_s
        # join with a timeout: keeps the main thread responsive to signals and drives the log line
        abort_deadline = None
        while any(t.is_alive() for t in list(self._threads)):
            if hold is not None and self.stop_event.is_set():
                first.close(hold)  # the sources are stopping: let the pipeline drain and end
                hold = None
            if self.abort_event.is_set():
                abort_deadline = abort_deadline or time.monotonic() + ABORT_GRACE_S
                if time.monotonic() > abort_deadline:
                    # e.g. a sink blocked in a send to a dead peer: leave it to process exit
                    stuck = [t.name for t in self._threads if t.is_alive()]
                    log.error("abort: threads still busy after %.0f s, abandoning them: %s", ABORT_GRACE_S, stuck)
                    self._abandoned = True
                    return
            with self._lock:  # finished sources' threads: not kept (a service starts many)
                self._threads = [t for t in self._threads if t.is_alive() or t not in self._source_threads]
                self._source_threads = [t for t in self._source_threads if t.is_alive()]
                threads = list(self._threads)
            for t in threads:
                t.join(timeout=0.1)
                if time.monotonic() >= next_log:
                    log.info("%s", metrics.log_line())
                    next_log = time.monotonic() + cfg.pipeline.log_interval_s

    def _spawn(self, name: str, target: Any, *args: Any, cpu_group: int = -1) -> None:
        """Start a pipeline thread; with cpu pinning on, it runs on CPU group ``cpu_group`` (a dedicated
        stage's index; -1: the group of every other thread)."""
        cpus = None if self._pinning is None else self._pinning[cpu_group]

        def run(*a: Any) -> None:
            pin_current_thread(cpus)
            target(*a)

        thread = threading.Thread(target=run if cpus else target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
            if target == self._run_source:
                self._source_threads.append(thread)
        thread.start()

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) for the ``/ready`` probe: the pipeline runs and at least one source still produces
        (a service: the pipeline runs, with or without streams)."""
        if self.stop_event.is_set():
            return False, "stopping"
        if not self._running:
            return False, "starting (loading models, opening inputs)"
        with self._lock:
            running = sum(t.is_alive() for t in self._source_threads)
            total = len(self._sources)
        if self.serve:
            return True, f"serving {total} source(s), {running} producing"
        if not running:
            return False, "every source has ended"
        return True, f"{running} of {total} source(s) running"


def run_pipeline(config: PipelineConfig, handle_signals: bool = True) -> dict[str, Any]:
    """Convenience: ``Pipeline(config).run()``."""
    return Pipeline(config).run(handle_signals=handle_signals)
