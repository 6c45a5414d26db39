"""``landmarks`` stage: 68 3D landmarks, head pose, confidence and occlusion for every face.

Per face: a square crop (engine.crop: from the detector box, or from the same track's previous
landmarks), ``Bundle.preprocess``, batched inference through :class:`engine.batcher.FaceBatcher` on
one backend (plugins/landmarks/backends), then back to the full image:

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
(:mod:`engine.redetect`). Because frame k+1 may then crop from frame k's result, a batch is run in
waves (wave i = the i-th frame of every stream, so faces still batch across streams); without such a
dependency (``crop_from = "box"`` on detected frames) the whole batch is one wave. Smoothing
(``smoothing = true``): causal One-Euro per track (plugins/trackers/one_euro.py), off by default so
dataset jobs get raw per-frame estimates.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from concurrent.futures import Future
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from engine import redetect
from engine.assets import default_bundle
from engine.batcher import FaceBatcher
from engine.bundle import Bundle, load_bundle
from engine.crop import crop_matrix, crop_to_image, roi_from_box, roi_from_landmarks, transform_points, warp_crop
from engine.frame import Face, Frame
from engine.geometry import euler_from_rotation, visibility_mask
from engine.plugin import PluginOptions, Stage, path_option
from plugins.landmarks.backends import create_backend
from plugins.trackers.iou_tracker import IoUTracker, Track, box_iou
from plugins.trackers.one_euro import LANDMARK_PARAMS, ROTATION_PARAMS, FaceSmoother, OneEuroParams, frame_timestamp

log = logging.getLogger(__name__)

# 5 CenterFace-style keypoints from 68 iBUG points (subject's right eye, left eye, nose tip, mouth corners)
_EYE_R, _EYE_L, _NOSE, _MOUTH_R, _MOUTH_L = slice(36, 42), slice(42, 48), 30, 48, 54
RECENT_TRACK_FRAMES = 2  # a track's landmarks older than this are not used to crop a detected face
MIN_ROI_PX, MIN_ROI_OF_BOX = 8.0, 0.5  # landmark rois smaller than this are degenerate (use the box)


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


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation taking unit vector ``a`` to unit vector ``b`` (Rodrigues)."""
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if np.linalg.norm(v) < 1e-12:
        return np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def pose_to_image(R_crop: np.ndarray, t_crop: np.ndarray, M: np.ndarray, K0: np.ndarray, K: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pose in the nominal crop camera K0 -> pose in the image camera K (see the module docstring).

    ``M``: image -> crop affine of this face. Returns (R, t) with ``X_cam = R @ X_head + t``.
    """
    Minv = np.linalg.inv(M)
    px_per_crop_px = float(np.sqrt(abs(np.linalg.det(Minv[:2, :2]))))
    f_crop = K0[0, 0] * px_per_crop_px  # the crop camera's focal, in image pixels
    Kinv = np.linalg.inv(K)
    centre = Minv @ np.array([K0[0, 2], K0[1, 2], 1.0])  # crop principal point in the image
    ray = Kinv @ centre
    R_ray = _rotation_between(np.array([0.0, 0.0, 1.0]), ray / np.linalg.norm(ray))
    # virtual camera (focal K's, axis through the crop centre): lateral cm kept, depth rescaled
    t_virtual = np.array([t_crop[0], t_crop[1], t_crop[2] * K[0, 0] / f_crop])
    origin_crop = K0 @ t_crop
    origin_img = Minv @ np.array([origin_crop[0] / origin_crop[2], origin_crop[1] / origin_crop[2], 1.0])
    direction = Kinv @ origin_img
    t = np.linalg.norm(t_virtual) * direction / np.linalg.norm(direction)  # origin exactly on its ray
    return R_ray @ R_crop, t


def crop_face(image: np.ndarray, M: np.ndarray, size: int) -> np.ndarray:
    """:func:`engine.crop.warp_crop` of one face, computed on the image region the crop reads.

    warp_crop box-filters the whole image it gets when downscaling; slicing the region first (its start
    aligned to the filter's block grid, so the blocks are the same) gives the identical crop at a
    cost proportional to the face, not the frame.
    """
    Minv = np.linalg.inv(M)
    step = float(np.sqrt(abs(np.linalg.det(Minv[:2, :2]))))
    block = int(step // 2) if int(step // 2) >= 2 else 1  # warp_crop's box-filter factor
    corners = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    pts = transform_points(Minv, corners)
    margin = 2 * block + 2  # bilinear taps of the (downscaled) source
    H, W = image.shape[:2]
    x0 = max(int(np.floor(pts[:, 0].min())) - margin, 0) // block * block
    y0 = max(int(np.floor(pts[:, 1].min())) - margin, 0) // block * block
    x1 = min(-(-(int(np.ceil(pts[:, 0].max())) + margin) // block) * block, W)
    y1 = min(-(-(int(np.ceil(pts[:, 1].max())) + margin) // block) * block, H)
    if x1 <= x0 or y1 <= y0:  # the crop is entirely outside the image
        return np.zeros((size, size, image.shape[2]), np.uint8)  # warp_crop's fill
    shifted = M @ np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
    return warp_crop(image[y0:y1, x0:x1], shifted, size)


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
    last_index: int | None = None  # the stream's last finished frame


@dataclass
class _Job:
    face: Face
    M: np.ndarray
    track_id: int | None = None  # set for faces made from tracks (undetected frames)
    future: Future | None = None


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
        self.batcher: FaceBatcher | None = None
        self.streams: dict[str, _StreamState] = {}
        self._device_crop = False

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
        run = self._run_device_crops if self._device_crop else self._run_crops
        self.batcher = FaceBatcher(run, o.max_batch, o.max_wait_ms, name="landmarks-batcher")
        log.info("landmarks: bundle %s on %s/%s (%s), max_batch %d", path, self.backend.name, self.backend.device,
                 self.backend.precision, o.max_batch)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def _run_crops(self, items: list[np.ndarray]) -> dict[str, np.ndarray]:
        return self.backend.infer(np.stack(items))

    def _run_device_crops(self, items: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
        images: list[np.ndarray] = []
        index: dict[int, int] = {}
        faces = []
        for image, M in items:
            k = index.setdefault(id(image), len(images))
            if k == len(images):
                images.append(image)
            faces.append((k, M))
        return self.backend.infer_crops(images, faces)

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

    def _dependent(self, frames: list[Frame]) -> bool:
        """Does a frame's crop depend on the previous frame's result (so frames must go in waves)?"""
        o = self.options
        return o.tracking and (o.crop_from != "box" or any(not f.meta.get("detected", True) for f in frames))

    def process(self, frames: list[Frame]) -> list[Frame]:
        if self.batcher is None:
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
            jobs = [self._submit(frame) for frame in wave]
            self.batcher.flush()
            for frame, frame_jobs in zip(wave, jobs):
                self._finish(frame, frame_jobs)
        return frames

    def _crop_roi(self, st: _StreamState, frame: Frame, face: Face) -> np.ndarray:
        o = self.options
        if o.tracking and o.crop_from != "box":
            tracks = [t for t in st.tracker.predict(frame.index)
                      if t.landmarks is not None and t.age <= RECENT_TRACK_FRAMES]
            if tracks:
                iou = box_iou(np.stack([t.predicted_box for t in tracks]), face.box[None])[:, 0]
                best = int(np.argmax(iou))
                if iou[best] >= o.iou_threshold:
                    return roi_from_track(tracks[best])
        return roi_from_box(face.box)

    def _submit(self, frame: Frame) -> list[_Job]:
        """Make this frame's jobs (one per face) and queue their crops in the batcher."""
        st = self.state(frame.stream_id) if self.options.tracking else None
        jobs: list[_Job] = []
        if frame.meta.get("detected", True):
            for face in frame.faces:
                roi = self._crop_roi(st, frame, face) if st else roi_from_box(face.box)
                jobs.append(_Job(face, crop_matrix(roi, self.bundle.input_size)))
        elif st is not None:
            gap = frame.index - st.last_index if st.last_index is not None else 1
            for t in st.tracker.predict(frame.index):
                # only faces seen on the stream's previous frame: a track the last detection did not
                # confirm stays in the tracker (to keep its id) but is not followed blindly
                if t.landmarks is None or t.age > gap:
                    continue
                shift = (t.predicted_box[:2] + t.predicted_box[2:] - t.box[:2] - t.box[2:]) / 2
                face = Face(box=t.predicted_box, score=st.scores.get(t.track_id, 0.0),
                            keypoints=keypoints_from_landmarks(t.landmarks + shift), track_id=t.track_id)
                roi = roi_from_track(t)
                jobs.append(_Job(face, crop_matrix(roi, self.bundle.input_size), track_id=t.track_id))
            if not jobs:
                redetect.request(frame.stream_id)
        size = self.bundle.input_size
        for job in jobs:
            if self._device_crop:
                job.future = self.batcher.submit((frame.image, job.M))
            else:
                crop = crop_face(frame.image, job.M, size)
                job.future = self.batcher.submit(self.bundle.preprocess(crop[None])[0])
        return jobs

    def _finish(self, frame: Frame, jobs: list[_Job]) -> None:
        K = image_intrinsics(*frame.size, self.options.focal_px)
        frame.meta["camera_matrix"] = K
        for job in jobs:
            fill_face(job.face, job.future.result(), job.M, self.bundle, K)
        detected = frame.meta.get("detected", True)
        if self.options.tracking:
            st = self.state(frame.stream_id)
            if detected:
                faces = [j.face for j in jobs]
                ids = st.tracker.update(np.array([f.box for f in faces], np.float32).reshape(-1, 4),
                                        np.array([f.score for f in faces], np.float32), frame.index,
                                        np.stack([f.landmarks_2d for f in faces]) if faces else None)
                for face, tid in zip(faces, ids):
                    face.track_id = int(tid)
                    st.scores[int(tid)] = float(face.score)
            else:
                kept = []
                for job in jobs:
                    if float(np.mean(job.face.confidence)) < self.options.lost_confidence:
                        st.tracker.mark_lost(job.track_id)
                        redetect.request(frame.stream_id)
                    else:
                        st.tracker.refresh(job.track_id, frame.index, job.face.landmarks_2d)
                        kept.append(job.face)
                boxes = {t.track_id: t.box for t in st.tracker.predict(frame.index)}
                for face in kept:
                    face.box = boxes.get(face.track_id, face.box)
                    face.keypoints = keypoints_from_landmarks(face.landmarks_2d)
                frame.faces = kept
                if not kept:
                    redetect.request(frame.stream_id)
            if st.smoother is not None:
                t = frame_timestamp(frame)
                for face in frame.faces:
                    st.smoother.apply(face, t)
                    # keep landmarks_3d = R @ L + t: the canonical shape follows the smoothed 3D points
                    face.landmarks_canonical = ((face.landmarks_3d - face.translation) @ face.rotation).astype(np.float32)
                    face.visibility = visibility_mask(face.rotation, self.bundle.normals)
                st.smoother.retain(t.track_id for t in st.tracker.predict(frame.index))
            live = {t.track_id for t in st.tracker.predict(frame.index)}
            st.scores = {k: v for k, v in st.scores.items() if k in live}
            st.last_index = frame.index
            if frame.meta.get("end_of_stream"):
                self.streams.pop(frame.stream_id, None)  # long runs over many files keep no stale state
        frame.meta["landmarks_time"] = time.time()


def fill_face(face: Face, out: dict[str, np.ndarray], M: np.ndarray, bundle: Bundle, K: np.ndarray) -> Face:
    """Write one face's model outputs (crop camera) into ``face`` in image coordinates (camera ``K``)."""
    R, t = pose_to_image(out["rotation"].astype(np.float64), out["translation"].astype(np.float64), M, bundle.K0, K)
    canonical = out["landmarks_3d"].astype(np.float64)
    face.landmarks_2d = crop_to_image(M, out["landmarks_2d"]).astype(np.float32)
    face.landmarks_canonical = canonical.astype(np.float32)
    face.rotation = R.astype(np.float32)
    face.translation = t.astype(np.float32)
    face.landmarks_3d = (canonical @ R.T + t).astype(np.float32)
    face.euler = euler_from_rotation(R).astype(np.float32)
    face.confidence = np.clip(out["confidence"], 0.0, 1.0).astype(np.float32)
    face.visibility = visibility_mask(face.rotation, bundle.normals)
    return face
