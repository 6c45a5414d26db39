"""The inference half of a batch job: the pipeline config's stages, run on batches of frames.

Stages are built exactly as the streaming runtime builds them (``PluginSpec.create()`` + ``start()``),
so a batch job runs whatever ``[[stages]]`` lists (detector, landmarks, tracker) with the same options.
``[[sources]]`` and ``[[sinks]]`` are ignored: the job's input and output replace them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from engine.assets import default_bundle
from engine.config import PipelineConfig
from engine.context import PipelineContext
from engine.frame import Frame
from engine.plugin import Stage

log = logging.getLogger(__name__)


def stages_description(config: PipelineConfig) -> list[dict[str, Any]]:
    """Each stage's type and complete options (defaults included): what decides the results."""
    return [{"type": s.type, "options": s.options.model_dump(mode="json")} for s in config.stages]


def config_hash(config: PipelineConfig) -> str:
    """sha256 of the stages' types and options; result files remember it so a re-run with other
    settings does not take them for done."""
    text = json.dumps(stages_description(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_identities(config: PipelineConfig) -> list[dict[str, Any]]:
    """The model bundles the stages load, each as ``{"stage", "option", "path", "name", "sha256"}``.

    The options alone do not decide the results: the same ``bundle`` path (or the default one) can hold
    new weights. ``sha256`` is a digest of the bundle's ``manifest.json`` file list (each file's sha256,
    which ``load_bundle`` verifies against the files when the stage starts), so new weights give a new
    digest. A bundle option left unset means the engine's default bundle, as in the landmark stage.
    """
    models = []
    for spec in config.stages:
        for name, field in type(spec.options).model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            if not extra.get("config_relative"):
                continue
            value = getattr(spec.options, name)
            path = Path(value) if value is not None else default_bundle() if name == "bundle" else None
            if path is None or not (path / "manifest.json").is_file():
                continue  # not a bundle (or missing: the stage's start says so)
            models.append({"stage": spec.path, "option": name, "path": str(path), **bundle_identity(path)})
    return models


def bundle_identity(path: Path) -> dict[str, Any]:
    """``{"name", "sha256"}`` of a bundle directory (see :func:`model_identities`); an unreadable
    manifest gives the digest of its bytes, so it still differs from any other bundle."""
    raw = (path / "manifest.json").read_bytes()
    try:
        manifest = json.loads(raw)
        files = {str(k): str(v["sha256"]) for k, v in manifest["files"].items()}
        name = str(manifest.get("name", path.name))
    except (ValueError, KeyError, TypeError, AttributeError):
        return {"name": path.name, "sha256": hashlib.sha256(raw).hexdigest()}
    text = json.dumps(files, sort_keys=True, separators=(",", ":"))
    return {"name": name, "sha256": hashlib.sha256(text.encode()).hexdigest()}


def model_hash(models: list[dict[str, Any]]) -> str:
    """Short digest of :func:`model_identities`: the model part of a result's resume key."""
    key = [(m["stage"], m["option"], m["sha256"]) for m in models]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


class StageRunner:
    """Builds and starts the config's stages; ``process`` runs a batch of frames (from any clips,
    each clip's frames in order) through all of them."""

    def __init__(self, config: PipelineConfig):
        if not config.stages:
            raise ValueError(f"{config.path or 'config'}: no [[stages]] to run (a batch job needs at least a detector)")
        self.names = [s.type for s in config.stages]
        self.stages: list[Stage] = []
        self.context = PipelineContext()  # shared by these stages (redetect requests)
        try:
            for spec in config.stages:
                stage = spec.create()
                self.stages.append(stage)  # type: ignore[arg-type]
                stage.context = self.context
                stage.start()
        except Exception as exc:
            self.close()
            raise RuntimeError(f"{spec.path} (type {spec.type!r}) failed to start: {type(exc).__name__}: {exc}") from exc

    def process(self, frames: list[Frame]) -> list[Frame]:
        for name, stage in zip(self.names, self.stages):
            out = stage.process(frames)
            if len(out) != len(frames):
                raise RuntimeError(f"stage {name} returned {len(out)} frames for {len(frames)}")
            frames = out
        return frames

    def close(self) -> None:
        for stage in reversed(self.stages):
            try:
                stage.close()
            except Exception:  # close must not raise; the others still close
                log.exception("stage %s: close failed", type(stage).__name__)
        self.stages = []
