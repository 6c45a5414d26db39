"""engine.batcher.FaceBatcher: routing, order, full batches, the deadline with a slow producer, errors."""

import threading
import time

import numpy as np
import pytest

from engine.batcher import BatcherClosedError, FaceBatcher


def double(items):
    return {"y": np.asarray(items, dtype=np.float64) * 2, "i": np.asarray(items)}


def test_results_return_to_their_items_in_submission_order():
    seen: list[list[int]] = []

    def run(items):
        seen.append(list(items))
        return double(items)

    batcher = FaceBatcher(run, max_batch=4, max_wait_ms=5)
    futures = [batcher.submit(k) for k in range(23)]
    batcher.flush()
    assert [f.result(timeout=5)["y"] for f in futures] == [2.0 * k for k in range(23)]
    batcher.close()
    assert [k for batch in seen for k in batch] == list(range(23))  # batches keep submission order
    assert max(batcher.batch_sizes) == 4 and sum(batcher.batch_sizes) == 23


def test_many_producers_each_get_their_own_rows():
    batcher = FaceBatcher(double, max_batch=8, max_wait_ms=2)
    results: dict[int, list[float]] = {}

    def producer(p: int) -> None:
        futures = [batcher.submit(1000 * p + k) for k in range(50)]
        results[p] = [float(f.result(timeout=5)["y"]) for f in futures]

    threads = [threading.Thread(target=producer, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    for p in range(4):
        assert results[p] == [2.0 * (1000 * p + k) for k in range(50)]
    assert max(batcher.batch_sizes) > 1  # producers' faces were batched together


def test_full_batch_goes_at_once_rest_waits_for_flush():
    batcher = FaceBatcher(double, max_batch=4, max_wait_ms=60_000)
    futures = [batcher.submit(k) for k in range(10)]
    futures[7].result(timeout=5)  # two full batches ran without any deadline
    assert batcher.batch_sizes == [4, 4] and not futures[8].done()
    batcher.flush()
    assert futures[9].result(timeout=5)["y"] == 18
    assert batcher.batch_sizes == [4, 4, 2]
    batcher.close()


def test_slow_producer_batch_goes_at_deadline_not_when_full():
    batcher = FaceBatcher(double, max_batch=100, max_wait_ms=100)
    start = time.monotonic()
    first = batcher.submit(0)
    for k in range(1, 8):  # one face every 30 ms: the batch can never fill
        time.sleep(0.03)
        batcher.submit(k)
    first.result(timeout=5)
    # the first batch ran ~100 ms after the first face, holding the 3-4 faces submitted by then
    assert 1 < batcher.batch_sizes[0] < 8, batcher.batch_sizes
    batcher.close()
    assert sum(batcher.batch_sizes) == 8
    assert time.monotonic() - start < 2.0


def test_deadline_timing():
    done_at: list[float] = []

    def run(items):
        done_at.append(time.monotonic())
        return double(items)

    batcher = FaceBatcher(run, max_batch=64, max_wait_ms=80)
    t0 = time.monotonic()
    batcher.submit(1).result(timeout=5)
    assert 0.07 <= done_at[0] - t0 < 0.5
    batcher.close()


def test_errors_reach_every_face_of_the_batch_and_worker_survives():
    def run(items):
        if 13 in items:
            raise ValueError("bad face")
        return double(items)

    batcher = FaceBatcher(run, max_batch=2, max_wait_ms=1)
    bad = [batcher.submit(12), batcher.submit(13)]
    for f in bad:
        with pytest.raises(ValueError, match="bad face"):
            f.result(timeout=5)
    assert batcher.submit(5).result(timeout=5)["y"] == 10
    batcher.close()
    with pytest.raises(BatcherClosedError):
        batcher.submit(1)


def test_close_runs_what_is_pending():
    batcher = FaceBatcher(double, max_batch=10, max_wait_ms=60_000)
    futures = [batcher.submit(k) for k in range(3)]
    batcher.close()
    assert [f.result(timeout=1)["y"] for f in futures] == [0, 2, 4]
