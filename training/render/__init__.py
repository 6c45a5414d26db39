"""Headless rasterization for the synthetic generator (moderngl + EGL)."""

from training.render.rasterizer import GLMesh, Raster, Rasterizer, Shading

__all__ = ["GLMesh", "Raster", "Rasterizer", "Shading"]
