"""Plugin API: sources, stages and sinks, discovered through the ``engine.plugins`` entry-point group.

A plugin is a class with a ``name``, a pydantic ``Options`` model (unknown keys are rejected) and one of
three roles. Built-ins in ``plugins/`` register exactly as a third-party package would, in its
``pyproject.toml``::

    [project.entry-points."engine.plugins"]
    my_sink = "my_package.sinks:MySink"
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from engine.context import PipelineContext
from engine.frame import Frame

ENTRY_POINT_GROUP = "engine.plugins"
log = logging.getLogger(__name__)


class PluginOptions(BaseModel):
    """Base for every plugin's options: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


def path_option(default: Any = ..., *, description: str) -> Any:
    """A file/folder option: relative values are resolved against the config file's folder (as DeepStream
    and Savant do), so a pipeline file works from any working directory."""
    return Field(default, description=f"{description} Relative to the config file's folder.",
                 json_schema_extra={"config_relative": True})


def resolve_paths(options: PluginOptions, base_dir: Path) -> None:
    """In place: every ``path_option`` holding a relative path -> ``base_dir / value`` (same type)."""
    for name, field in type(options).model_fields.items():
        value = getattr(options, name)
        if value is None or not (isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("config_relative")):
            continue
        if not Path(value).is_absolute():
            resolved = Path(base_dir) / value
            setattr(options, name, resolved if isinstance(value, Path) else str(resolved))


class Plugin:
    """Common base. Subclasses set ``name``, ``Options`` and a one-line docstring."""

    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, options: PluginOptions):
        self.options = options
        # set by the runtime: the pipeline was asked to stop (SIGINT/SIGTERM); a plugin that may block
        # (e.g. a send to an absent peer) watches it so the first signal is not ignored
        self.stop_event: threading.Event = threading.Event()
        # per-stream event counters (decode_errors, reconnects, outages, sink_drops, ...): summary, metrics, eos
        self.counters: Counter[tuple[str, str]] = Counter()
        self.on_count: Callable[[str, str, int], None] | None = None  # set by the runtime (metrics)

    @property
    def context(self) -> PipelineContext:
        """What the plugins of this plugin's pipeline share (e.g. ``context.redetect``), set by the runtime
        before ``start()``. A plugin used without a runtime gets a private one on first use; assign one
        :class:`~engine.context.PipelineContext` to several plugins to connect them by hand."""
        context = self.__dict__.get("_context")
        if context is None:  # also without super().__init__; setdefault: one context even if two threads race
            context = self.__dict__.setdefault("_context", PipelineContext())
        return context

    @context.setter
    def context(self, context: PipelineContext) -> None:
        self.__dict__["_context"] = context

    def count(self, stream_id: str, event: str, n: int = 1) -> None:
        """Count ``n`` events (e.g. ``"decode_errors"``) on ``stream_id``."""
        self.__dict__.setdefault("counters", Counter())[stream_id, event] += n  # also without super().__init__
        on_count = getattr(self, "on_count", None)
        if on_count is not None:
            on_count(stream_id, event, n)

    def start(self) -> None:
        """Acquire resources (models, sockets). Called once, before any data flows."""

    def close(self) -> None:
        """Release resources. Called once, also after errors; must not raise."""


class Source(Plugin):
    """Produces frames of one or more streams. Runs in its own thread.

    ``live`` sources (network streams, webcams) get drop-oldest queues; file sources block (lossless).
    ``frames()`` returns when the input ends or when ``stop_event`` is set. An unreadable input is
    reported through ``logging`` and counted in ``errors``; it must not stop the other sources.
    """

    live: bool = False
    # True while a live source waits to reopen an input it lost or could not open (service status)
    reconnecting: bool = False

    def __init__(self, options: PluginOptions, source_id: str):
        super().__init__(options)
        self.source_id = source_id
        self.errors: list[str] = []  # one line per skipped input, for the run summary

    def planned_streams(self) -> list[str]:
        """Stream ids this source will produce, as far as known before it starts (for start-up checks)."""
        return [self.source_id]

    def check_input(self) -> list[str]:
        """Problems with the input found without decoding it (``validate``): one line each, naming
        the option and what to do. Empty = looks fine (or cannot be told before running)."""
        return []

    def frames(self, stop_event: threading.Event) -> Iterator[Frame]:
        raise NotImplementedError


class Stage(Plugin):
    """Transforms batches of frames in order (detector, landmark model, tracker, ...).

    The runtime collects up to ``batch_size`` frames, waiting at most ``max_wait_ms`` after the first
    one, so a stage batches across frames and streams. ``process`` returns the same frames, in order,
    with fields added.
    """

    batch_size: int = 1
    max_wait_ms: float = 0.0
    # CPU-bound work that releases the GIL (a model on the CPU): with ``[pipeline] cpu_pinning = "auto"``
    # this stage's thread gets CPUs of its own (engine/affinity.py)
    dedicated_cpus: bool = False

    def process(self, frames: list[Frame]) -> list[Frame]:
        raise NotImplementedError

    def end_of_stream(self, stream_id: str) -> None:
        """Called once a stream's last frame has been through ``process`` (it ended, failed or was removed):
        release what the stage keeps for it (trackers, counters). No frame of that stream follows, until
        a new stream with the same id starts from scratch."""


class Sink(Plugin):
    """Consumes processed frames (ZeroMQ, files, video overlay). ``close`` flushes.

    ``counts_of(stream_id)`` (set by the runtime) gives a stream's upstream loss counters so far
    (``drops``, ``errors``, ``decode_errors``, ``reconnects``, ...), for end-of-stream messages.
    """

    @staticmethod
    def counts_of(stream_id: str) -> dict[str, int]:
        return {}

    def write(self, frame: Frame) -> None:
        raise NotImplementedError

    def end_of_stream(self, stream_id: str) -> None:
        """Called when one stream has delivered its last frame (it ended, failed or was removed): send its
        end-of-stream message, close its file, and release what the sink keeps for it."""

    @classmethod
    def check_streams(cls, options: PluginOptions, stream_ids: list[str]) -> list[str]:
        """Before anything runs: problems this sink would have with these streams, one
        ``option: problem`` line each (e.g. two streams mapping to one output file). Empty = fine."""
        return []


ROLES: dict[str, type[Plugin]] = {"source": Source, "stage": Stage, "sink": Sink}


class PluginNotFoundError(LookupError):
    pass


class Plugins(dict):
    """Installed plugins by name; ``broken`` maps the names of those that failed to load to the reason."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.broken: dict[str, str] = {}


def discover() -> Plugins:
    """All installed plugins by name. A broken third-party plugin is skipped with a warning naming it (it
    must not stop pipelines that do not use it); a config that names it gets its import error."""
    found = Plugins()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Plugin)):
                raise TypeError("not a Source, Stage or Sink class")
        except Exception as exc:  # a third-party import error must say which plugin broke
            found.broken[ep.name] = f"plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
            log.warning("%s; skipped", found.broken[ep.name])
            continue
        found[ep.name] = cls
    return found


def role_of(cls: type[Plugin]) -> str:
    for role, base in ROLES.items():
        if issubclass(cls, base):
            return role
    raise TypeError(f"{cls.__name__} is not a Source, Stage or Sink")


def get_plugin(name: str, role: str) -> type[Plugin]:
    plugins = discover()
    cls = plugins.get(name)
    choices = sorted(n for n, c in plugins.items() if role_of(c) == role)
    if name in plugins.broken:
        raise PluginNotFoundError(plugins.broken[name])
    if cls is None or role_of(cls) != role:
        raise PluginNotFoundError(f"no {role} plugin named {name!r}; installed {role}s: {', '.join(choices)}")
    return cls
