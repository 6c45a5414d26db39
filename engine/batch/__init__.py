"""Dataset batch processing: run a pipeline config's stages over many clips, resumably, on one machine
(decode processes + batched inference) or on a Ray cluster. See docs/batch.md.

Public API::

    from engine.batch import BatchOptions, list_files, list_celebvhq, run_batch
    clips = list_celebvhq("/data/celebvhq")            # or list_files("clips/*.mp4")
    totals = run_batch("pipeline.toml", clips, "out/", BatchOptions(workers=4))
"""

from engine.batch.dataset import ClipList, ClipTask, DatasetError, list_celebvhq, list_files
from engine.batch.job import BatchOptions, run_batch
from engine.batch.output import FORMAT_VERSION, read_meta, validate_clip

__all__ = [
    "FORMAT_VERSION", "BatchOptions", "ClipList", "ClipTask", "DatasetError", "list_celebvhq", "list_files",
    "read_meta", "run_batch", "validate_clip",
]
