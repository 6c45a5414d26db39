"""``landmarks`` stage: 68 3D landmarks, head pose, confidence and occlusion for every face.

Per face: a square crop (engine.crop: from the detector box, or from the same track's previous
landmarks; OpenCV, into a reused buffer), ``Bundle.preprocess`` (fused, into a reused buffer), one
backend call per wave of frames (plugins/landmarks/backends; chunked by ``max_batch``), then back to
the full image, vectorised over the wave's faces (:func:`fill_faces`):

- ``landmarks_2d``: the model's 2.5D landmarks (crop pixels, K0 projection of its 3D output) mapped
  through the inverse crop affine: exact, no camera assumption.
- ``rotation``/``translation``/``landmarks_3d``: the model predicts the pose in the nominal crop
  camera K0. The full frame's camera is unknown, so the stage assumes pinhole intrinsics ``K``
  (focal ``focal_px``, default the image diagonal in pixels; principal point the image centre;
  stored in ``frame.meta["camera_matrix"]``). The crop is treated as a virtual camera turned towards
  the crop centre (:func:`pose_to_image`): depth scales by ``f_K / f_crop`` (f_crop = K0 focal in
  image pixels), the head origin stays on the ray through its image position, and the rotation is
  turned by the rotation between the optical axis and the ray through the crop centre. This is the
  usual perspective-crop approximation: projecting ``landmarks_3d`` with ``K`` lands within a few
  percent of the face size of ``landmarks_2d`` (tests/test_landmark_stage.py measures it), exact for
  a crop at the principal point whose focal matches.
- ``landmarks_canonical`` (head frame, cm), ``landmarks_3d = R @ L + t``, ``euler``
  (engine.geometry.euler_from_rotation), ``confidence`` (the model's), ``visibility``
  (engine.geometry.visibility_mask with the bundle's normals template).

Tracking (``tracking = true``, default): one :class:`IoUTracker` per stream gives ``track_id``s. On
frames the detector skipped (``centerface.detect_every``: ``meta["detected"] = False``) faces come from
the stream's live tracks, cropped from their last landmarks; a track whose mean confidence falls below
``lost_confidence`` ends and the stream asks the detector for a fresh detection
(:mod:`engine.redetect`); one whose confidence drops below ``redetect_drop`` x its running mean asks too
but keeps its track. Because frame k+1 may then crop from frame k's result, a batch is run in
waves (wave i = the i-th frame of every stream, so faces still batch across streams); without such a
dependency (``crop_from = "box"`` on detected frames) the whole batch is one wave. Smoothing
(``smoothing = true``): causal One-Euro per track (plugins/trackers/one_euro.py), off by default so
dataset jobs get raw per-frame estimates.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from engine import redetect
from engine.assets import default_bundle
from engine.bundle import Bundle, load_bundle
from engine.crop import box_factor, crop_matrix, crop_to_image, roi_from_box, roi_from_landmarks, transform_points, warp_crop
from engine.frame import Face, Frame
from engine.geometry import euler_from_rotation, visibility_mask, visibility_thresholds
from engine.plugin import PluginOptions, Stage, path_option
from plugins.landmarks.backends import create_backend
from plugins.trackers.iou_tracker import IoUTracker, Track, box_iou
from plugins.trackers.one_euro import LANDMARK_PARAMS, ROTATION_PARAMS, FaceSmoother, OneEuroParams, frame_timestamp

log = logging.getLogger(__name__)

# 5 CenterFace-style keypoints from 68 iBUG points (subject's right eye, left eye, nose tip, mouth corners)
_EYE_R, _EYE_L, _NOSE, _MOUTH_R, _MOUTH_L = slice(36, 42), slice(42, 48), 30, 48, 54
RECENT_TRACK_FRAMES = 2  # a track's landmarks older than this are not used to crop a detected face
MIN_ROI_PX, MIN_ROI_OF_BOX = 8.0, 0.5  # landmark rois smaller than this are degenerate (use the box)
_VISIBLE_THRESHOLDS = visibility_thresholds()
CONFIDENCE_MOMENTUM = 0.9  # running mean of a track's confidence over ~10 frames (redetect_drop)


class BundleMissingError(FileNotFoundError):
    """No model bundle where the stage looks; the message says how to get one."""


def missing_bundle_message(path: Path) -> str:
    return (
        f"landmark model bundle not found at {path} (no manifest.json). Get one: train with "
        "'python -m training.train --config training/configs/cpu_vit_tiny_128.toml' and export with "
        f"'python -m training.bundle <run>/checkpoints/last.pt {path}', or point the stage's 'bundle' "
        "option at an existing bundle directory"
    )


# ---------------------------------------------------------------- geometry


def image_intrinsics(width: int, height: int, focal_px: float | None = None) -> np.ndarray:
    """Assumed (3, 3) camera matrix of a frame: focal = ``focal_px`` or the image diagonal, centred."""
    f = float(focal_px) if focal_px else float(np.hypot(width, height))
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def _rotation_from_z(b: np.ndarray) -> np.ndarray:
    """Smallest rotations taking +z to the unit vectors ``b`` (..., 3), (..., 3, 3): Rodrigues with
    v = z x b = (-b1, b0, 0), written out (I + [v]x + [v]x^2 / (1 + c), c = b2)."""
    b0, b1, c = b[..., 0], b[..., 1], b[..., 2]
    parallel = b0 * b0 + b1 * b1 < 1e-24  # |v| < 1e-12: the identity (as for b = +z)
    k = 1.0 / np.where(parallel, 1.0, 1.0 + c)
    R = np.zeros(b.shape[:-1] + (3, 3))
    R[..., 0, 0] = 1.0 - b0 * b0 * k
    R[..., 0, 1] = R[..., 1, 0] = -b0 * b1 * k
    R[..., 1, 1] = 1.0 - b1 * b1 * k
    R[..., 0, 2], R[..., 1, 2] = b0, b1
    R[..., 2, 0], R[..., 2, 1] = -b0, -b1
    R[..., 2, 2] = 1.0 - (b0 * b0 + b1 * b1) * k
    return np.where(parallel[..., None, None], np.eye(3), R)


def pose_to_image(R_crop: np.ndarray, t_crop: np.ndarray, M: np.ndarray, K0: np.ndarray, K: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pose in the nominal crop camera K0 -> pose in the image camera K (see the module docstring).

    ``M``: image -> crop affine of this face. Returns (R, t) with ``X_cam = R @ X_head + t``. Vectorised:
    ``R_crop`` (..., 3, 3), ``t_crop`` (..., 3), ``M`` and ``K`` (..., 3, 3) (``K`` may be one (3, 3)).
    """
    return _pose_to_image(R_crop, t_crop, np.linalg.inv(M), K0, np.linalg.inv(K), K[..., 0, 0])


def _pose_to_image(R_crop: np.ndarray, t_crop: np.ndarray, Minv: np.ndarray, K0: np.ndarray, Kinv: np.ndarray,
                   focal: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pose_to_image` given the inverses (crop -> image ``Minv``, ``Kinv``) and K's focal."""
    A = Minv[..., :2, :2]
    px_per_crop_px = np.sqrt(np.abs(A[..., 0, 0] * A[..., 1, 1] - A[..., 0, 1] * A[..., 1, 0]))
    f_crop = K0[0, 0] * px_per_crop_px  # the crop camera's focal, in image pixels
    centre = Minv @ np.array([K0[0, 2], K0[1, 2], 1.0])  # crop principal point in the image
    ray = (Kinv @ centre[..., None])[..., 0]
    R_ray = _rotation_from_z(ray / np.linalg.norm(ray, axis=-1, keepdims=True))
    # virtual camera (focal K's, axis through the crop centre): lateral cm kept, depth rescaled
    t_virtual = t_crop.copy()
    t_virtual[..., 2] *= focal / f_crop
    origin = t_crop @ K0.T
    origin /= origin[..., 2:]  # the head origin in crop pixels (homogeneous)
    direction = (Kinv @ (Minv @ origin[..., None]))[..., 0]
    scale = np.linalg.norm(t_virtual, axis=-1, keepdims=True) / np.linalg.norm(direction, axis=-1, keepdims=True)
    return R_ray @ R_crop, scale * direction  # origin exactly on its ray


def crop_face(image: np.ndarray, M: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`engine.crop.warp_crop` of one face, at a cost proportional to the face, not the frame.

    The bilinear warp only reads the pixels it needs. When downscaling, warp_crop box-filters the whole
    image it gets; slicing the region first (its start aligned to the filter's block grid, so the
    blocks are the same) gives the identical crop. ``out``: optional (size, size, 3) uint8 to fill.
    """
    Minv = np.linalg.inv(M)
    block = box_factor(Minv)
    if block == 1:
        return warp_crop(image, M, size, out=out)
    corners = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    pts = transform_points(Minv, corners)
    margin = 2 * block + 2  # bilinear taps of the (downscaled) source
    H, W = image.shape[:2]
    x0 = max(int(np.floor(pts[:, 0].min())) - margin, 0) // block * block
    y0 = max(int(np.floor(pts[:, 1].min())) - margin, 0) // block * block
    x1 = min(-(-(int(np.ceil(pts[:, 0].max())) + margin) // block) * block, W)
    y1 = min(-(-(int(np.ceil(pts[:, 1].max())) + margin) // block) * block, H)
    if x1 <= x0 or y1 <= y0:  # the crop is entirely outside the image: warp_crop's fill
        if out is None:
            return np.zeros((size, size, image.shape[2]), np.uint8)
        out.fill(0)
        return out
    shifted = M @ np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
    return warp_crop(image[y0:y1, x0:x1], shifted, size, out=out)


def keypoints_from_landmarks(lm: np.ndarray) -> np.ndarray:
    """(68, 2) -> (5, 2) in CenterFace order (subject's right eye, left eye, nose, right/left mouth)."""
    return np.stack([lm[_EYE_R].mean(0), lm[_EYE_L].mean(0), lm[_NOSE], lm[_MOUTH_R], lm[_MOUTH_L]]).astype(np.float32)


def roi_from_track(track: Track) -> np.ndarray:
    """Crop roi from a track's last landmarks moved by its box velocity; its box when the landmarks
    are degenerate (collapsed to a point, e.g. an untrained model, or far smaller than the face)."""
    shift = (track.predicted_box[:2] + track.predicted_box[2:] - track.box[:2] - track.box[2:]) / 2
    roi = roi_from_landmarks(track.landmarks + shift)
    box_side = float(np.max(track.predicted_box[2:] - track.predicted_box[:2]))
    if roi[2] - roi[0] < max(MIN_ROI_PX, MIN_ROI_OF_BOX * box_side):
        return roi_from_box(track.predicted_box)
    return roi


# ---------------------------------------------------------------- per-stream state


@dataclass
class _StreamState:
    tracker: IoUTracker
    smoother: FaceSmoother | None
    scores: dict[int, float] = field(default_factory=dict)  # track id -> last face score
    confidence: dict[int, float] = field(default_factory=dict)  # track id -> running mean landmark confidence
    last_index: int | None = None  # the stream's last finished frame


@dataclass
class _Job:
    face: Face
    M: np.ndarray
    track_id: int | None = None  # set for faces made from tracks (undetected frames)


class LandmarkStage(Stage):
    """3D landmarks, head pose, confidence and occlusion per face (landmark transformer bundle)."""

    name = "landmarks"

    class Options(PluginOptions):
        bundle: str | None = path_option(None, description="Model bundle directory; default: the engine's bundled model.")
        backend: Literal["auto", "onnxruntime", "torch", "tensorrt"] = Field(
            "auto", description="auto: tensorrt engine if built and importable, else torch on CUDA, else onnxruntime CPU.")
        device: Literal["cpu", "cuda"] | None = Field(None, description="cpu or cuda; none = the backend's best.")
        precision: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="CUDA autocast precision (torch).")
        engine_dir: str | None = path_option(None, description="TensorRT engine folder; default <bundle>/engine (training.build_engine).")
        max_batch: int = Field(32, ge=1, le=4096, description="Most faces per backend call (across frames and streams).")
        max_wait_ms: float = Field(10.0, ge=0, description="Longest wait for frames/faces to fill a batch.")
        frame_batch: int = Field(8, ge=1, description="Frames the runtime hands the stage per call (across streams).")
        crop_from: Literal["box", "landmarks", "auto"] = Field(
            "auto", description="Crop from the detector box, or from the track's previous landmarks (auto: when tracking).")
        focal_px: float | None = Field(None, gt=0, description="Frame camera focal in pixels; none = image diagonal.")
        intra_op_threads: int | None = Field(None, ge=1, description="CPU threads of the backend; none = its default.")
        cuda_graphs: bool = Field(True, description="torch on CUDA: one CUDA graph per batch bucket.")
        gpu_crop: bool = Field(True, description="torch on CUDA: crop and normalise on the GPU.")
        tracking: bool = Field(True, description="Per-stream IoU tracker: track ids, landmark crops, skipped-frame tracking.")
        iou_threshold: float = Field(0.3, ge=0, le=1, description="Tracker: minimum IoU to continue a track.")
        max_age: int = Field(30, ge=0, description="Tracker: frames a track survives unmatched.")
        lost_confidence: float = Field(0.2, ge=0, le=1, description="Mean confidence below which a tracked face is lost.")
        redetect_drop: float = Field(
            0.8, ge=0, le=1, description="A tracked face whose mean confidence falls below this fraction of its "
            "running average asks the detector for a detection (keeping its track); 0 = only when lost.")
        smoothing: bool = Field(False, description="One-Euro smoothing per track (causal); off for dataset jobs.")
        smooth_min_cutoff: float = Field(LANDMARK_PARAMS.min_cutoff, gt=0, description="One-Euro min cutoff (Hz): lower = smoother when still.")
        smooth_beta: float = Field(LANDMARK_PARAMS.beta, ge=0, description="One-Euro beta (landmarks, translation): higher = less lag.")
        smooth_beta_rotation: float = Field(ROTATION_PARAMS.beta, ge=0, description="One-Euro beta of the rotation.")

    options: Options

    def __init__(self, options: Options):
        super().__init__(options)
        self.batch_size = options.frame_batch
        self.max_wait_ms = options.max_wait_ms
        self.bundle: Bundle | None = None
        self.backend = None
        self.streams: dict[str, _StreamState] = {}
        self._device_crop = False
        self._buffers: dict[str, np.ndarray] = {}  # reused crop / model-input arrays, grown on demand
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # faces per backend call (recent), for tests

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        o = self.options
        path = Path(o.bundle) if o.bundle else default_bundle()
        if not (path / "manifest.json").is_file():
            raise BundleMissingError(missing_bundle_message(path))
        self.bundle = load_bundle(path)
        self.backend = create_backend(self.bundle, o.backend, o.device, o.precision, o.max_batch,
                                      o.intra_op_threads, o.engine_dir, o.cuda_graphs)
        self._device_crop = bool(o.gpu_crop and self.backend.device == "cuda" and hasattr(self.backend, "infer_crops"))
        # the bundle's properties build arrays on each access: keep them
        spec = self.bundle.manifest.input
        std = np.asarray(spec.std, np.float32)
        self._scale = (np.float32(spec.scale) / std).reshape(1, 3, 1, 1)  # x * scale - mean, / std in one step
        self._shift = (-np.asarray(spec.mean, np.float32) / std).reshape(1, 3, 1, 1)
        self._K0, self._normals = self.bundle.K0, self.bundle.normals
        log.info("landmarks: bundle %s on %s/%s (%s), max_batch %d", path, self.backend.name, self.backend.device,
                 self.backend.precision, o.max_batch)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        self._buffers.clear()

    def _buffer(self, name: str, n: int, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """First ``n`` rows of a reused (capacity, *shape) array (no allocation per frame)."""
        buf = self._buffers.get(name)
        if buf is None or len(buf) < n:
            buf = self._buffers[name] = np.empty((max(n, 1), *shape), dtype)
        return buf[:n]

    # ------------------------------------------------------------ processing

    def state(self, stream_id: str) -> _StreamState:
        st = self.streams.get(stream_id)
        if st is None:
            o = self.options
            smoother = None
            if o.smoothing:
                lm = OneEuroParams(o.smooth_min_cutoff, o.smooth_beta)
                smoother = FaceSmoother(lm, OneEuroParams(o.smooth_min_cutoff, o.smooth_beta_rotation), lm)
            st = self.streams[stream_id] = _StreamState(IoUTracker(o.iou_threshold, o.max_age), smoother)
        return st

    def end_of_stream(self, stream_id: str) -> None:
        # also for streams that stopped or were removed without an end_of_stream frame
        self.streams.pop(stream_id, None)
        redetect.forget(stream_id)  # a request this stage made for its last frames

    def _dependent(self, frames: list[Frame]) -> bool:
        """Does a frame's crop depend on the previous frame's result (so frames must go in waves)?"""
        o = self.options
        return o.tracking and (o.crop_from != "box" or any(not f.meta.get("detected", True) for f in frames))

    def process(self, frames: list[Frame]) -> list[Frame]:
        if self.backend is None:
            self.start()
        if self._dependent(frames):
            waves: dict[int, list[Frame]] = defaultdict(list)
            seen: dict[str, int] = defaultdict(int)
            for frame in frames:
                waves[seen[frame.stream_id]].append(frame)
                seen[frame.stream_id] += 1
            groups = [waves[i] for i in sorted(waves)]
        else:
            groups = [frames]
        for wave in groups:
            jobs = [self._plan(frame) for frame in wave]
            self._infer(wave, jobs)
            for frame, frame_jobs in zip(wave, jobs):
                self._finish(frame, frame_jobs)
        return frames

    def _plan(self, frame: Frame) -> list[_Job]:
        """This frame's jobs: one per face, with the image -> crop affine of its crop."""
        o = self.options
        size = self.bundle.input_size
        st = self.state(frame.stream_id) if o.tracking else None
        jobs: list[_Job] = []
        if frame.meta.get("detected", True):
            if not frame.faces:
                return jobs
            boxes = np.stack([face.box for face in frame.faces]).astype(np.float64)
            rois = roi_from_box(boxes)
            if st is not None and o.crop_from != "box":
                # a detected face crops from the landmarks of the recent track it overlaps most
                tracks = [t for t in st.tracker.predict(frame.index)
                          if t.landmarks is not None and t.age <= RECENT_TRACK_FRAMES]
                if tracks:
                    iou = box_iou(np.stack([t.predicted_box for t in tracks]), boxes)
                    best = np.argmax(iou, axis=0)
                    for j in np.flatnonzero(iou[best, np.arange(len(boxes))] >= o.iou_threshold):
                        rois[j] = roi_from_track(tracks[best[j]])
            return [_Job(face, crop_matrix(roi, size)) for face, roi in zip(frame.faces, rois)]
        if st is not None:
            gap = frame.index - st.last_index if st.last_index is not None else 1
            for t in st.tracker.predict(frame.index):
                # only faces seen on the stream's previous frame: a track the last detection did not
                # confirm stays in the tracker (to keep its id) but is not followed blindly
                if t.landmarks is None or t.age > gap:
                    continue
                shift = (t.predicted_box[:2] + t.predicted_box[2:] - t.box[:2] - t.box[2:]) / 2
                face = Face(box=t.predicted_box, score=st.scores.get(t.track_id, 0.0),
                            keypoints=keypoints_from_landmarks(t.landmarks + shift), track_id=t.track_id)
                jobs.append(_Job(face, crop_matrix(roi_from_track(t), size), track_id=t.track_id))
            if not jobs:
                redetect.request(frame.stream_id)
        return jobs

    def _infer(self, wave: list[Frame], jobs: list[list[_Job]]) -> None:
        """Crop every face of the wave, run the backend once (chunked by max_batch), fill the faces."""
        Ks = []
        for frame, frame_jobs in zip(wave, jobs):
            K = frame.meta["camera_matrix"] = image_intrinsics(*frame.size, self.options.focal_px)
            Ks += [K] * len(frame_jobs)
        flat = [(frame, job) for frame, frame_jobs in zip(wave, jobs) for job in frame_jobs]
        if not flat:
            return
        Ms = np.stack([job.M for _, job in flat])
        self.batch_sizes.append(len(flat))
        if self._device_crop:  # only the frames cross to the GPU; crops are made there
            images: list[np.ndarray] = []
            index: dict[int, int] = {}
            for frame, _ in flat:
                if index.setdefault(id(frame.image), len(images)) == len(images):
                    images.append(frame.image)
            out = self.backend.infer_crops(images, [(index[id(f.image)], M) for (f, _), M in zip(flat, Ms)])
        else:
            S, n = self.bundle.input_size, len(flat)
            crops = self._buffer("crops", n, (S, S, 3), np.uint8)
            for k, (frame, job) in enumerate(flat):
                crop_face(frame.image, job.M, S, out=crops[k])
            # Bundle.preprocess, fused: (crop * scale - mean) / std = crop * (scale / std) - mean / std
            x = self._buffer("input", n, (3, S, S), np.float32)
            np.multiply(crops.transpose(0, 3, 1, 2), self._scale, out=x)
            x += self._shift
            out = self.backend.infer(x)
        fill_faces([job.face for _, job in flat], out, Ms, self._K0, np.stack(Ks), self._normals)

    def _finish(self, frame: Frame, jobs: list[_Job]) -> None:
        """Tracking and smoothing of one frame whose faces are filled."""
        o = self.options
        if o.tracking:
            st = self.state(frame.stream_id)
            if frame.meta.get("detected", True):
                faces = [j.face for j in jobs]
                ids = st.tracker.update(np.array([f.box for f in faces], np.float32).reshape(-1, 4),
                                        np.array([f.score for f in faces], np.float32), frame.index,
                                        np.stack([f.landmarks_2d for f in faces]) if faces else None)
                for face, tid in zip(faces, ids):
                    face.track_id = int(tid)
                    st.scores[int(tid)] = float(face.score)
                live = st.tracker.predict(frame.index)
            else:
                kept = []
                for job in jobs:
                    if float(np.mean(job.face.confidence)) < o.lost_confidence:
                        st.tracker.mark_lost(job.track_id)
                        redetect.request(frame.stream_id)
                    else:
                        st.tracker.refresh(job.track_id, frame.index, job.face.landmarks_2d)
                        kept.append(job.face)
                live = st.tracker.predict(frame.index)
                boxes = {t.track_id: t.box for t in live}
                for face in kept:
                    face.box = boxes.get(face.track_id, face.box)
                    face.keypoints = keypoints_from_landmarks(face.landmarks_2d)
                frame.faces = kept
                if not kept:
                    redetect.request(frame.stream_id)
            self._watch_confidence(st, frame)
            live_ids = {t.track_id for t in live}
            if st.smoother is not None:
                st.smoother.apply_all(frame.faces, frame_timestamp(frame))
                if frame.faces:
                    # keep landmarks_3d = R @ L + t: the canonical shape follows the smoothed 3D points
                    R = np.stack([f.rotation for f in frame.faces])
                    t = np.stack([f.translation for f in frame.faces])
                    canonical = ((np.stack([f.landmarks_3d for f in frame.faces]) - t[:, None]) @ R).astype(np.float32)
                    visibility = visibility_mask(R, self._normals, _VISIBLE_THRESHOLDS)
                    for i, face in enumerate(frame.faces):
                        face.landmarks_canonical, face.visibility = canonical[i], visibility[i]
                st.smoother.retain(live_ids)
            st.scores = {k: v for k, v in st.scores.items() if k in live_ids}
            st.confidence = {k: v for k, v in st.confidence.items() if k in live_ids}
            st.last_index = frame.index
            if frame.meta.get("end_of_stream"):
                self.streams.pop(frame.stream_id, None)  # long runs over many files keep no stale state
        frame.meta["landmarks_time"] = time.time()

    def _watch_confidence(self, st: _StreamState, frame: Frame) -> None:
        """Ask for a detection when a tracked face's confidence drops against its own running mean (a
        relative test: models differ in how confident they are on a good face)."""
        drop = self.options.redetect_drop
        for face in frame.faces:
            if face.track_id is None or face.confidence is None:
                continue
            c = float(np.mean(face.confidence))
            mean = st.confidence.get(face.track_id)
            if mean is not None and c < drop * mean and not frame.meta.get("detected", True):
                redetect.request(frame.stream_id)
            st.confidence[face.track_id] = c if mean is None else CONFIDENCE_MOMENTUM * mean + (1 - CONFIDENCE_MOMENTUM) * c


def fill_faces(faces: list[Face], out: dict[str, np.ndarray], M: np.ndarray, K0: np.ndarray, K: np.ndarray,
               normals: np.ndarray) -> list[Face]:
    """Write the model outputs (crop camera; row i for ``faces[i]``) into the faces, in image coordinates
    (camera ``K``), vectorised over the faces. ``M``, ``K``: (N, 3, 3) image -> crop affines and cameras."""
    Minv = np.linalg.inv(M)
    R, t = _pose_to_image(out["rotation"].astype(np.float64), out["translation"].astype(np.float64), Minv, K0,
                          np.linalg.inv(K), K[:, 0, 0])
    canonical = out["landmarks_3d"].astype(np.float64)
    lm2 = (out["landmarks_2d"] @ np.swapaxes(Minv[:, :2, :2], 1, 2) + Minv[:, None, :2, 2]).astype(np.float32)
    lm3 = (canonical @ np.swapaxes(R, 1, 2) + t[:, None]).astype(np.float32)
    canonical32, R32, t32 = out["landmarks_3d"].astype(np.float32), R.astype(np.float32), t.astype(np.float32)
    euler = euler_from_rotation(R).astype(np.float32)
    confidence = np.clip(out["confidence"], 0.0, 1.0).astype(np.float32)
    visibility = visibility_mask(R32, normals, _VISIBLE_THRESHOLDS)
    for i, face in enumerate(faces):
        face.landmarks_2d, face.landmarks_canonical, face.landmarks_3d = lm2[i], canonical32[i], lm3[i]
        face.rotation, face.translation, face.euler = R32[i], t32[i], euler[i]
        face.confidence, face.visibility = confidence[i], visibility[i]
    return faces


def fill_face(face: Face, out: dict[str, np.ndarray], M: np.ndarray, bundle: Bundle, K: np.ndarray) -> Face:
    """Write one face's model outputs (crop camera) into ``face`` in image coordinates (camera ``K``)."""
    rows = {name: np.asarray(value)[None] for name, value in out.items()}
    fill_faces([face], rows, np.asarray(M, np.float64)[None], bundle.K0, np.asarray(K, np.float64)[None], bundle.normals)
    return face
