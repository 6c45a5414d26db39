"""Requests for a fresh face detection, from later stages to the detector, keyed by stream id.

With ``centerface.detect_every = N`` the detector runs on every N-th frame of a stream and the landmark
stage tracks faces in between. When a track is lost (low landmark confidence, or no live track) the
landmark stage calls :func:`request`; the detector calls :func:`take` for each frame it sees and detects
that frame when a request was pending. Frames already past the detector (in queues, in the same batch)
are not re-detected, so a lost face is found again a few frames later (at most a queue's worth).

Minimal on purpose: one process-wide set of stream ids behind a lock (stages run in threads of one
process). Two pipelines in one process that use the same stream id share requests.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_pending: set[str] = set()


def request(stream_id: str) -> None:
    """Ask for a detection on the next frame of ``stream_id`` the detector processes."""
    with _lock:
        _pending.add(stream_id)


def take(stream_id: str) -> bool:
    """True (once) if a detection was requested for ``stream_id``; clears the request."""
    with _lock:
        if stream_id in _pending:
            _pending.discard(stream_id)
            return True
        return False


def forget(stream_id: str) -> None:
    """Drop a pending request of a stream that ended (its id may be used again by a new stream)."""
    with _lock:
        _pending.discard(stream_id)


def pending() -> set[str]:
    """Streams with a pending request (for tests and logs)."""
    with _lock:
        return set(_pending)
