"""INT8 calibration: crop selection balanced over pose (dataset), activation ranges by entropy and
percentile (ranges), the explicitly quantised Q/DQ ONNX and a TensorRT calibration cache (qdq).
``python -m calibration`` runs it on a bundle; ``python -m training.build_engine --precision int8``
runs it and validates the result."""
