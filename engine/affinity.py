"""CPU pinning of a pipeline's threads (``[pipeline] cpu_pinning``).

On a small CPU machine the landmark model's thread competes for the cores with the decoder's threads,
the detector and the sinks; the scheduler moves them around and the model thread, the pipeline's
bottleneck, loses time. ``cpu_pinning = "auto"`` splits the CPUs this process may use into d + 1
contiguous groups of (nearly) equal size, d = the stages whose ``dedicated_cpus`` is true (CPU-bound
work that releases the GIL: the landmark model on the CPU; the detector when it runs on every frame):
each of those stages' threads gets a group of its own, every other pipeline thread (sources, the other
stages, sinks) the last group. Threads that a pinned thread starts later (FFmpeg's decode threads)
inherit its CPUs; thread pools made before (ONNX Runtime's, when a session is created) do not. Nothing
is pinned with fewer than d + 1 usable CPUs (then the OS places the threads, as with ``"off"``),
without a dedicated stage, or where the OS has no ``sched_setaffinity``. Measured in README "Measured"
(``benchmarks/bench_peers.py`` runs the default pipeline with it, and detect-every-frame without it
being able to help: two dedicated stages on 2 CPUs).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (empty where the OS cannot say)."""
    if not hasattr(os, "sched_getaffinity"):
        return []
    return sorted(os.sched_getaffinity(0))


def plan(mode: str, dedicated_stages: int, cpus: list[int] | None = None) -> list[set[int]] | None:
    """CPU groups: one per dedicated stage (in order), then one for every other pipeline thread; None:
    no pinning (see the module docstring)."""
    cpus = usable_cpus() if cpus is None else cpus
    groups = dedicated_stages + 1
    if mode != "auto" or dedicated_stages == 0 or len(cpus) < groups or not hasattr(os, "sched_setaffinity"):
        return None
    bounds = [round(i * len(cpus) / groups) for i in range(groups + 1)]
    return [set(cpus[bounds[i]:bounds[i + 1]]) for i in range(groups)]


def pin_current_thread(cpus: set[int] | None) -> None:
    """Run the calling thread (and the threads it starts from now on) on ``cpus``; None: leave it."""
    if not cpus:
        return
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:  # e.g. a container that forbids it: run unpinned, say so once per thread
        log.warning("cpu_pinning: cannot pin this thread to CPUs %s (%s); it runs unpinned", sorted(cpus), exc)
