"""Run metrics: per-stage fps, latency and queue depth, per-stream counts, Prometheus, run summary.

Every thread of the runtime records into one :class:`Metrics` object (a lock keeps it consistent).
``log_line()`` summarises the last interval; ``summary()`` the whole run. With a ``metrics_port`` the
same numbers are exported through prometheus-client on a private registry (so several pipelines in
one process do not collide), by a small HTTP server on ``metrics_host`` that also answers the probes
an orchestrator asks: ``/healthz`` (200 while the process serves at all: liveness) and ``/ready``
(200 once the pipeline runs and a source is still producing, 503 with the reason otherwise:
readiness). Any other path is a 404, so a typo in a scrape or probe config shows.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

LATENCY_KEEP = 100_000  # per-frame latencies kept for the run summary's percentiles
FPS_KEEP, FPS_WINDOW_S = 256, 5.0  # a stream's current fps: its deliveries in the last 5 s (at most 256)


@dataclass
class StreamStats:
    frames: int = 0  # frames that reached the sinks
    faces: int = 0
    drops: int = 0  # frames dropped by a drop-oldest queue (live sources)
    errors: int = 0  # stage/sink failures on this stream's frames, plus skipped inputs
    total_frames: int | None = None  # known length (file sources), for progress
    ended: bool = False
    events: dict[str, int] = field(default_factory=dict)  # source/sink counters: decode_errors, reconnects, ...
    last_error: str | None = None  # the last stage/sink failure on this stream's frames
    # delivery times (monotonic) of the last frames, for the current fps a service reports
    recent: deque = field(default_factory=lambda: deque(maxlen=FPS_KEEP))


@dataclass
class StageStats:
    frames: int = 0
    batches: int = 0
    errors: int = 0
    busy_s: float = 0.0
    window_frames: int = 0
    window_latency_ms: list[float] = field(default_factory=list)
    # decode -> this stage done, per frame (bounded: percentiles over the last LATENCY_KEEP frames)
    frame_latency_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_KEEP))


Readiness = Callable[[], tuple[bool, str]]  # (ready, why), asked on every /ready request


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, encoder(self.server.registry), content_type)
        elif path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/ready":
            ready, why = self.server.readiness()
            self._reply(200 if ready else 503, f"{'ready' if ready else 'not ready'}: {why}\n".encode())
        else:
            self._reply(404, b"not found: /metrics, /healthz and /ready are served\n")

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: not worth a log line
        log.debug("metrics http: " + format, *args)


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, registry: CollectorRegistry, readiness: Readiness):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.registry, self.readiness = registry, readiness
        super().__init__((host, port), _Handler)


class Metrics:
    def __init__(self, pipeline: str = "pipeline", port: int | None = None, host: str = "127.0.0.1",
                 readiness: Readiness | None = None):
        self.pipeline = pipeline
        self.readiness: Readiness = readiness or (lambda: (False, "no readiness check"))
        self._lock = threading.Lock()
        self.streams: dict[str, StreamStats] = defaultdict(StreamStats)
        self.stages: dict[str, StageStats] = {}
        self.queue_depth: dict[str, Callable[[], int]] = {}  # stage name -> callable giving its input depth
        self.source_errors: dict[str, list[str]] = {}
        self.removed_streams = self.removed_frames = 0  # streams a service removed (their frames still count)
        self.started = time.monotonic()
        self.finished: float | None = None
        self._window_start = self.started
        self._window_e2e_ms: list[float] = []  # decode -> sinks, per frame
        self._e2e_ms: deque = deque(maxlen=LATENCY_KEEP)  # whole run, for the summary's p50/p95
        self.registry = CollectorRegistry()
        labels = ["pipeline", "stage"]
        self._p_frames = Counter("engine_stage_frames", "Frames processed by a stage", labels, registry=self.registry)
        self._p_errors = Counter("engine_stage_errors", "Failed stage batches", labels, registry=self.registry)
        self._p_latency = Histogram(
            "engine_stage_batch_seconds",
            "Stage processing time per batch",
            labels,
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self._p_depth = Gauge("engine_queue_depth", "Frames waiting in a stage's input queue", labels, registry=self.registry)
        slabels = ["pipeline", "stream"]
        self._p_out = Counter("engine_stream_frames", "Frames delivered to sinks", slabels, registry=self.registry)
        self._p_faces = Counter("engine_stream_faces", "Faces delivered to sinks", slabels, registry=self.registry)
        self._p_drops = Counter("engine_stream_dropped_frames", "Frames dropped (live sources)", slabels, registry=self.registry)
        self._p_events = Counter(
            "engine_stream_events",
            "Counted faults per stream: decode_errors (damaged packets skipped), reconnects, outages, "
            "sink_drops (messages a sink could not deliver), eos_drops (end-of-stream messages a subscriber missed)",
            [*slabels, "event"],
            registry=self.registry,
        )
        self._p_e2e = Histogram(
            "engine_end_to_end_seconds",
            "Time from decode to the sinks, per frame",
            ["pipeline"],
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self._p_frame_latency = Histogram(
            "engine_stage_frame_latency_seconds",
            "Time from decode to a stage's output, per frame",
            labels,
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self._server: _MetricsServer | None = None
        if port is not None:
            self._server = _MetricsServer(host, port, self.registry, lambda: self.readiness())
            threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True).start()
            url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
            log.info("Prometheus metrics on %s/metrics, probes %s/healthz and %s/ready", url, url, url)

    # ------------------------------------------------------------ recording

    def add_stage(self, name: str, depth: Callable[[], int]) -> None:
        self.stages[name] = StageStats()
        self.queue_depth[name] = depth

    def stage_batch(self, stage: str, n: int, seconds: float, failed: bool = False) -> None:
        with self._lock:
            s = self.stages[stage]
            s.frames += n
            s.batches += 1
            s.busy_s += seconds
            s.window_frames += n
            s.window_latency_ms.append(seconds * 1000.0)
            if failed:
                s.errors += 1
        self._p_frames.labels(self.pipeline, stage).inc(n)
        self._p_latency.labels(self.pipeline, stage).observe(seconds)
        if failed:
            self._p_errors.labels(self.pipeline, stage).inc()

    def frame_latency(self, stage: str, seconds: list[float]) -> None:
        """Per-frame time from decode (``Frame.time``) to ``stage``'s output, one value per frame."""
        with self._lock:
            self.stages[stage].frame_latency_ms.extend(1000.0 * s for s in seconds)
        hist = self._p_frame_latency.labels(self.pipeline, stage)
        for s in seconds:
            hist.observe(s)

    def stream_errors(self, stream_id: str, n: int = 1, message: str | None = None) -> None:
        with self._lock:
            st = self.streams[stream_id]
            st.errors += n
            st.last_error = message or st.last_error

    def delivered(self, stream_id: str, faces: int, latency_s: float) -> None:
        with self._lock:
            st = self.streams[stream_id]
            st.frames += 1
            st.faces += faces
            st.recent.append(time.monotonic())
            self._window_e2e_ms.append(latency_s * 1000.0)
            self._e2e_ms.append(latency_s * 1000.0)
        self._p_e2e.labels(self.pipeline).observe(latency_s)
        self._p_out.labels(self.pipeline, stream_id).inc()
        self._p_faces.labels(self.pipeline, stream_id).inc(faces)

    def dropped(self, stream_id: str) -> None:
        with self._lock:
            self.streams[stream_id].drops += 1
        self._p_drops.labels(self.pipeline, stream_id).inc()

    def count(self, stream_id: str, event: str, n: int = 1) -> None:
        """Count ``n`` fault events (``decode_errors``, ``reconnects``, ``outages``, ``sink_drops``, ...)."""
        with self._lock:
            events = self.streams[stream_id].events
            events[event] = events.get(event, 0) + n
        self._p_events.labels(self.pipeline, stream_id, event).inc(n)

    def counts_of(self, stream_id: str) -> dict[str, int]:
        """A stream's loss counters so far: queue ``drops``, stage/sink ``errors`` and the events."""
        with self._lock:
            st = self.streams[stream_id]
            return {"drops": st.drops, "errors": st.errors, **st.events}

    def stream_total(self, stream_id: str, total: int | None) -> None:
        with self._lock:
            self.streams[stream_id].total_frames = total

    def stream_ended(self, stream_id: str) -> None:
        with self._lock:
            self.streams[stream_id].ended = True

    def remove_stream(self, stream_id: str) -> None:
        """Forget a stream that was removed from a running service: its counters here and its Prometheus
        series (every metric with a ``stream`` label), so neither grows with the streams that come and go."""
        with self._lock:
            st = self.streams.pop(stream_id, None)
            if st is None:
                return
            self.removed_streams += 1
            self.removed_frames += st.frames

        series = [(m, (self.pipeline, stream_id)) for m in (self._p_out, self._p_faces, self._p_drops)]
        series += [(self._p_events, (self.pipeline, stream_id, event)) for event in st.events]
        for metric, labels in series:
            try:
                metric.remove(*labels)
            except KeyError:  # never incremented (e.g. no drops): no series to remove
                pass

    def stream_status(self, stream_id: str) -> dict[str, Any]:
        """One stream's counters now, with its current fps (deliveries over the last few seconds)."""
        now = time.monotonic()
        with self._lock:
            st = self.streams.get(stream_id)
            if st is None:
                return {"frames": 0, "faces": 0, "drops": 0, "errors": 0, "fps": 0.0, "last_error": None, "events": {}}
            recent = [t for t in st.recent if now - t <= FPS_WINDOW_S]
            span = min(FPS_WINDOW_S, now - recent[0]) if recent else 0.0
            return {"frames": st.frames, "faces": st.faces, "drops": st.drops, "errors": st.errors,
                    "fps": round(len(recent) / span, 2) if span > 0.5 else 0.0, "last_error": st.last_error,
                    "events": dict(st.events), "total_frames": st.total_frames}

    # ------------------------------------------------------------ reporting

    def log_line(self) -> str:
        """One line for the last interval: per stage fps, mean/p95 batch latency, queue depth."""
        now = time.monotonic()
        dt = max(now - self._window_start, 1e-9)
        self._window_start = now
        parts = []
        with self._lock:
            for name, s in self.stages.items():
                lat = np.asarray(s.window_latency_ms) if s.window_latency_ms else np.zeros(1)
                depth = self.queue_depth[name]()
                self._p_depth.labels(self.pipeline, name).set(depth)
                parts.append(
                    f"{name}: {s.window_frames / dt:.1f} fps, batch mean {lat.mean():.1f} ms "
                    f"p95 {np.percentile(lat, 95):.1f} ms, queue {depth}"
                )
                s.window_frames = 0
                s.window_latency_ms = []
            if self._window_e2e_ms:
                e2e = np.asarray(self._window_e2e_ms)
                parts.append(f"end-to-end mean {e2e.mean():.0f} ms p95 {np.percentile(e2e, 95):.0f} ms")
                self._window_e2e_ms = []
            streams = [
                f"{sid} {st.frames}" + (f"/{st.total_frames}" if st.total_frames else "") + " frames"
                + (f", {st.drops} dropped" if st.drops else "")
                for sid, st in self.streams.items()
            ]
        return " | ".join(parts + streams)

    def summary(self) -> dict[str, Any]:
        """Per stream frames/faces/drops/errors; per stage totals; total fps and wall time."""
        end = self.finished if self.finished is not None else time.monotonic()
        wall = end - self.started
        with self._lock:
            streams = {
                sid: {"frames": st.frames, "faces": st.faces, "drops": st.drops, "errors": st.errors, **st.events}
                for sid, st in sorted(self.streams.items())
            }
            stages = {
                name: {
                    "frames": s.frames,
                    "batches": s.batches,
                    "errors": s.errors,
                    "mean_batch_ms": round(1000 * s.busy_s / s.batches, 2) if s.batches else None,
                    "latency_ms": _percentiles(s.frame_latency_ms),
                }
                for name, s in self.stages.items()
            }
            e2e = _percentiles(self._e2e_ms)
        frames = sum(s["frames"] for s in streams.values()) + self.removed_frames
        removed = {"removed_streams": self.removed_streams} if self.removed_streams else {}
        return {
            "pipeline": self.pipeline,
            "wall_time_s": round(wall, 3),
            "frames": frames,
            "fps": round(frames / wall, 2) if wall > 0 else 0.0,
            "streams": streams,
            "stages": stages,
            "latency_ms": e2e,  # decode -> sinks, per frame
            "source_errors": {k: v for k, v in self.source_errors.items() if v},
            **removed,
        }

    def close(self) -> None:
        self.finished = self.finished or time.monotonic()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _percentiles(values_ms) -> dict[str, float] | None:
    """p50/p95 (ms) of per-frame latencies, None when there are none."""
    if not values_ms:
        return None
    p50, p95 = np.percentile(np.fromiter(values_ms, dtype=np.float64), [50, 95])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2)}


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable run summary (what ``python -m engine run`` prints)."""
    lines = [
        f"pipeline {summary['pipeline']}: {summary['frames']} frames in {summary['wall_time_s']:.2f} s "
        f"({summary['fps']:.1f} fps)" + (f", {summary['removed_streams']} stream(s) removed on the way"
                                         if summary.get("removed_streams") else "")
    ]
    for sid, s in summary["streams"].items():
        events = "".join(f", {v} {k.replace('_', ' ')}" for k, v in s.items()
                         if k not in ("frames", "faces", "drops", "errors") and v)
        lines.append(
            f"  stream {sid}: {s['frames']} frames, {s['faces']} faces, {s['drops']} dropped, {s['errors']} errors{events}"
        )
    for name, s in summary["stages"].items():
        mean = "-" if s["mean_batch_ms"] is None else f"{s['mean_batch_ms']:.1f} ms"
        lat = s.get("latency_ms")
        lat = f", decode->done p50 {lat['p50']:.0f} ms p95 {lat['p95']:.0f} ms" if lat else ""
        lines.append(f"  stage {name}: {s['frames']} frames in {s['batches']} batches ({mean}/batch), {s['errors']} errors{lat}")
    if summary.get("latency_ms"):
        lat = summary["latency_ms"]
        lines.append(f"  end-to-end latency (decode -> sinks): p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms")
    for source, errs in summary.get("source_errors", {}).items():
        for err in errs:
            lines.append(f"  source {source}: {err}")
    return "\n".join(lines)
