"""An untrained tiny landmark bundle for the engine's landmark tests (built once per test session).

Real export path, no training worth the name: training.train on configs/tiny.toml for 1 step over a
tiny dataset (tests/tiny_dataset.py), then training.bundle.export_bundle. Accuracy is the model
engineer's to test; these tests check shapes, geometry and backend agreement.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_cache: dict[str, Path] = {}


def tiny_bundle(tmp_path_factory) -> Path:
    key = str(tmp_path_factory.getbasetemp())
    if key not in _cache:
        from tiny_dataset import write_tiny_dataset
        from training.bundle import export_bundle
        from training.train import TrainConfig, train

        tmp = tmp_path_factory.mktemp("landmark_bundle")
        data = write_tiny_dataset(tmp / "data", n_mv_ids=2, views=2, n_mf=2)
        raw = tomllib.loads((REPO / "training" / "configs" / "tiny.toml").read_text())
        raw["data"]["train"] = [str(data)]
        raw["train"].update(max_steps=1, val_every=1)
        ckpt = train(TrainConfig.model_validate(raw), tmp / "run")
        _cache[key] = export_bundle(ckpt, tmp / "bundle", name="tiny_untrained")
    return _cache[key]
