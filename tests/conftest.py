import logging
from pathlib import Path

import pytest

from engine.assets import shared_dir

logging.basicConfig(level=logging.INFO)


@pytest.fixture(scope="session")
def shared() -> Path:
    """../shared with its assets (videos, images, ICT FaceKit, teacher weights)."""
    path = shared_dir()
    assert (path / "assets").is_dir(), f"shared assets missing at {path}"
    return path
