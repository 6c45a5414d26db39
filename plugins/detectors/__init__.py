"""Face detectors: :class:`CenterFace` (``CenterFace()(image_rgb) -> Detections``) and its stage."""

from plugins.detectors.centerface import CenterFace, Detections

__all__ = ["CenterFace", "Detections"]
