"""Torch dataset over the on-disk training format (docs/DESIGN.md), crops and face augmentations.

Each sample is cropped with ``engine.crop`` from its stored detector box (jittered in training), and
its labels are moved into the crop camera:

- 2D targets (2.5D for MV, teacher 2D for MF): the crop affine applied to ``landmarks_2d`` (crop px).
- MV pose: an axis-aligned scale + shift of the image is a pinhole camera with intrinsics
  ``K_crop = M K``, same rotation ``R``. The model assumes fixed nominal intrinsics K0 (focal ``f0``,
  principal point at the crop centre), so the pose is re-expressed for K0: keep the head origin's
  crop position ``p`` and its apparent scale (distance x f0 / f_crop along the K0 ray through ``p``),
  and turn ``R`` by the rotation taking the true viewing ray of the head origin to that K0 ray, so the
  head keeps its orientation relative to the line of sight (what the pixels show).
  APPROXIMATION: that virtual camera rotation would need a homography, the crop is an affine; and
  the focal change alters perspective within the head. The 2.5D target stays the exact crop
  projection; the model's K0 projection differs from it by these second-order amounts (measured on
  the tiny test data: below 1% of the crop side).
- Horizontal mirror: image and 2D x -> S - 1 - x, 3D x -> -x (the ICT head frame is mirror-symmetric
  about x = 0), landmark indices remapped with ``FLIP_PERMUTATION``, ``R -> F R F``, ``t_x -> -t_x``
  (F = diag(-1, 1, 1)), which is exact for K0 because its principal point is the crop centre.

Sample order and augmentation are functions of ``(seed, global sample counter)`` only, so a resumed run
sees exactly the samples an uninterrupted one would, whatever the number of workers.
"""

from __future__ import annotations

import io
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset, Sampler

from engine.crop import crop_matrix, jitter_roi, roi_from_box, roi_from_landmarks, transform_points, warp_crop
from engine.geometry import rotation_between
from engine.landmarks68 import FLIP_PERMUTATION, NUM_LANDMARKS

log = logging.getLogger(__name__)

MV, MF = 0, 1
MIRROR = np.diag([-1.0, 1.0, 1.0])


class AugmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jitter_shift: float = 0.05  # crop centre, fraction of the side
    jitter_scale: float = 0.1  # crop side x U(1 - s, 1 + s)
    flip_prob: float = 0.5
    color: float = 0.3  # brightness / contrast / saturation x U(1 - c, 1 + c)
    blur_prob: float = 0.2
    blur_max_px: float = 1.5  # Gaussian radius in crop pixels
    occluder_prob: float = 0.3  # a random rectangle (colour or noise) over part of the face
    occluder_max: float = 0.4  # its largest side, fraction of the crop
    # Crops the engine makes while tracking (issue 12): with this probability the roi comes from the
    # label landmarks (engine.crop.roi_from_landmarks) disturbed as a previous frame's prediction is:
    # every landmark moved by N(0, landmark_noise) and all of them by N(0, landmark_shift), both as
    # fractions of the face size; then the usual jitter. Otherwise the detector-box roi.
    landmark_crop_prob: float = 0.0
    landmark_noise: float = 0.02
    landmark_shift: float = 0.03


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: list[str]  # dataset folders (manifest.json + shards/)
    val: list[str] = Field(default_factory=list)  # extra held-out folders (all samples are val)
    val_identity_mod: int = 10  # identities with id % mod == 0 are held out of train (0: none)
    max_identities: int | None = None  # MV ablation: keep the first N synthetic identities
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    num_workers: int = 0


@dataclass(frozen=True)
class SampleRef:
    shard: Path
    jpg: tuple[int, int]  # byte offset, size inside the tar
    npz: tuple[int, int]
    kind: int
    identity: int


def _read(path: Path, span: tuple[int, int]) -> bytes:
    with open(path, "rb") as f:
        f.seek(span[0])
        return f.read(span[1])


def index_dataset(root: str | Path) -> list[SampleRef]:
    """Random-access index of every complete sample in a dataset folder (tar member byte spans)."""
    root = Path(root)
    shards = sorted((root / "shards").glob("shard-*.tar"))
    if not shards:
        raise FileNotFoundError(f"{root}: no shards/shard-*.tar (is this a dataset folder from training/pseudolabel.py?)")
    refs: list[SampleRef] = []
    for shard in shards:
        members: dict[str, dict[str, tuple[int, int]]] = {}
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.rpartition(".")
                members.setdefault(key, {})[ext] = (m.offset_data, m.size)
        for key in sorted(members):
            parts = members[key]
            if "jpg" not in parts or "npz" not in parts:
                log.warning("%s: sample %s lacks its .jpg or .npz, skipped", shard, key)
                continue
            with np.load(io.BytesIO(_read(shard, parts["npz"]))) as z:
                kind, identity = int(z["kind"]), int(z["identity"])
            refs.append(SampleRef(shard, parts["jpg"], parts["npz"], kind, identity))
    return refs


def split_refs(refs: list[SampleRef], cfg: DataConfig, mode: str) -> tuple[list[SampleRef], list[SampleRef]]:
    """(train, val): identities ``% val_identity_mod == 0`` held out; the mode and max_identities filters."""
    mod = cfg.val_identity_mod
    val = [r for r in refs if mod and r.identity % mod == 0]
    train = [r for r in refs if not (mod and r.identity % mod == 0)]
    if mode == "mf_only":
        train = [r for r in train if r.kind == MF]
    elif mode == "mv_only":
        train = [r for r in train if r.kind == MV]
    if cfg.max_identities is not None:
        keep = set(sorted({r.identity for r in train if r.kind == MV})[: cfg.max_identities])
        train = [r for r in train if r.kind == MF or r.identity in keep]
    return train, val


def mirror_sample(s: dict, size: int) -> dict:
    """Horizontal mirror of a crop sample (image HxWx3 uint8 and its labels in the crop camera)."""
    perm = FLIP_PERMUTATION
    out = dict(s)
    out["image"] = np.ascontiguousarray(s["image"][:, ::-1])
    lm = s["landmarks_2d"][perm].copy()
    lm[:, 0] = size - 1 - lm[:, 0]
    out["landmarks_2d"] = lm
    for key in ("weight_2d", "visible"):
        out[key] = s[key][perm]
    l3 = s["landmarks_3d"][perm].copy()
    l3[:, 0] = -l3[:, 0]
    out["landmarks_3d"] = l3
    out["rotation"] = MIRROR @ s["rotation"] @ MIRROR
    out["translation"] = s["translation"] * np.array([-1.0, 1.0, 1.0])
    return out


def landmark_roi(landmarks: np.ndarray, rng: np.random.Generator, noise: float, shift: float) -> np.ndarray:
    """The roi the engine would crop from a previous prediction of ``landmarks`` (68, 2): the label
    disturbed per landmark and as a whole (fractions of the face size), then ``roi_from_landmarks``."""
    lm = np.asarray(landmarks, dtype=np.float64)
    size = float(np.sqrt(np.prod(np.maximum(lm.max(0) - lm.min(0), 1e-6))))
    moved = lm + rng.normal(0, noise * size, lm.shape) + rng.normal(0, shift * size, 2)
    return roi_from_landmarks(moved)


def crop_camera_pose(K: np.ndarray, R: np.ndarray, t: np.ndarray, M: np.ndarray, K0: np.ndarray):
    """(R', t') of a render camera (K, R, t) seen through crop affine M, re-expressed for K0 (module doc)."""
    Kc = M @ K
    p = Kc @ t
    p = p / p[2]
    f_crop = np.sqrt(Kc[0, 0] * Kc[1, 1])
    ray_true = t / np.linalg.norm(t)
    ray_k0 = np.linalg.inv(K0) @ p
    ray_k0 /= np.linalg.norm(ray_k0)
    R_view = rotation_between(ray_true, ray_k0)
    return R_view @ R, ray_k0 * np.linalg.norm(t) * K0[0, 0] / f_crop


def _augment_pixels(img: np.ndarray, rng: np.random.Generator, a: AugmentConfig) -> np.ndarray:
    pil = Image.fromarray(img)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        pil = enhance(pil).enhance(rng.uniform(1 - a.color, 1 + a.color))
    if rng.random() < a.blur_prob:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, a.blur_max_px)))
    out = np.array(pil)
    if rng.random() < a.occluder_prob:  # hands, microphones, hair: random rectangles
        S = out.shape[0]
        h, w = (rng.uniform(0.1, a.occluder_max, 2) * S).astype(int) + 1
        y, x = rng.integers(0, S - h + 1), rng.integers(0, S - w + 1)
        if rng.random() < 0.5:
            out[y : y + h, x : x + w] = rng.integers(0, 256, 3, dtype=np.uint8)
        else:
            out[y : y + h, x : x + w] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return out


class FaceCrops(Dataset):
    """Map-style dataset; ``__getitem__`` takes an index or ``(counter, index)`` from ``ResumableSampler``
    (the counter seeds that sample's augmentation)."""

    def __init__(
        self,
        refs: list[SampleRef],
        crop_size: int,
        K0: np.ndarray,
        mean,
        std,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        landmark_crops: bool = False,
    ):
        if not refs:
            raise ValueError("FaceCrops: no samples (check the dataset paths and the mode/identity filters)")
        self.refs = refs
        self.size = crop_size
        self.K0 = np.asarray(K0, dtype=np.float64)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        self.augment = augment
        self.seed = seed
        self.landmark_crops = landmark_crops  # no augmentation: crop from the label landmarks (2nd pass)

    def __len__(self) -> int:
        return len(self.refs)

    def load(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        ref = self.refs[i]
        image = np.array(Image.open(io.BytesIO(_read(ref.shard, ref.jpg))).convert("RGB"))
        with np.load(io.BytesIO(_read(ref.shard, ref.npz))) as z:
            arrays = {k: z[k] for k in z.files}
        return image, arrays

    def crop_sample(self, image: np.ndarray, a: dict, rng: np.random.Generator | None) -> dict:
        """Crop + labels in the crop camera (no pixel augmentation, no mirror)."""
        S = self.size
        roi = roi_from_box(a["box"])
        if rng is not None and self.augment is not None:
            aug = self.augment
            if aug.landmark_crop_prob > 0 and rng.random() < aug.landmark_crop_prob:
                roi = landmark_roi(a["landmarks_2d"], rng, aug.landmark_noise, aug.landmark_shift)
            roi = jitter_roi(roi, rng, aug.jitter_shift, aug.jitter_scale)
        elif self.landmark_crops:
            roi = roi_from_landmarks(a["landmarks_2d"])
        M = crop_matrix(roi, S)
        kind = int(a["kind"])
        s = {
            "image": warp_crop(image, M, S),
            "kind": kind,
            "identity": int(a["identity"]),
            "landmarks_2d": transform_points(M, a["landmarks_2d"]),
            "visible": a["visible"].astype(bool),
            "weight_2d": a["confidence"].astype(np.float64) * a["visible"],
            "landmarks_3d": np.zeros((NUM_LANDMARKS, 3)),
            "rotation": np.eye(3),
            "translation": np.zeros(3),
        }
        if kind == MV:
            s["landmarks_3d"] = a["landmarks_3d"].astype(np.float64)
            s["rotation"], s["translation"] = crop_camera_pose(
                a["K"].astype(np.float64), a["R"].astype(np.float64), a["t"].astype(np.float64), M, self.K0
            )
            s["weight_2d"] = np.ones(NUM_LANDMARKS)
        return s

    def __getitem__(self, item) -> dict[str, torch.Tensor]:
        counter, i = item if isinstance(item, tuple) else (None, item)
        image, arrays = self.load(i)
        rng = None
        if self.augment is not None and counter is not None:
            rng = np.random.default_rng([self.seed, counter])
        s = self.crop_sample(image, arrays, rng)
        if rng is not None:
            if rng.random() < self.augment.flip_prob:
                s = mirror_sample(s, self.size)
            s["image"] = _augment_pixels(s["image"], rng, self.augment)
        lm = s["landmarks_2d"]
        wh = lm.max(0) - lm.min(0)
        img = (s["image"].transpose(2, 0, 1).astype(np.float32) / 255.0 - self.mean) / self.std
        return {
            "image": torch.from_numpy(img),
            "kind": torch.tensor(s["kind"]),
            "identity": torch.tensor(s["identity"]),
            "landmarks_2d": torch.tensor(lm, dtype=torch.float32),
            "weight_2d": torch.tensor(s["weight_2d"], dtype=torch.float32),
            "visible": torch.tensor(s["visible"]),
            "landmarks_3d": torch.tensor(s["landmarks_3d"], dtype=torch.float32),
            "rotation": torch.tensor(s["rotation"], dtype=torch.float32),
            "translation": torch.tensor(s["translation"], dtype=torch.float32),
            "norm": torch.tensor(float(np.sqrt(max(wh[0] * wh[1], 1e-6))), dtype=torch.float32),
        }


class ResumableSampler(Sampler):
    """Endless ``(counter, index)`` stream: epoch ``e`` is a permutation seeded by ``(seed, e)``; the
    stream starts at global sample ``start`` so a resumed run continues where it stopped."""

    def __init__(self, n: int, seed: int, start: int = 0):
        self.n, self.seed, self.start = n, seed, start

    def __iter__(self):
        counter = self.start
        while True:
            epoch, pos = divmod(counter, self.n)
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            for p in range(pos, self.n):
                yield counter, int(perm[p])
                counter += 1
