"""Synthetic multi-view generators (docs/generator.md)."""

from training.generators.base import Camera, Generator, Identity, Render

__all__ = ["Camera", "Generator", "Identity", "Render", "create"]


def create(name: str = "ict_head", **kwargs) -> Generator:
    """Generator by name. ``ict_head`` is the embedded textured morphable head."""
    if name == "ict_head":
        from training.generators.ict_head import ICTHeadGenerator

        return ICTHeadGenerator(**kwargs)
    raise ValueError(f"unknown generator {name!r}: available: 'ict_head' (see docs/generator.md)")
