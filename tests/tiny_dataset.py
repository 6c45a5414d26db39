"""Tiny training datasets in the DESIGN.md on-disk format, for the model/training/bundle tests.

Images are real photographs (skimage's astronaut): the astronaut's face, scaled and placed where the
ICT neutral landmark template projects through a random camera, over a random crop of the photo as
background. Labels are that projection (MV: with 3D template, R, t, K; MF: noisy 2D with confidence),
so position and scale are learnable from pixels. Shards are written with training.dataset.ShardWriter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.data import astronaut

from engine.assets import shared_asset
from engine.geometry import project, rotation_from_euler, visibility_mask
from training.dataset import FORMAT_VERSION, ShardWriter

IMAGE_SIZE = 96
FACE_ROI = (165, 70, 265, 190)  # astronaut face (x0, y0, x1, y1), measured by eye on the 512 px image


def landmark_template() -> np.ndarray:
    """(68, 3) ICT neutral-mesh landmarks, head frame, cm."""
    model = np.load(shared_asset("ict_facekit", "ict_face_model.npz"))
    return model["neutral"][model["landmarks68"]].astype(np.float64)


def normals_template() -> np.ndarray:
    from training.masks import normals_template as nt

    return np.asarray(nt(), dtype=np.float32)


def _camera(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    R = rotation_from_euler(rng.uniform(-40, 40), rng.uniform(-20, 20), rng.uniform(-15, 15))
    z = rng.uniform(50, 70)
    f = size / 3 * 60 / 14.7  # face about a third of the image at 60 cm
    t = np.array([rng.uniform(-4, 4), rng.uniform(-4, 4), z]) - R @ np.array([0.0, -0.26, 9.44])
    K = np.array([[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1.0]])
    return K, R, t


def _render(rng: np.random.Generator, lm2d: np.ndarray, size: int) -> np.ndarray:
    photo = astronaut()
    y, x = rng.integers(0, 512 - 200, 2)
    bg = np.array(Image.fromarray(photo[y : y + 200, x : x + 200]).resize((size, size), Image.BILINEAR))
    face = photo[FACE_ROI[1] : FACE_ROI[3], FACE_ROI[0] : FACE_ROI[2]]
    lo, hi = lm2d.min(0), lm2d.max(0)
    w, h = max(int(hi[0] - lo[0]), 4), max(int(hi[1] - lo[1]), 4)
    patch = np.array(Image.fromarray(face).resize((w, h), Image.BILINEAR))
    x0, y0 = int(lo[0]), int(lo[1])
    ys, xs = slice(max(y0, 0), min(y0 + h, size)), slice(max(x0, 0), min(x0 + w, size))
    bg[ys, xs] = patch[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return bg


def write_tiny_dataset(root: Path, n_mv_ids: int = 6, views: int = 4, n_mf: int = 8, seed: int = 0) -> Path:
    """Write MV identities ``0..n_mv_ids-1`` (``views`` renders each) and ``n_mf`` MF frames."""
    rng = np.random.default_rng(seed)
    template = landmark_template()
    normals = normals_template()
    samples = []
    for ident in range(n_mv_ids):
        shape = template * rng.uniform(0.9, 1.1, 3)  # a per-identity stretch of the template
        for _ in range(views):
            K, R, t = _camera(rng, IMAGE_SIZE)
            lm2d = project(shape @ R.T + t, K)
            samples.append(dict(
                kind=np.int8(0), identity=np.int64(ident), landmarks_2d=lm2d.astype(np.float32),
                visible=visibility_mask(R.astype(np.float32), normals), confidence=np.ones(68, np.float32),
                landmarks_3d=shape.astype(np.float32), landmarks_3d_true=shape.astype(np.float32),
                R=R.astype(np.float32), t=t.astype(np.float32), K=K.astype(np.float32),
            ))
    for clip in range(n_mf):
        K, R, t = _camera(rng, IMAGE_SIZE)
        lm2d = project(template @ R.T + t, K) + rng.normal(0, 0.5, (68, 2))
        samples.append(dict(
            kind=np.int8(1), identity=np.int64(100 + clip), landmarks_2d=lm2d.astype(np.float32),
            visible=np.ones(68, bool), confidence=rng.uniform(0.5, 1.0, 68).astype(np.float32),
        ))
    manifest_shards = []
    for shard_index, kind in enumerate((0, 1)):  # one shard per kind, as ShardReader(kind=...) expects
        writer = ShardWriter(root / "shards", shard_index)
        for arrays in (a for a in samples if int(a["kind"]) == kind):
            lm = arrays["landmarks_2d"]
            lo, hi = lm.min(0), lm.max(0)
            # detector-like box: the landmark box extended up to the hairline
            arrays["box"] = np.array([lo[0], lo[1] - 0.25 * (hi[1] - lo[1]), hi[0], hi[1]], np.float32)
            writer.write(_render(rng, lm, IMAGE_SIZE), arrays)
        manifest_shards.append(writer.commit({"kind": kind}))
    manifest = {"format_version": FORMAT_VERSION, "generator": "tests.tiny_dataset", "seed": seed,
                "complete": True, "shards": manifest_shards}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root
