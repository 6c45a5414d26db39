"""Calibration and held-out face crops, balanced over head yaw.

Two sources, both cropped with ``engine.crop`` exactly as the engine crops:
- real faces: frames of the shared talking-face videos (``/work/shared/assets/videos``) or of any
  videos and photos listed in ``CropSetConfig.videos`` (engine/video.py reads both; a photo is a
  one-frame clip), the best CenterFace box per frame, ``roi_from_box``. Yaw is estimated from the detector's five
  keypoints (:func:`keypoint_yaw`); there is no ground truth, so ``landmarks`` are NaN;
- synthetic faces, only when a pseudo-label dataset folder is given (``CropSetConfig.dataset``, CLI
  ``--dataset DIR``): the MV samples (generator renders) of a folder ``python -m training.pseudolabel``
  wrote, read with engine/dataset_format.py (calibration does not import training),
  ``roi_from_landmarks`` on the generator's exact landmarks projected by the sample's camera (the
  engine's tracking crop); yaw is the camera's, ground-truth 2D landmarks are known. Without a folder
  the crops are real faces only (one log line says how to add synthetic ones).

Held-out crops never share a video or a generator identity with the calibration crops (videos are
split by file, dataset samples by identity seed), so validation figures are not measured on
calibration data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from engine.crop import crop_matrix, roi_from_box, roi_from_landmarks, transform_points, warp_crop
from engine.video import is_image

log = logging.getLogger(__name__)

SYNTHETIC_HINT = ("synthetic crops: none, real faces only (videos, photos); to add generator renders with ground-truth "
                  "landmarks, give --dataset DIR (CropSetConfig.dataset), a folder written by "
                  "`python -m training.pseudolabel` (its MV samples are used)")


class CropSetConfig(BaseModel):
    """How many crops of each kind; stored with the calibration outputs."""

    model_config = ConfigDict(extra="forbid")

    videos: list[str] | None = None  # video or photo files; default: every .mp4 under shared assets/videos
    frames_per_video: int = Field(16, ge=1)  # frames sampled evenly from each video (a photo gives one)
    heldout_video_every: int = Field(3, ge=2)  # sorted video i is held out when i % this == 0
    dataset: list[Path] = Field(default_factory=list)  # pseudo-label dataset folders: synthetic crops (MV)
    renders: int = Field(48, ge=0)  # synthetic crops per split, taken from ``dataset`` (0: none)
    heldout_identity_mod: int = Field(3, ge=2)  # MV identity seed % this == 0 is held out
    num_calibration: int = Field(128, ge=1)  # crops kept for calibration (balanced over yaw)
    yaw_bin_deg: float = Field(15.0, gt=0)
    seed: int = 0


@dataclass
class CropSet:
    """Face crops in the model's input size with what selection and validation need."""

    crops: np.ndarray  # (N, S, S, 3) uint8 RGB
    yaw: np.ndarray  # (N,) degrees, engine.geometry convention (> 0: subject turns to their left)
    norm: np.ndarray  # (N,) NME normaliser in crop px: sqrt(w h) of the face (box or GT landmarks)
    landmarks: np.ndarray  # (N, 68, 2) ground truth in crop px; NaN where unknown (real video)
    source: list[str] = field(default_factory=list)  # "video:<file>#<frame>" or "mv:<dataset folder>#<key>"

    def __len__(self) -> int:
        return len(self.crops)

    @classmethod
    def empty(cls, size: int) -> CropSet:
        return cls(np.zeros((0, size, size, 3), np.uint8), np.zeros(0), np.zeros(0), np.zeros((0, 68, 2)), [])

    def subset(self, idx) -> CropSet:
        idx = np.asarray(idx, dtype=np.int64)
        return CropSet(self.crops[idx], self.yaw[idx], self.norm[idx], self.landmarks[idx],
                       [self.source[i] for i in idx])

    def __add__(self, other: CropSet) -> CropSet:
        return CropSet(
            np.concatenate([self.crops, other.crops]), np.concatenate([self.yaw, other.yaw]),
            np.concatenate([self.norm, other.norm]), np.concatenate([self.landmarks, other.landmarks]),
            self.source + other.source,
        )

    @property
    def is_real(self) -> np.ndarray:
        return np.array([not s.startswith("mv:") for s in self.source], dtype=bool)

    def describe(self) -> dict:
        """Counts per kind and per yaw bin (for the calibration report)."""
        hist, edges = np.histogram(self.yaw, bins=np.arange(-90, 91, 15))
        return {
            "count": len(self), "real": int(self.is_real.sum()), "synthetic": int((~self.is_real).sum()),
            "yaw_hist": {f"{int(a)}..{int(b)}": int(h) for a, b, h in zip(edges[:-1], edges[1:], hist)},
        }


# --- yaw from the detector's five keypoints --------------------------------------------------------
def _template_geometry() -> tuple[float, float]:
    """(half inter-ocular distance, nose-tip depth in front of the eye centres), cm, ICT neutral face."""
    from engine.assets import shared_asset

    model = np.load(shared_asset("ict_facekit", "ict_face_model.npz"))
    lm = model["neutral"][model["landmarks68"]]
    right, left, nose = lm[36:42].mean(0), lm[42:48].mean(0), lm[30]
    return float(abs(left[0] - right[0]) / 2), float(nose[2] - (left[2] + right[2]) / 2)


_GEOMETRY: tuple[float, float] | None = None


def keypoint_yaw(keypoints: np.ndarray) -> np.ndarray:
    """(..., 5, 2) CenterFace keypoints (right eye, left eye, nose, mouth corners) -> yaw, degrees.

    Under a yaw turn the nose tip (depth d in front of the eyes) moves sideways by ``d sin(yaw)``
    while the eyes (half-distance e) close to ``e cos(yaw)``: the nose offset from the eye midpoint
    over the half eye distance is ``(d / e) tan(yaw)``. Positive when the nose moves right in the
    image, which is a positive yaw in engine.geometry. Coarse (it ignores pitch) but it only bins.
    """
    global _GEOMETRY
    if _GEOMETRY is None:
        _GEOMETRY = _template_geometry()
    half_eye, depth = _GEOMETRY
    k = np.asarray(keypoints, dtype=np.float64)
    mid = (k[..., 0, :] + k[..., 1, :]) / 2
    half = np.linalg.norm(k[..., 1, :] - k[..., 0, :], axis=-1) / 2
    ratio = (k[..., 2, 0] - mid[..., 0]) / np.maximum(half, 1e-6)
    return np.degrees(np.arctan(ratio * half_eye / depth))


def balanced_indices(yaw: np.ndarray, n: int, bin_deg: float, seed: int = 0) -> np.ndarray:
    """Up to ``n`` indices taken round-robin over yaw bins (random order inside a bin), so rare
    profile views are not drowned by the frontal majority."""
    rng = np.random.default_rng(seed)
    bins = np.floor(np.asarray(yaw) / bin_deg).astype(np.int64)
    queues = [list(rng.permutation(np.flatnonzero(bins == b))) for b in np.unique(bins)]
    out: list[int] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(int(q.pop()))
    return np.sort(np.asarray(out, dtype=np.int64))


# --- real video crops ------------------------------------------------------------------------------
def default_videos() -> list[Path]:
    from engine.assets import shared_asset

    return sorted(shared_asset("videos").glob("*.mp4"))


def split_videos(videos: list[Path], every: int) -> tuple[list[Path], list[Path]]:
    """(calibration, held-out) by sorted file: index % every == 0 is held out."""
    videos = sorted(Path(v) for v in videos)
    return [v for i, v in enumerate(videos) if i % every], [v for i, v in enumerate(videos) if i % every == 0]


def _sample_frames(path: Path, count: int) -> list[tuple[int, np.ndarray]]:
    """``count`` evenly spaced upright frames of a video, or the photo (engine.video, the one decode core)."""
    from engine.video import count_frames, iter_frames

    step = max(1, count_frames(path) // count)
    return list(iter_frames(path, every=step, max_frames=count))


def video_face_crops(videos: list[Path], size: int, frames_per_video: int, detector=None) -> CropSet:
    """The best CenterFace face of ``frames_per_video`` evenly spaced frames of each video."""
    from plugins.detectors.centerface import CenterFace

    detector = detector or CenterFace()
    crops, yaws, norms, sources = [], [], [], []
    missed = 0
    for path in videos:
        try:
            frames = _sample_frames(Path(path), frames_per_video)
        except Exception as e:  # a broken file is skipped with its reason, the rest goes on
            log.warning("%s: cannot decode (%s), skipped", path, e)
            continue
        dets = detector.detect_batch([f for _, f in frames])
        for (index, image), det in zip(frames, dets):
            if not len(det):
                missed += 1
                continue
            box = det.boxes[0]
            M = crop_matrix(roi_from_box(box), size)
            crops.append(warp_crop(image, M, size))
            yaws.append(float(keypoint_yaw(det.keypoints[0])))
            w, h = (box[2] - box[0]) * M[0, 0], (box[3] - box[1]) * M[1, 1]
            norms.append(float(np.sqrt(w * h)))
            sources.append(f"{'photo' if is_image(path) else 'video'}:{Path(path).name}#{index}")
    if missed:
        log.info("video crops: %d frame(s) without a detected face skipped", missed)
    if not crops:
        return CropSet.empty(size)
    n = len(crops)
    return CropSet(np.stack(crops), np.asarray(yaws), np.asarray(norms), np.full((n, 68, 2), np.nan), sources)


# --- synthetic crops: MV samples of a pseudo-label dataset ----------------------------------------
_MV_KEYS = ("__key__", "image_span", "identity", "R", "t", "K", "landmarks_3d_true")


def _mv_index(datasets: list[Path], count: int, mod: int) -> list[dict]:
    """MV samples of the folders with the arrays the crops need, images left undecoded (``image_span``).

    Read in order until both splits (identity ``% mod``) have ``count`` identities: a large dataset
    (10,000s of samples) is not read to the end for a few dozen crops."""
    from engine.dataset_format import KIND_MV, ShardReader, iter_shard

    index: list[dict] = []
    identities: tuple[set[int], set[int]] = (set(), set())  # calibration, held-out
    for root in datasets:
        root = Path(root)
        before = len(index)
        for shard in ShardReader(root, kind=KIND_MV).shards:
            for sample in iter_shard(shard, images=False):
                if int(sample["kind"]) != KIND_MV or "image_span" not in sample:
                    continue
                index.append({k: sample[k] for k in _MV_KEYS} | {"shard": shard, "dataset": root})
                identity = int(sample["identity"])
                identities[identity % mod == 0].add(identity)
                if min(map(len, identities)) >= count:
                    return index
        if len(index) == before:
            log.warning("%s: no MV (synthetic) samples, nothing taken from it", root)
    return index


def _pick(samples: list[dict], count: int, rng: np.random.Generator) -> list[dict]:
    """Up to ``count`` samples, one per identity in random order, then a second per identity, ...:
    as many identities as possible (each identity's renders already vary the camera)."""
    by_identity: dict[int, list[dict]] = {}
    for s in samples:
        by_identity.setdefault(int(s["identity"]), []).append(s)
    queues = [[by_identity[i][j] for j in rng.permutation(len(by_identity[i]))]
              for i in rng.permutation(sorted(by_identity))]
    out: list[dict] = []
    while len(out) < count and any(queues):
        for q in queues:
            if q and len(out) < count:
                out.append(q.pop(0))
    return out


def dataset_face_crops(datasets: list[Path], size: int, cfg: CropSetConfig) -> tuple[CropSet, CropSet]:
    """(calibration, held-out) crops of up to ``cfg.renders`` MV samples each from pseudo-label dataset
    folders; identity seeds ``% cfg.heldout_identity_mod == 0`` are held out. The crop is the engine's
    tracking crop around the generator's exact landmarks (``landmarks_3d_true`` posed by the sample's
    camera ``R, t, K``), which are also the ground truth."""
    from engine.dataset_format import read_image
    from engine.geometry import euler_from_rotation, project

    index = _mv_index(datasets, cfg.renders, cfg.heldout_identity_mod)
    rng = np.random.default_rng([cfg.seed, 1])
    heldout_ids = [int(s["identity"]) % cfg.heldout_identity_mod == 0 for s in index]
    splits = []
    for held in (False, True):
        picked = _pick([s for s, h in zip(index, heldout_ids) if h == held], cfg.renders, rng)
        crops, yaws, norms, lms, sources = [], [], [], [], []
        for s in picked:
            R, t, K = (np.asarray(s[k], np.float64) for k in ("R", "t", "K"))
            gt = project(np.asarray(s["landmarks_3d_true"], np.float64) @ R.T + t, K)
            M = crop_matrix(roi_from_landmarks(gt), size)
            lm = transform_points(M, gt)
            lo, hi = lm.min(0), lm.max(0)
            crops.append(warp_crop(read_image(s["shard"], s["image_span"]), M, size))
            yaws.append(float(euler_from_rotation(R)[0]))
            norms.append(float(np.sqrt(np.prod(hi - lo))))
            lms.append(lm)
            sources.append(f"mv:{s['dataset'].name}#{s['__key__']}")
        if len(picked) < cfg.renders:
            log.info("synthetic %s crops: %d of %d asked (the dataset has no more MV samples of that split)",
                     "held-out" if held else "calibration", len(picked), cfg.renders)
        splits.append(CropSet(np.stack(crops), np.asarray(yaws), np.asarray(norms), np.asarray(lms), sources)
                      if crops else CropSet.empty(size))
    return splits[0], splits[1]


def build_crop_sets(cfg: CropSetConfig, size: int, detector=None) -> tuple[CropSet, CropSet]:
    """(calibration, held-out) crop sets; calibration is balanced over yaw to ``num_calibration``."""
    synthetic_calib = synthetic_heldout = CropSet.empty(size)
    if cfg.dataset and cfg.renders:  # first: a wrong folder fails before the videos are decoded
        synthetic_calib, synthetic_heldout = dataset_face_crops(cfg.dataset, size, cfg)
    elif cfg.renders:
        log.info(SYNTHETIC_HINT)
    videos = [Path(v) for v in cfg.videos] if cfg.videos is not None else default_videos()
    calib_videos, heldout_videos = split_videos(videos, cfg.heldout_video_every)
    calib = video_face_crops(calib_videos, size, cfg.frames_per_video, detector) + synthetic_calib
    heldout = video_face_crops(heldout_videos, size, cfg.frames_per_video, detector) + synthetic_heldout
    if not len(calib):
        raise RuntimeError(
            f"no calibration crops: no face found in {[str(v) for v in calib_videos]} and no synthetic "
            "crops; check the videos (CropSetConfig.videos) or give a pseudo-label dataset (--dataset DIR)"
        )
    calib = calib.subset(balanced_indices(calib.yaw, cfg.num_calibration, cfg.yaw_bin_deg, cfg.seed))
    log.info("calibration crops: %s; held-out: %s", calib.describe(), heldout.describe())
    return calib, heldout
