"""``landmarks`` stage: 68 3D landmarks, head pose, confidence and occlusion for every face.

The stage is options, per-stream state and scheduling around :class:`plugins.landmarks.model.LandmarkModel`
(the one predictor: crops, fused preprocess, one backend call per wave of frames, un-crop to the image
and pose in the frame camera ``K``, stored in ``frame.meta["camera_matrix"]``). Per face it picks the
crop: from the detector box, or from the same track's previous landmarks.

Tracking (``tracking = true``, default) and smoothing are parts it composes, one of each per stream,
each with one ``update``: :class:`plugins.trackers.face_tracker.FaceTracker` (shared with the ``tracker``
stage) gives ``track_id``s. On
frames the detector skipped (``centerface.detect_every``: ``meta["detected"] = False``) faces come from
the stream's live tracks, cropped from their last landmarks; a track whose mean confidence falls below
``lost_confidence`` ends and the stream asks the detector for a fresh detection
(``context.redetect``); one whose confidence drops below ``redetect_drop`` x its running mean asks too
but keeps its track. Because frame k+1 may then crop from frame k's result, a batch is run in
waves (wave i = the i-th frame of every stream, so faces still batch across streams); without such a
dependency (``crop_from = "box"`` on detected frames) the whole batch is one wave. Smoothing
(``smoothing = true``): causal One-Euro per track (``FaceSmoother.update_frames``), off by default so
dataset jobs get raw per-frame estimates.

Between waves only what tracks the next frame is computed (image landmarks and confidence:
``uncrop_2d``, the tracker); the 3D landmarks, pose and angles of the whole batch (``uncrop_pose``) and
the smoothing follow in one vectorised step each at the end of the batch, so a tracked stream's per-frame
Python work is a few array operations rather than a hundred (benchmarks/bench_stage.py).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from engine.bundle import Bundle
from engine.crop import crop_face, crop_matrix, invert_affine, roi_from_box
from engine.frame import Face, Frame
from engine.geometry import image_intrinsics, pose_to_image
from engine.landmarks68 import keypoints_from_landmarks
from engine.plugin import PluginOptions, Stage, path_option
from plugins.landmarks.model import (
    BundleMissingError,
    LandmarkModel,
    missing_bundle_message,
    uncrop_2d,
    uncrop_pose,
    write_faces,
)
from plugins.trackers.face_tracker import FaceTracker, roi_from_track
from plugins.trackers.iou_tracker import box_iou
from plugins.trackers.one_euro import LANDMARK_PARAMS, ROTATION_PARAMS, FaceSmoother, OneEuroParams, frame_timestamp

log = logging.getLogger(__name__)

# re-exported: callers imported these from here before plugins/landmarks/model.py existed
__all__ = ["BundleMissingError", "LandmarkStage", "crop_face", "image_intrinsics", "keypoints_from_landmarks",
           "missing_bundle_message", "pose_to_image", "roi_from_track"]


# ---------------------------------------------------------------- per-stream state


@dataclass
class _StreamState:
    tracker: FaceTracker
    smoother: FaceSmoother | None


@dataclass
class _Job:
    face: Face
    M: np.ndarray


class LandmarkStage(Stage):
    """3D landmarks, head pose, confidence and occlusion per face (landmark transformer bundle)."""

    name = "landmarks"
    dedicated_cpus = True  # the model call is the pipeline's CPU bottleneck ([pipeline] cpu_pinning)

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
        self.model: LandmarkModel | None = None
        self.streams: dict[str, _StreamState] = {}
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # faces per backend call (recent), for tests
        self._cameras: dict[tuple[int, int], np.ndarray] = {}  # frame size -> assumed camera matrix

    @property
    def bundle(self) -> Bundle | None:
        return self.model.bundle if self.model else None

    @property
    def backend(self):  # noqa: ANN201 - the backend protocol; tests and benchmarks wrap its infer
        return self.model.backend if self.model else None

    @property
    def _device_crop(self) -> bool:
        return bool(self.model and self.model.device_crop)

    @_device_crop.setter
    def _device_crop(self, value: bool) -> None:  # tests force the device-crop path on torch CPU
        assert self.model is not None
        self.model.device_crop = value

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        o = self.options
        self.model = LandmarkModel.from_bundle(o.bundle, o.backend, o.device, precision=o.precision,
                                               max_batch=o.max_batch, intra_op_threads=o.intra_op_threads,
                                               engine_dir=o.engine_dir, cuda_graphs=o.cuda_graphs, gpu_crop=o.gpu_crop)
        self._normals = self.model.normals
        b = self.model.backend
        log.info("landmarks: bundle %s on %s/%s (%s), max_batch %d", self.model.bundle.path, b.name, b.device,
                 b.precision, o.max_batch)

    def close(self) -> None:
        if self.model is not None:
            self.model.close()
            self.model = None

    # ------------------------------------------------------------ processing

    def state(self, stream_id: str) -> _StreamState:
        st = self.streams.get(stream_id)
        if st is None:
            o = self.options
            smoother = None
            if o.smoothing:
                lm = OneEuroParams(o.smooth_min_cutoff, o.smooth_beta)
                smoother = FaceSmoother(lm, OneEuroParams(o.smooth_min_cutoff, o.smooth_beta_rotation), lm)
            tracker = FaceTracker(o.iou_threshold, o.max_age, lost_confidence=o.lost_confidence,
                                  redetect_drop=o.redetect_drop)
            st = self.streams[stream_id] = _StreamState(tracker, smoother)
        return st

    def end_of_stream(self, stream_id: str) -> None:
        # also for streams that stopped or were removed without an end_of_stream frame
        self.streams.pop(stream_id, None)
        self.context.redetect.forget(stream_id)  # a request this stage made for its last frames

    def _dependent(self, frames: list[Frame]) -> bool:
        """Does a frame's crop depend on the previous frame's result (so frames must go in waves)?"""
        o = self.options
        return o.tracking and (o.crop_from != "box" or any(not f.meta.get("detected", True) for f in frames))

    def process(self, frames: list[Frame]) -> list[Frame]:
        if self.model is None:
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
        pending = _Pending()
        tracked: list[tuple[Frame, _StreamState | None, set[int]]] = []
        for wave in groups:
            jobs = [self._plan(frame) for frame in wave]
            self._infer(wave, jobs, pending)
            for frame, frame_jobs in zip(wave, jobs):
                tracked.append(self._track(frame, frame_jobs))
        self._pose(pending)
        self._smooth(tracked)
        return frames

    def _plan(self, frame: Frame) -> list[_Job]:
        """This frame's jobs: one per face, with the image -> crop affine of its crop."""
        o = self.options
        size = self.model.input_size
        st = self.state(frame.stream_id) if o.tracking else None
        jobs: list[_Job] = []
        if frame.meta.get("detected", True):
            if not frame.faces:
                return jobs
            boxes = np.stack([face.box for face in frame.faces]).astype(np.float64)
            rois = roi_from_box(boxes)
            if st is not None and o.crop_from != "box":
                # a detected face crops from the landmarks of the recent track it overlaps most
                tracks = st.tracker.recent(frame.index)
                if tracks:
                    iou = box_iou(np.stack([t.predicted_box for t in tracks]), boxes)
                    best = np.argmax(iou, axis=0)
                    for j in np.flatnonzero(iou[best, np.arange(len(boxes))] >= o.iou_threshold):
                        rois[j] = roi_from_track(tracks[best[j]])
            return [_Job(face, crop_matrix(roi, size)) for face, roi in zip(frame.faces, rois)]
        if st is not None:
            for t in st.tracker.followed(frame.index):
                shift = (t.predicted_box[:2] + t.predicted_box[2:] - t.box[:2] - t.box[2:]) / 2
                face = st.tracker.face_from(t, keypoints_from_landmarks(t.landmarks + shift))
                jobs.append(_Job(face, crop_matrix(roi_from_track(t), size)))
            if not jobs:
                self.context.redetect.request(frame.stream_id)
        return jobs

    def _infer(self, wave: list[Frame], jobs: list[list[_Job]], pending: _Pending) -> None:
        """Every face of the wave in one model call. What tracking the next frame needs (image landmarks,
        confidence) goes into the faces now; the raw outputs wait in ``pending`` for :meth:`_pose`."""
        Ks = []
        for frame, frame_jobs in zip(wave, jobs):
            K = frame.meta["camera_matrix"] = self._camera(frame.size)
            Ks += [K] * len(frame_jobs)
        flat = [(frame, job) for frame, frame_jobs in zip(wave, jobs) for job in frame_jobs]
        if not flat:
            return
        self.batch_sizes.append(len(flat))
        images: list[np.ndarray] = []
        index: dict[int, int] = {}  # a frame's image crosses once (device crops), however many faces
        for frame, _ in flat:
            index.setdefault(id(frame.image), len(images))
            if len(index) > len(images):
                images.append(frame.image)
        M = np.stack([job.M for _, job in flat])
        out = self.model.infer(images, [index[id(f.image)] for f, _ in flat], M)
        Minv = invert_affine(M)
        faces = [job.face for _, job in flat]
        write_faces(faces, uncrop_2d(out, Minv))
        pending.add(faces, out, Minv, np.stack(Ks))

    def _camera(self, size: tuple[int, int]) -> np.ndarray:
        """The assumed (3, 3) camera of a frame size (one read-only array per size, shared by its frames)."""
        K = self._cameras.get(size)
        if K is None:
            K = self._cameras[size] = image_intrinsics(*size, self.options.focal_px)
            K.flags.writeable = False
        return K

    def _pose(self, pending: _Pending) -> None:
        """3D landmarks, pose and angles of every face of the batch in one vectorised step (nothing in the
        tracking of the next frame needs them)."""
        if not pending.faces:
            return
        # with tracking and smoothing, every face gets a track and the smoother recomputes euler and
        # visibility from the smoothed rotation: the raw ones would be thrown away
        smoothed = self.options.tracking and self.options.smoothing
        out, Minv, K = pending.arrays()
        write_faces(pending.faces, uncrop_pose(out, Minv, self.model.K0, K, self._normals, angles=not smoothed))

    def _track(self, frame: Frame, jobs: list[_Job]) -> tuple[Frame, _StreamState | None, set[int]]:
        """Tracking of one frame whose faces have image landmarks and confidence; returns what
        :meth:`_smooth` needs once the batch's poses are in (the stream's state, its live track ids)."""
        if not self.options.tracking:
            return frame, None, set()
        st = self.state(frame.stream_id)
        if not frame.meta.get("detected", True):
            frame.faces = [job.face for job in jobs]  # the faces followed from the tracks
        if st.tracker.update(frame):
            self.context.redetect.request(frame.stream_id)
        if frame.meta.get("end_of_stream"):
            self.streams.pop(frame.stream_id, None)  # long runs over many files keep no stale state
        return frame, st, set(st.tracker.live_ids)

    def _smooth(self, tracked: list[tuple[Frame, _StreamState | None, set[int]]]) -> None:
        """Smoothing of the batch's frames, one :meth:`FaceSmoother.update_frames` per stream (in time order)."""
        per_stream: dict[int, tuple[_StreamState, list]] = {}
        for frame, st, live_ids in tracked:
            if st is not None and st.smoother is not None:
                per_stream.setdefault(id(st), (st, []))[1].append((frame.faces, frame_timestamp(frame), live_ids))
        for st, items in per_stream.values():
            st.smoother.update_frames(items, self._normals)
        now = time.time()
        for frame, _, _ in tracked:
            frame.meta["landmarks_time"] = now


class _Pending:
    """Raw model outputs of a batch's waves, kept for one :func:`uncrop_pose` call over all of them."""

    def __init__(self) -> None:
        self.faces: list[Face] = []
        self._parts: list[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]] = []

    def add(self, faces: list[Face], out: dict[str, np.ndarray], Minv: np.ndarray, K: np.ndarray) -> None:
        self.faces += faces
        self._parts.append((out, Minv, K))

    def arrays(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        if len(self._parts) == 1:
            return self._parts[0]
        outs, Minvs, Ks = zip(*self._parts)
        keys = ("rotation", "translation", "landmarks_3d")
        return ({k: np.concatenate([o[k] for o in outs]) for k in keys}, np.concatenate(Minvs), np.concatenate(Ks))
