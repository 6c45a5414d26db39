"""Dynamic face batcher: groups per-face model inputs from any frames and streams into backend calls.

A producer ``submit``s one item per face (a preprocessed crop, or whatever the backend's ``run``
function takes) and gets a :class:`concurrent.futures.Future` for that face's outputs. A worker thread
runs ``run(items)`` when ``max_batch`` items are pending, or ``max_wait_ms`` after the first pending
item arrived (a slow producer never waits for a full batch), or at once after :meth:`FaceBatcher.flush`
(the producer has nothing more for now). Items go in submission order; each future receives its own
row of every output, so results go back to their frames whatever the batch composition.

Why a thread: a producer that submits faces as it crops them overlaps the CPU crop of the next faces
with the backend call on the previous ones (ONNX Runtime and torch release the GIL), and several
producers (stages, benchmarks) may share one batcher. The landmark stage no longer uses it: its crops
take ~0.1 ms (OpenCV), so it crops a whole wave and calls the backend directly, which saves two thread
hand-offs per wave (each a wait for a core on a busy machine).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RunFn = Callable[[Sequence[Any]], dict[str, np.ndarray]]


class BatcherClosedError(RuntimeError):
    """``submit`` after ``close``."""


class FaceBatcher:
    """Collect items, run ``run(items) -> {name: (N, ...) array}`` in batches of at most ``max_batch``.

    Args:
        run: the backend call; gets a list of items, returns arrays whose first axis is the item.
        max_batch: most items per call.
        max_wait_ms: longest time the first pending item waits for the batch to fill.
        name: worker thread name (logs).
    """

    def __init__(self, run: RunFn, max_batch: int, max_wait_ms: float, name: str = "face-batcher"):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run = run
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self._cond = threading.Condition()
        self._pending: deque[tuple[Any, Future, float]] = deque()
        self._flush = False
        self._closed = False
        self.batch_sizes: list[int] = []  # every call's size, for tests and benchmarks
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    # ------------------------------------------------------------ producer side

    def submit(self, item: Any) -> Future:
        """Queue one face; the future resolves to ``{name: array}`` for that face (or its error)."""
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise BatcherClosedError("submit after close")
            self._pending.append((item, future, time.monotonic()))
            self._cond.notify_all()
        return future

    def flush(self) -> None:
        """Run what is pending now instead of waiting for the deadline (nothing more is coming)."""
        with self._cond:
            if self._pending:
                self._flush = True
                self._cond.notify_all()

    def close(self) -> None:
        """Run what is pending, then stop the worker. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join()

    # ------------------------------------------------------------ worker

    def _take(self) -> list[tuple[Any, Future, float]] | None:
        """Block until a batch is due; ``None`` when closed and drained."""
        with self._cond:
            while True:
                if self._pending:
                    due = self._pending[0][2] + self.max_wait_s
                    if len(self._pending) >= self.max_batch or self._flush or self._closed or time.monotonic() >= due:
                        n = min(self.max_batch, len(self._pending))
                        batch = [self._pending.popleft() for _ in range(n)]
                        if not self._pending:
                            self._flush = False
                        return batch
                    self._cond.wait(max(due - time.monotonic(), 0.0))
                elif self._closed:
                    return None
                else:
                    self._cond.wait()

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            futures = [f for _, f, _ in batch]
            try:
                out = self.run([item for item, _, _ in batch])
                for name, value in out.items():
                    if len(value) != len(batch):
                        raise RuntimeError(f"backend output {name!r} has {len(value)} rows for {len(batch)} items")
            except BaseException as exc:  # every waiting face gets the error, the worker lives on
                for f in futures:
                    f.set_exception(exc)
                continue
            self.batch_sizes.append(len(batch))
            for i, f in enumerate(futures):
                f.set_result({name: value[i] for name, value in out.items()})
