"""Stream-processing engine for 3D facial landmarks and head pose.

Data flows one way: source -> decode -> detect -> crop -> batch -> infer -> pose -> track/smooth -> sinks.
The engine never imports ``training``; models arrive as versioned bundles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.streaming import stream

__version__ = "0.1.0"
__all__ = ["stream"]


def __getattr__(name: str) -> Any:
    # lazy: ``import engine.messages`` (a subscriber) should not load the runtime; the module is
    # engine.streaming, not engine.stream, so importing it does not replace this function
    if name == "stream":
        from engine.streaming import stream

        return stream
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
