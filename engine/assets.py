"""Where the engine finds files it does not download: the repo's samples/models and ``../shared``."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """The project's shared folder: ``$FACELIFT_SHARED`` or ``../shared`` beside the repository."""
    return Path(os.environ.get("FACELIFT_SHARED", REPO_ROOT.parent / "shared")).resolve()


def shared_asset(*parts: str) -> Path:
    path = shared_dir().joinpath("assets", *parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the shared assets folder is expected at {shared_dir()} "
            "(set FACELIFT_SHARED to point elsewhere)"
        )
    return path


def sample_clip() -> Path:
    """The bundled sample clip (a real face with synthetic camera motion, made by scripts/make_sample.py)."""
    return REPO_ROOT / "samples" / "astronaut.mp4"


DEFAULT_BUNDLE_NAME = "facelift_mbv1_fast_96"


def default_bundle() -> Path:
    """The committed default landmark model bundle (models/<name>/, written by training/bundle.py)."""
    return REPO_ROOT / "models" / DEFAULT_BUNDLE_NAME


def shared_assets_problem() -> str | None:
    """None when the shared assets folder exists, else one line saying where it was looked for and how
    to point at it (for test runners and scripts that need it)."""
    assets = shared_dir() / "assets"
    if assets.is_dir():
        return None
    how = "FACELIFT_SHARED is set to " + os.environ["FACELIFT_SHARED"] if "FACELIFT_SHARED" in os.environ else \
        "FACELIFT_SHARED is not set, so ../shared beside the repository was tried"
    return (f"shared assets missing: no folder {assets} ({how}); set FACELIFT_SHARED=/path/to/shared "
            "(the folder that holds assets/videos, assets/images, assets/ict_facekit, ...) or put it at ../shared")
