"""The teacher's network lives with the landmark encoders (the engine's torch backend builds it too)."""

from plugins.landmarks.encoders.mobilenet_v1 import MobileNetV1

__all__ = ["MobileNetV1"]
