"""Stream-processing engine for 3D facial landmarks and head pose.

Data flows one way: source -> decode -> detect -> crop -> batch -> infer -> pose -> track/smooth -> sinks.
The engine never imports ``training``; models arrive as versioned bundles.
"""

__version__ = "0.1.0"
