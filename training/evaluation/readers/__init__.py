"""Readers for the evaluation sets, in the layouts users download them in (docs/evaluation.md)."""

from training.evaluation.readers.aflw2000 import AFLW2000Reader
from training.evaluation.readers.base import DatasetLayoutError, EvalSample, Reader
from training.evaluation.readers.celebvhq import CelebVHQReader
from training.evaluation.readers.dad3d import DAD3DHeadsReader
from training.evaluation.readers.multiface import MultifaceReader
from training.evaluation.readers.pseudolabel import PseudoLabelReader

READERS = {
    "dad3d": DAD3DHeadsReader,
    "multiface": MultifaceReader,
    "aflw2000": AFLW2000Reader,
    "celebvhq": CelebVHQReader,
    "mf": PseudoLabelReader,
}

__all__ = [
    "AFLW2000Reader", "CelebVHQReader", "DAD3DHeadsReader", "DatasetLayoutError", "EvalSample",
    "MultifaceReader", "PseudoLabelReader", "READERS", "Reader",
]
