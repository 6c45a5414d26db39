"""A pseudo-label dataset folder (``python -m training.pseudolabel``) as an evaluation set.

Used for MF validation: frames of held-out real clips with the teacher's 2D labels (mirror-averaged,
two-pass) as the reference, the stored detector box as the crop source and the NME normaliser. Only
MF samples are read; their images live inside the shards, so samples carry them in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.dataset import KIND_MF, ShardReader
from training.evaluation.readers.base import EvalSample, Reader


@dataclass
class InMemorySample(EvalSample):
    pixels: np.ndarray | None = None

    def load_image(self) -> np.ndarray:
        return self.pixels


class PseudoLabelReader(Reader):
    name = "mf"
    layout = "<dir>/manifest.json + <dir>/shards/shard-NNNNN.tar (python -m training.pseudolabel --mf-clips ...)"

    def __init__(self, root: str | Path):
        super().__init__()
        self.root = Path(root)
        self._require(self.root / "manifest.json")

    def _samples(self) -> Iterator[EvalSample]:
        clips = ShardReader(self.root).manifest.get("mf_clips", [])
        for s in ShardReader(self.root, kind=KIND_MF):
            clip = int(s["identity"])
            name = Path(clips[clip]).name if clip < len(clips) else str(clip)
            yield InMemorySample(key=s["__key__"], image=self.root, box=s["box"], landmarks_2d=s["landmarks_2d"],
                                 attributes={"clip": name}, pixels=s["image"])
