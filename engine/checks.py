"""Start-up checks beyond the schema: what ``validate`` and ``run`` can know before anything runs.

- sinks: stream ids that two streams would share an output file for, existing files a sink must not
  overwrite (``Sink.check_streams``): errors for both ``validate`` and ``run`` (exit 2);
- stage order: a stage that needs faces (``landmarks``, ``tracker``) after a detector: an error;
- ``deep`` (``validate``): every input exists and is readable (``Source.check_input``), every path
  option of a stage (a model bundle, an engine folder) exists; a pipeline without sinks is a warning.
"""

from __future__ import annotations

from pathlib import Path

from engine.config import PipelineConfig, PluginSpec

# Which stages produce and need faces; a plugin class may declare its own ``provides``/``requires``.
PROVIDES = {"centerface": {"faces"}}
REQUIRES = {"landmarks": {"faces"}, "tracker": {"faces"}}


def _declared(spec: PluginSpec, attr: str, table: dict[str, set[str]]) -> set[str]:
    return set(getattr(spec.cls, attr, None) or table.get(spec.type, set()))


def stage_order(config: PipelineConfig) -> tuple[list[str], list[str]]:
    """(errors, warnings): a stage before the stage that gives it its input is an error; a stage
    whose input no stage gives (maybe an undeclared third-party detector) a warning."""
    errors: list[str] = []
    warnings: list[str] = []
    available: set[str] = set()
    known = {p for spec in config.stages for p in _declared(spec, "provides", PROVIDES)}
    for spec in config.stages:
        missing = _declared(spec, "requires", REQUIRES) & known - available
        if missing:
            providers = [s.path for s in config.stages if _declared(s, "provides", PROVIDES) & missing]
            errors.append(f"{spec.path}.type: {spec.type!r} needs {', '.join(sorted(missing))} from "
                          f"{', '.join(providers)}, which comes after it; move it after the detector")
        elif _declared(spec, "requires", REQUIRES) - available:
            warnings.append(f"{spec.path}.type: {spec.type!r} needs faces, but no stage before it detects them; "
                          "add a [[stages]] type = \"centerface\" before it")
        available |= _declared(spec, "provides", PROVIDES)
    return errors, warnings


def check_pipeline(config: PipelineConfig, deep: bool = False) -> tuple[list[str], list[str]]:
    """(errors, warnings), one ``key.path: problem; what to do`` line each."""
    errors: list[str] = []
    warnings: list[str] = []
    streams: list[str] = []
    for spec in config.sources:
        source = spec.create()
        streams += source.planned_streams()
        if deep:
            errors += [f"{spec.path}: {line}" for line in source.check_input()]
    for spec in config.sinks:
        errors += [f"{spec.path}.{line}" for line in spec.cls.check_streams(spec.options, streams)]
    order_errors, order_warnings = stage_order(config)
    errors += order_errors
    warnings += order_warnings
    if deep:
        for spec in config.stages:
            for name, info in type(spec.options).model_fields.items():
                extra = info.json_schema_extra
                value = getattr(spec.options, name)
                if value is not None and isinstance(extra, dict) and extra.get("config_relative") and not Path(value).exists():
                    errors.append(f"{spec.path}.{name}: {value} does not exist; fix the path or remove the key")
        if not config.sinks:
            warnings.append("sinks: none configured: results are computed and discarded; add a [[sinks]] table")
    return errors, warnings
