"""Calibration and held-out face crops, balanced over head yaw.

Two sources, both cropped with ``engine.crop`` exactly as the engine crops:
- real faces: frames of the shared talking-face videos (``/work/shared/assets/videos``), decoded with
  PyAV, the best CenterFace box per frame, ``roi_from_box``. Yaw is estimated from the detector's five
  keypoints (:func:`keypoint_yaw`); there is no ground truth, so ``landmarks`` are NaN;
- synthetic faces: ``training.generators`` renders from random orbit cameras, ``roi_from_landmarks``
  (the engine's tracking crop); yaw is the camera's, ground-truth 2D landmarks are known.

Held-out crops never share a video or a generator identity with the calibration crops (videos are
split by file, renders by seed range), so validation figures are not measured on calibration data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from engine.crop import crop_matrix, roi_from_box, roi_from_landmarks, transform_points, warp_crop

log = logging.getLogger(__name__)

RENDER_SEED_CALIB = 10_000  # generator identity seeds: calibration from here ...
RENDER_SEED_HELDOUT = 20_000  # ... held-out from here (disjoint identities)


class CropSetConfig(BaseModel):
    """How many crops of each kind; stored with the calibration outputs."""

    model_config = ConfigDict(extra="forbid")

    videos: list[str] | None = None  # default: every .mp4 under shared assets/videos
    frames_per_video: int = Field(16, ge=1)  # frames sampled evenly from each video
    heldout_video_every: int = Field(3, ge=2)  # sorted video i is held out when i % this == 0
    renders: int = Field(48, ge=0)  # synthetic crops per split (0: none)
    render_size: int = Field(256, ge=64)  # render image side; the face covers about a third
    azimuth: tuple[float, float] = (-70.0, 70.0)
    elevation: tuple[float, float] = (-25.0, 25.0)
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
    source: list[str] = field(default_factory=list)  # "video:<file>#<frame>" or "render:<seed>:<az>,<el>"

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
        return np.array([s.startswith("video:") for s in self.source], dtype=bool)

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
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total = stream.frames or 0
        step = max(1, total // count) if total else 1
        out = []
        for i, frame in enumerate(container.decode(stream)):
            if i % step == 0:
                out.append((i, frame.to_ndarray(format="rgb24")))
                if len(out) >= count:
                    break
    return out


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
            sources.append(f"video:{Path(path).name}#{index}")
    if missed:
        log.info("video crops: %d frame(s) without a detected face skipped", missed)
    if not crops:
        return CropSet.empty(size)
    n = len(crops)
    return CropSet(np.stack(crops), np.asarray(yaws), np.asarray(norms), np.full((n, 68, 2), np.nan), sources)


# --- synthetic renders -----------------------------------------------------------------------------
def render_face_crops(count: int, size: int, first_seed: int, cfg: CropSetConfig) -> CropSet:
    """``count`` generator renders (one per identity) from random orbit cameras; empty, with a logged
    note, when the generator cannot run here (no training extras, no EGL)."""
    if count <= 0:
        return CropSet.empty(size)
    try:
        from engine.geometry import euler_from_rotation
        from training.cameras import rig_camera
        from training.generators import create

        generator = create("ict_head")
    except Exception as e:
        log.warning("synthetic crops skipped: training.generators unavailable (%s: %s)", type(e).__name__, e)
        return CropSet.empty(size)
    rng = np.random.default_rng([cfg.seed, first_seed])
    crops, yaws, norms, lms, sources = [], [], [], [], []
    for seed in range(first_seed, first_seed + count):
        az, el = rng.uniform(*cfg.azimuth), rng.uniform(*cfg.elevation)
        camera = rig_camera(az, el, size=cfg.render_size)
        render = generator.render(generator.identity(seed), camera)
        M = crop_matrix(roi_from_landmarks(render.landmarks_2d), size)
        lm = transform_points(M, render.landmarks_2d)
        lo, hi = lm.min(0), lm.max(0)
        crops.append(warp_crop(render.image, M, size))
        yaws.append(float(euler_from_rotation(camera.R)[0]))
        norms.append(float(np.sqrt(np.prod(hi - lo))))
        lms.append(lm)
        sources.append(f"render:{seed}:{az:.1f},{el:.1f}")
    return CropSet(np.stack(crops), np.asarray(yaws), np.asarray(norms), np.asarray(lms), sources)


def build_crop_sets(cfg: CropSetConfig, size: int, detector=None) -> tuple[CropSet, CropSet]:
    """(calibration, held-out) crop sets; calibration is balanced over yaw to ``num_calibration``."""
    videos = [Path(v) for v in cfg.videos] if cfg.videos is not None else default_videos()
    calib_videos, heldout_videos = split_videos(videos, cfg.heldout_video_every)
    calib = video_face_crops(calib_videos, size, cfg.frames_per_video, detector)
    heldout = video_face_crops(heldout_videos, size, cfg.frames_per_video, detector)
    calib = calib + render_face_crops(cfg.renders, size, RENDER_SEED_CALIB, cfg)
    heldout = heldout + render_face_crops(cfg.renders, size, RENDER_SEED_HELDOUT, cfg)
    if not len(calib):
        raise RuntimeError(
            f"no calibration crops: no face found in {[str(v) for v in calib_videos]} and no synthetic "
            "renders; check the videos (CropSetConfig.videos) or install the training extras"
        )
    calib = calib.subset(balanced_indices(calib.yaw, cfg.num_calibration, cfg.yaw_bin_deg, cfg.seed))
    log.info("calibration crops: %s; held-out: %s", calib.describe(), heldout.describe())
    return calib, heldout
