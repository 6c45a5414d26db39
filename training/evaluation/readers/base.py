"""What every evaluation-set reader yields, and the helpers they share.

A reader is an iterable of :class:`EvalSample` built from a folder in the layout its dataset is
downloaded in (docs/evaluation.md lists them). Layout problems raise :class:`DatasetLayoutError`
naming the missing path and the expected layout; a single bad sample is skipped, counted and logged
(``reader.skipped``), so one corrupt file does not stop an evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder does not have the expected layout."""

    def __init__(self, dataset: str, path: Path, expected: str, hint: str = ""):
        self.path = Path(path)
        msg = f"{dataset}: {self.path} not found or not valid.\nExpected layout:\n{expected.rstrip()}"
        if hint:
            msg += f"\n{hint}"
        super().__init__(msg)


@dataclass
class EvalSample:
    """One evaluation image (or clip) with whatever ground truth its dataset has.

    - ``image``: path to the image (or video clip for CelebV-HQ), RGB when loaded.
    - ``box``: (4,) x1y1x2y2 pixels, the NME/NMLC normaliser ``sqrt(w*h)``; None if the set has none.
    - ``landmarks_2d``: (68, 2) pixels; ``landmarks_3d``: (68, 3) in the dataset's model frame.
    - ``vertices``: (V, 3) ground-truth mesh in the model frame (NMLC), with ``projection`` (3, 4):
      ``pixel = (P @ [X, 1])[:2] / (P @ [X, 1])[2]`` for any model-frame point X.
    - ``rotation``: (3, 3) model frame -> OpenCV camera axes (engine/geometry.py convention).
    - ``attributes``: per-image category columns (strings/bools) for per-category reports.
    - ``extras``: everything else the dataset provides (raw angles, raw matrices, ...).
    """

    key: str
    image: Path
    box: np.ndarray | None = None
    landmarks_2d: np.ndarray | None = None
    landmarks_3d: np.ndarray | None = None
    vertices: np.ndarray | None = None
    projection: np.ndarray | None = None
    rotation: np.ndarray | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    extras: dict = field(default_factory=dict)

    def project(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) model-frame points -> (..., 2) pixels through ``projection``."""
        if self.projection is None:
            raise ValueError(f"sample {self.key} has no camera projection")
        return project_points(self.projection, points)

    def load_image(self) -> np.ndarray:
        """HxWx3 uint8 RGB (PIL)."""
        from PIL import Image

        with Image.open(self.image) as im:
            return np.asarray(im.convert("RGB"))


class Reader:
    """Base class: subclasses set ``name``/``layout`` and implement ``_samples``."""

    name = "dataset"
    layout = ""

    def __init__(self) -> None:
        self.skipped: dict[str, str] = {}

    def _require(self, path: Path, hint: str = "") -> Path:
        if not path.exists():
            raise DatasetLayoutError(self.name, path, self.layout, hint)
        return path

    def _skip(self, key: str, reason: str) -> None:
        self.skipped[key] = reason
        log.warning("%s: skipping %s: %s", self.name, key, reason)

    def _samples(self) -> Iterator[EvalSample]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[EvalSample]:
        self.skipped = {}
        yield from self._samples()

    def attribute_columns(self, samples: list[EvalSample]) -> dict[str, list]:
        """``{attribute: [value per sample]}`` for metrics.by_category."""
        names = sorted({k for s in samples for k in s.attributes})
        return {n: [s.attributes.get(n) for s in samples] for n in names}


def project_points(projection: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.asarray(projection, dtype=np.float64)
    h = np.asarray(points, dtype=np.float64) @ p[:, :3].T + p[:, 3]
    return h[..., :2] / h[..., 2:3]


def pinhole_projection(k: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(3, 4) ``K [R | t]``."""
    return np.asarray(k, np.float64) @ np.hstack([np.asarray(r, np.float64), np.reshape(t, (3, 1))])


def opengl_projection(model_view: np.ndarray, projection: np.ndarray, image_height: float) -> np.ndarray:
    """(3, 4) pixel projection equivalent to DAD-3DHeads' OpenGL convention.

    The dataset projects ``c = P @ MV @ [X, 1]`` and takes ``(c_x / c_w, H - c_y / c_w)``; written as
    one projective map that is rows ``[A_0, H A_3 - A_1, A_3]`` of ``A = P @ MV``.
    """
    a = np.asarray(projection, np.float64) @ np.asarray(model_view, np.float64)
    return np.stack([a[0], image_height * a[3] - a[1], a[3]])


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) and triangles (F, 3) (0-based) of a Wavefront .obj; quads are split."""
    verts, faces = [], []
    with open(path) as fh:
        for line in fh:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "v":
                verts.append([float(x) for x in parts[1:4]])
            elif parts[0] == "f":
                ids = [int(p.split("/")[0]) for p in parts[1:]]
                ids = [i - 1 if i > 0 else len(verts) + i for i in ids]
                faces.extend([ids[0], ids[j], ids[j + 1]] for j in range(1, len(ids) - 1))
    if not verts:
        raise ValueError(f"{path}: no 'v' lines, not a mesh .obj")
    return np.asarray(verts, np.float32), np.asarray(faces, np.int64).reshape(-1, 3)


def read_faces(path: Path) -> np.ndarray:
    """Triangles from an .obj, a .npy (F, 3) or a torch .pt tensor (DAD-3DHeads' flame_mesh_faces.pt)."""
    path = Path(path)
    if path.suffix == ".obj":
        return read_obj(path)[1]
    if path.suffix == ".npy":
        return np.load(path).astype(np.int64)
    if path.suffix == ".pt":
        import torch

        return torch.load(path, map_location="cpu", weights_only=True).numpy().astype(np.int64)
    raise ValueError(f"{path}: faces must be .obj, .npy or .pt")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header (no decoding)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size
