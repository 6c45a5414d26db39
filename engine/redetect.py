"""Requests for a fresh face detection, from later stages to the detector, keyed by stream id.

With ``centerface.detect_every = N`` the detector runs on every N-th frame of a stream and the landmark
stage tracks faces in between. When a track is lost (low landmark confidence, or no live track) the
landmark stage calls :meth:`RedetectRequests.request`; the detector calls :meth:`RedetectRequests.take`
for each frame it sees and detects that frame when a request was pending. Frames already past the
detector (in queues, in the same batch) are not re-detected, so a lost face is found again a few frames
later (at most a queue's worth).

One :class:`RedetectRequests` per pipeline: it is ``context.redetect`` of the pipeline's
:class:`engine.context.PipelineContext`, which the runtime gives to every plugin, so two pipelines in one
process (a service, tests) never see each other's requests, even for the same stream id. Minimal on
purpose: a set of stream ids behind a lock (stages run in threads of one process).
"""

from __future__ import annotations

import threading


class RedetectRequests:
    """Pending "detect this stream's next frame" requests of one pipeline (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: set[str] = set()

    def request(self, stream_id: str) -> None:
        """Ask for a detection on the next frame of ``stream_id`` the detector processes."""
        with self._lock:
            self._pending.add(stream_id)

    def take(self, stream_id: str) -> bool:
        """True (once) if a detection was requested for ``stream_id``; clears the request."""
        with self._lock:
            if stream_id in self._pending:
                self._pending.discard(stream_id)
                return True
            return False

    def forget(self, stream_id: str) -> None:
        """Drop a pending request of a stream that ended (its id may be used again by a new stream)."""
        with self._lock:
            self._pending.discard(stream_id)

    def pending(self) -> set[str]:
        """Streams with a pending request (for tests and logs)."""
        with self._lock:
            return set(self._pending)
