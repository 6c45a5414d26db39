"""DAD-3DHeads reader (layout of github.com/PinataFarms/DAD-3DHeads README and its benchmark code).

Ground truth per image is a FLAME mesh (5023 vertices, model frame) with OpenGL model-view and
projection matrices; pixels are ``(c_x / c_w, H - c_y / c_w)`` of ``c = P @ MV @ [X, 1]`` (their
``visualize.py`` / ``benchmark.py``). The pose ground truth is ``diag(1,-1,-1) @ MV[:3,:3]`` (their
``get_gt_rot_mat``), which maps FLAME axes to OpenCV camera axes, our convention.

The 68 landmarks of their NME come from FLAME's landmark embedding (licensed with FLAME, not shipped
here). Pass ``landmark_embedding=`` an .npz with ``lmk_face_idx`` (68,) + ``lmk_b_coords`` (68, 3) and
``faces=`` the FLAME triangles, or an .npz with ``vertex_ids`` (68,), to get ``landmarks_2d``;
NMLC needs only the meshes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from engine.geometry import FRONTAL, orthonormalize
from training.evaluation.readers.base import (
    EvalSample,
    Reader,
    image_size,
    opengl_projection,
    read_faces,
)

LAYOUT = """\
<root>/DAD-3DHeadsDataset/            (root may also be this folder or a split folder)
  train|val|test/
    images/<item_id>.png
    annotations/<item_id>.json        {"vertices": 5023x3, "model_view_matrix": 4x4,
                                       "projection_matrix": 4x4}   (train and val only)
    <split>.json                      [{"item_id", "annotation_path", "img_path",
                                        "bbox": [x, y, w, h], "attributes": {"quality", "gender",
                                        "expression", "age", "occlusions", "pose",
                                        "standard light"}}, ...]"""

# Their attribute keys -> the category names our reports use (docs/method.md section 5).
ATTRIBUTE_NAMES = {
    "quality": "quality",
    "standard light": "light",
    "gender": "gender",
    "age": "age",
    "pose": "pose",
    "expression": "expression",
    "occlusions": "occlusion",
}


class DAD3DHeadsReader(Reader):
    name = "DAD-3DHeads"
    layout = LAYOUT

    def __init__(self, root: str | Path, split: str = "val", faces: str | Path | None = None,
                 landmark_embedding: str | Path | None = None):
        super().__init__()
        self.split = split
        self.split_dir = self._find_split(Path(root), split)
        self.metadata_path = self._require(self.split_dir / f"{split}.json")
        self.annotations_dir = self._require(
            self.split_dir / "annotations",
            "The test split ships without annotations; evaluate on 'val' (or 'train')."
            if split == "test" else "",
        )
        self._require(self.split_dir / "images")
        self.faces_path = Path(faces) if faces is not None else None
        self._faces = None
        self._embedding = None
        if landmark_embedding is not None:
            emb = np.load(self._require(Path(landmark_embedding)))
            self._embedding = {k: emb[k] for k in emb.files}
            if "vertex_ids" not in self._embedding and self.faces_path is None:
                raise ValueError("a barycentric landmark_embedding (lmk_face_idx, lmk_b_coords) needs faces=")

    def _find_split(self, root: Path, split: str) -> Path:
        for cand in (root / "DAD-3DHeadsDataset" / split, root / split, root):
            if (cand / f"{split}.json").exists():
                return cand
        return self._require(root / "DAD-3DHeadsDataset" / split / f"{split}.json").parent

    def faces(self) -> np.ndarray:
        """FLAME triangles (F, 3), from ``faces=`` (.obj template, .npy or the benchmark's .pt)."""
        if self._faces is None:
            if self.faces_path is None:
                raise ValueError(
                    "DAD-3DHeads annotations hold only vertices: pass faces= the FLAME topology, e.g. "
                    "DAD-3DHeads/dad_3dheads_benchmark/data/static/flame_mesh_faces.pt "
                    "or FLAME's head_template.obj"
                )
            self._faces = read_faces(self._require(self.faces_path))
        return self._faces

    def _landmarks(self, vertices: np.ndarray) -> np.ndarray | None:
        emb = self._embedding
        if emb is None:
            return None
        if "vertex_ids" in emb:
            return vertices[emb["vertex_ids"].astype(np.int64)]
        tri = vertices[self.faces()[emb["lmk_face_idx"].astype(np.int64)]]  # (68, 3, 3)
        return np.einsum("nkd,nk->nd", tri, emb["lmk_b_coords"])

    def entries(self) -> list[dict]:
        with open(self.metadata_path) as fh:
            meta = json.load(fh)
        if not isinstance(meta, list):
            raise ValueError(f"{self.metadata_path}: expected a list of items, got {type(meta).__name__}")
        return meta

    def _samples(self) -> Iterator[EvalSample]:
        for item in self.entries():
            key = str(item.get("item_id"))
            image = self.split_dir / "images" / f"{key}.png"
            ann_path = self.annotations_dir / f"{key}.json"
            if not image.exists() or not ann_path.exists():
                self._skip(key, f"missing {image if not image.exists() else ann_path}")
                continue
            try:
                with open(ann_path) as fh:
                    ann = json.load(fh)
                vertices = np.asarray(ann["vertices"], np.float32).reshape(-1, 3)
                mv = np.asarray(ann["model_view_matrix"], np.float64).reshape(4, 4)
                proj_gl = np.asarray(ann["projection_matrix"], np.float64).reshape(4, 4)
                x, y, w, h = (float(v) for v in item["bbox"])
            except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
                self._skip(key, f"{ann_path}: bad annotation ({exc!r})")
                continue
            _, height = image_size(image)
            projection = opengl_projection(mv, proj_gl, height)
            attrs = {ATTRIBUTE_NAMES.get(k, k): str(v).lower() for k, v in (item.get("attributes") or {}).items()}
            lm3d = self._landmarks(vertices)
            yield EvalSample(
                key=key,
                image=image,
                box=np.array([x, y, x + w, y + h], np.float32),
                landmarks_3d=lm3d,
                landmarks_2d=None if lm3d is None else _project(projection, lm3d),
                vertices=vertices,
                projection=projection,
                rotation=orthonormalize(FRONTAL @ mv[:3, :3]),
                attributes=attrs,
                extras={"model_view_matrix": mv, "projection_matrix": proj_gl, "image_height": height},
            )


def _project(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    h = x @ p[:, :3].T + p[:, 3]
    return (h[:, :2] / h[:, 2:]).astype(np.float32)
