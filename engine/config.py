"""The schema of ``pipeline.toml``, validated completely before anything starts.

Each ``[[sources]]``/``[[stages]]``/``[[sinks]]`` table names its plugin with ``type`` (sources also
carry a stream ``id``); every other key is an option validated by that plugin's own ``Options`` model.
All problems are collected and reported together, each with its key path, e.g.
``sinks[1].hwm: Input should be greater than or equal to 0``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.plugin import Plugin, PluginOptions, discover, resolve_paths, role_of

SECTIONS = {"sources": "source", "stages": "stage", "sinks": "sink"}


class PipelineSettings(BaseModel):
    """The ``[pipeline]`` table: engine-wide settings."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("pipeline", description="name used in logs and metrics")
    queue_size: int = Field(32, ge=1, le=10_000, description="capacity of each bounded queue (frames)")
    log_interval_s: float = Field(5.0, gt=0, description="seconds between metric log lines")
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="serve Prometheus /metrics and the /healthz, /ready probes on this "
        "HTTP port (off if unset)"
    )
    metrics_host: str = Field(
        "127.0.0.1", min_length=1, description="address the metrics server binds: 127.0.0.1 (this machine only), "
        "0.0.0.0 or :: (every interface, e.g. for a Prometheus in another container)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="logging level")
    cpu_pinning: Literal["off", "auto"] = Field(
        "off", description="auto: the threads of CPU-bound model stages (the landmark stage) run on the first "
        "half of the CPUs and every other pipeline thread on the rest (engine/affinity.py); off: the OS decides"
    )


@dataclass
class PluginSpec:
    """One configured plugin: its class, validated options and position in the file."""

    role: str
    type: str
    cls: type[Plugin]
    options: PluginOptions
    path: str  # e.g. "stages[0]", for messages
    id: str | None = None  # stream id (sources only)

    def create(self) -> Plugin:
        if self.role == "source":
            return self.cls(self.options, self.id)  # type: ignore[call-arg]
        return self.cls(self.options)


@dataclass
class PipelineConfig:
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    sources: list[PluginSpec] = field(default_factory=list)
    stages: list[PluginSpec] = field(default_factory=list)
    sinks: list[PluginSpec] = field(default_factory=list)
    path: Path | None = None


class ConfigError(ValueError):
    """Invalid configuration; ``errors`` holds one ``key.path: problem`` line per problem."""

    def __init__(self, errors: list[str], source: str = "pipeline config"):
        self.errors = errors
        self.source = source
        super().__init__(f"{source}: {len(errors)} error(s)\n" + "\n".join(f"  {e}" for e in errors))


def _loc(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _pydantic_errors(prefix: str, exc: ValidationError, model: type[BaseModel]) -> list[str]:
    allowed = ", ".join(model.model_fields) or "(none)"
    lines = []
    for err in exc.errors():
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; allowed keys: {allowed}"
        elif err["type"] != "missing":
            msg = f"{msg} (got {err.get('input')!r})"
        lines.append(f"{_loc(prefix, tuple(err['loc']))}: {msg}")
    return lines


def _plugin_spec(
    section: str, index: int, table: Any, plugins: dict[str, type[Plugin]], errors: list[str],
    base_dir: str | Path | None, path: str | None = None,
) -> PluginSpec | None:
    role = SECTIONS[section]
    path = path or f"{section}[{index}]"
    if not isinstance(table, dict):
        errors.append(f"{path}: expected a table ([[{section}]]), got {type(table).__name__}")
        return None
    options = dict(table)
    names = sorted(n for n, c in plugins.items() if role_of(c) == role)
    type_name = options.pop("type", None)
    if not isinstance(type_name, str):
        errors.append(f"{path}.type: required; one of: {', '.join(names)}")
        return None
    cls = plugins.get(type_name)
    if type_name in getattr(plugins, "broken", {}):
        errors.append(f"{path}.type: {plugins.broken[type_name]}; fix or reinstall that package")
        return None
    if cls is None or role_of(cls) != role:
        errors.append(f"{path}.type: unknown {role} plugin {type_name!r}; installed {role}s: {', '.join(names) or '(none)'}")
        return None
    stream_id = None
    if role == "source":
        stream_id = options.pop("id", None)
        if not isinstance(stream_id, str) or not stream_id:
            errors.append(f"{path}.id: required: a non-empty string naming the stream (message topic)")
    try:
        validated = cls.Options.model_validate(options)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(path, exc, cls.Options))
        return None
    if base_dir is not None:
        resolve_paths(validated, base_dir)
    return PluginSpec(role=role, type=type_name, cls=cls, options=validated, path=path, id=stream_id)


def parse_config(
    data: dict[str, Any], plugins: dict[str, type[Plugin]] | None = None, source: str = "pipeline config",
    base_dir: str | Path | None = None, require_sources: bool = True,
) -> PipelineConfig:
    """Validate a parsed TOML document. ``plugins`` defaults to the installed ones (entry points).
    ``base_dir``: the folder relative path options resolve against (``load_config``: the file's folder;
    None leaves them relative to the working directory). ``require_sources=False`` (``serve``) accepts a
    pipeline without ``[[sources]]``: streams are added at run time."""
    plugins = discover() if plugins is None else plugins
    errors: list[str] = []
    allowed_top = ["pipeline", *SECTIONS]
    for key in data:
        if key not in allowed_top:
            errors.append(f"{key}: unknown key; allowed top-level keys: {', '.join(allowed_top)}")
    config = PipelineConfig()
    try:
        config.pipeline = PipelineSettings.model_validate(data.get("pipeline", {}))
    except ValidationError as exc:
        errors.extend(_pydantic_errors("pipeline", exc, PipelineSettings))
    for section in SECTIONS:
        tables = data.get(section, [])
        if not isinstance(tables, list):
            errors.append(f"{section}: expected an array of tables ([[{section}]])")
            continue
        for i, table in enumerate(tables):
            spec = _plugin_spec(section, i, table, plugins, errors, base_dir)
            if spec is not None:
                getattr(config, section).append(spec)
    seen: dict[str, str] = {}
    for spec in config.sources:
        if spec.id is None:
            continue
        if spec.id in seen:
            errors.append(f"{spec.path}.id: duplicate source id {spec.id!r} (also {seen[spec.id]}.id)")
        seen[spec.id] = spec.path
    if require_sources and not data.get("sources"):
        errors.append("sources: at least one [[sources]] table is required")
    if errors:
        raise ConfigError(errors, source)
    return config


def parse_source(
    table: Any, plugins: dict[str, type[Plugin]] | None = None, base_dir: str | Path | None = None,
    source: str = "stream spec",
) -> PluginSpec:
    """One source spec exactly as a ``[[sources]]`` table (``type``, ``id``, options), validated by the same
    plugin options; errors name the key as ``source.<key>``. Used to add streams at run time."""
    errors: list[str] = []
    spec = _plugin_spec("sources", 0, table, discover() if plugins is None else plugins, errors, base_dir, "source")
    if errors or spec is None:
        raise ConfigError(errors, source)
    return spec


def load_config(
    path: str | Path, plugins: dict[str, type[Plugin]] | None = None, require_sources: bool = True
) -> PipelineConfig:
    """Read and validate ``pipeline.toml``; raises :class:`ConfigError` listing every problem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"file not found: {path}"], str(path)) from None
    except IsADirectoryError:
        raise ConfigError([f"{path} is a folder; give the pipeline .toml file inside it"], str(path)) from None
    except PermissionError:
        raise ConfigError([f"cannot read {path}: permission denied"], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text (byte {exc.start}); is this a TOML file? save it as UTF-8"], str(path)) from None
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror or exc}"], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from None
    config = parse_config(data, plugins, source=str(path), base_dir=path.resolve().parent,
                          require_sources=require_sources)
    config.path = path
    return config
