"""The 3D landmark model: :class:`LandmarkModel` (the one predictor), its :class:`Faces` result, the
``landmarks`` stage (``plugins.landmarks.stage``), backends and the transformer definition."""

from plugins.landmarks.model import Faces, LandmarkModel

__all__ = ["Faces", "LandmarkModel"]
