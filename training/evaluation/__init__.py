"""Evaluation stack: metrics (NME, 3D NME, pose), NMLC with mesh upsampling, dataset readers.

See docs/evaluation.md. A model runner produces per-image predictions (68x2 pixels, optional 68x3,
rotation) for the samples a reader yields, then calls :func:`metrics.landmark_report` /
:func:`nmlc.nmlc` with the samples' boxes, meshes and attributes.
"""
