"""What the plugins of one pipeline share: a small object the runtime creates once per
:class:`engine.runtime.Pipeline` (and per batch job's stage runner) and sets as ``plugin.context`` on
every source, stage and sink before ``start()``, as DeepStream/Savant hand their elements one pipeline
context.

A plugin built outside a runtime (unit tests, the golden replay harness, scripts) gets a private context
of its own on first use, so it works alone; to make a detector and a landmark stage built by hand talk to
each other, give both the same one::

    context = PipelineContext()
    detector.context = landmarks.context = context

Holds no per-process state: two pipelines in one process (a service, tests) share nothing through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.redetect import RedetectRequests


@dataclass(eq=False)
class PipelineContext:
    """One pipeline's shared state. ``redetect``: "detect this stream's next frame" requests from later
    stages (landmarks) to the detector (:mod:`engine.redetect`)."""

    redetect: RedetectRequests = field(default_factory=RedetectRequests)
