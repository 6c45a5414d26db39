"""The landmark model as a library: one predictor from image + face boxes to image-space results.

:class:`LandmarkModel` is the only place that turns faces into model outputs: bundle -> square crops
(engine.crop: from a detector box or from previous landmarks; OpenCV into a reused buffer, or on the
GPU by the torch backend) -> fused ``Bundle.preprocess`` -> one batched backend call (chunked by
``max_batch``) -> :func:`uncrop` (image-space landmarks, pose in the image camera, confidence,
occlusion). The ``landmarks`` stage, the evaluation (training/evaluation/models.py), calibration
checks and the benchmarks all call it, so what they measure is what the engine outputs.

``uncrop``, vectorised over faces:

- ``landmarks_2d``: the model's 2.5D landmarks (crop pixels, K0 projection of its 3D output) mapped
  through the inverse crop affine: exact, no camera assumption.
- ``rotation``/``translation``/``landmarks_3d``: the model predicts the pose in the nominal crop camera
  K0; the frame's camera ``K`` is unknown, so the caller passes one (default
  :func:`engine.geometry.image_intrinsics`: focal = image diagonal, centred) and
  :func:`engine.geometry.pose_to_image` turns the crop camera towards the crop centre.
- ``landmarks_canonical`` (head frame, cm), ``landmarks_3d = R @ L + t``, ``euler``, ``confidence``
  (clipped to 0..1), ``visibility`` (engine.geometry.visibility_mask with the bundle's normals).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from engine.assets import default_bundle
from engine.bundle import Bundle, load_bundle
from engine.crop import crop_face, crop_matrix, invert_affine, roi_from_box, roi_from_landmarks
from engine.frame import Face
from engine.geometry import euler_from_rotation, image_intrinsics, pose_from_crop, visibility_mask, visibility_thresholds
from engine.landmarks68 import NUM_LANDMARKS, keypoints_from_landmarks
from plugins.landmarks.backends import Backend, BackendName, Device, Precision, create_backend

log = logging.getLogger(__name__)

_VISIBLE_THRESHOLDS = visibility_thresholds()
class BundleMissingError(FileNotFoundError):
    """No model bundle where the model looks; the message says how to get one."""


def missing_bundle_message(path: Path) -> str:
    return (
        f"landmark model bundle not found at {path} (no manifest.json). Get one: train with "
        "'python -m training.train --config training/configs/cpu_vit_tiny_128.toml' and export with "
        f"'python -m training.bundle <run>/checkpoints/last.pt {path}', or point the stage's 'bundle' "
        "option at an existing bundle directory"
    )


# Per-face outputs of the model in image coordinates, in the order Face declares them.
OUTPUT_FIELDS = ("landmarks_2d", "landmarks_3d", "landmarks_canonical", "rotation", "euler", "translation",
                 "confidence", "visibility")


def uncrop_2d(out: dict[str, np.ndarray], Minv: np.ndarray) -> dict[str, np.ndarray]:
    """``landmarks_2d`` and ``confidence`` in the image (what tracking needs right after the model call) from
    model outputs and the crop -> image affines ``Minv`` (N, 3, 3)."""
    return {
        "landmarks_2d": (out["landmarks_2d"] @ np.swapaxes(Minv[:, :2, :2], 1, 2) + Minv[:, None, :2, 2]).astype(np.float32),
        "confidence": np.clip(out["confidence"], 0.0, 1.0).astype(np.float32),
    }


def uncrop_pose(out: dict[str, np.ndarray], Minv: np.ndarray, K0: np.ndarray, K: np.ndarray, normals: np.ndarray,
                angles: bool = True) -> dict[str, np.ndarray]:
    """The other :data:`OUTPUT_FIELDS` (3D landmarks, pose, angles, occlusion) in the image camera ``K``
    (N, 3, 3) from model outputs and ``Minv``. ``angles =
    False`` leaves out ``euler`` and ``visibility`` (None): for a caller that replaces the rotation anyway
    (the landmark stage's smoothing recomputes both from the smoothed rotation)."""
    R, t = pose_from_crop(out["rotation"].astype(np.float64), out["translation"].astype(np.float64), Minv, K0,
                          invert_affine(K), K[:, 0, 0])
    R32 = R.astype(np.float32)
    return {
        "landmarks_3d": (out["landmarks_3d"].astype(np.float64) @ np.swapaxes(R, 1, 2) + t[:, None]).astype(np.float32),
        "landmarks_canonical": out["landmarks_3d"].astype(np.float32),
        "rotation": R32,
        "euler": euler_from_rotation(R).astype(np.float32) if angles else None,
        "translation": t.astype(np.float32),
        "visibility": visibility_mask(R32, normals, _VISIBLE_THRESHOLDS) if angles else None,
    }


def uncrop(out: dict[str, np.ndarray], M: np.ndarray, K0: np.ndarray, K: np.ndarray, normals: np.ndarray
           ) -> dict[str, np.ndarray]:
    """Model outputs in the crop camera (row i = face i) -> image coordinates (camera ``K``), vectorised:
    :func:`uncrop_2d` and :func:`uncrop_pose`. ``M``, ``K``: (N, 3, 3) image -> crop affines and frame
    cameras. Returns the :data:`OUTPUT_FIELDS` as float32 arrays (``visibility`` bool)."""
    Minv = invert_affine(M)
    return {**uncrop_2d(out, Minv), **uncrop_pose(out, Minv, K0, K, normals)}


def write_faces(faces: Sequence[Face], arrays: dict[str, np.ndarray]) -> None:
    """Row i of each of ``arrays`` (:data:`OUTPUT_FIELDS`, or some of them) into ``faces[i]``."""
    for name in OUTPUT_FIELDS:
        if name not in arrays:
            continue
        column = arrays[name]
        for i, face in enumerate(faces):
            setattr(face, name, None if column is None else column[i])


@dataclass
class Faces:
    """Faces on one image, one array per field (supervision-style): row i is face i.

    ``len(faces)``, ``faces[i]`` / ``faces[1:3]`` / ``faces[mask]`` (a :class:`Faces` of those rows),
    iteration (one-row :class:`Faces`), :meth:`to_faces` (engine :class:`~engine.frame.Face` objects).
    Coordinates as in engine/geometry.py: image pixels, OpenCV camera axes, centimetres.
    """

    box: np.ndarray  # (N, 4) float32 x1y1x2y2 (the detector's)
    score: np.ndarray  # (N,) float32 detector score
    keypoints: np.ndarray  # (N, 5, 2) float32 (the detector's, else from the landmarks)
    landmarks_2d: np.ndarray  # (N, 68, 2) image pixels
    landmarks_3d: np.ndarray  # (N, 68, 3) camera space, cm
    landmarks_canonical: np.ndarray  # (N, 68, 3) head frame, cm
    rotation: np.ndarray  # (N, 3, 3) head -> camera
    euler: np.ndarray  # (N, 3) yaw, pitch, roll, degrees
    translation: np.ndarray  # (N, 3) cm
    confidence: np.ndarray  # (N, 68) 0..1
    visibility: np.ndarray  # (N, 68) bool occlusion mask
    track_id: np.ndarray | None = None  # (N,) int64 when tracked

    def __len__(self) -> int:
        return len(self.box)

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> Faces:
        rows = [index] if isinstance(index, (int, np.integer)) else index  # an int keeps the axis
        return Faces(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[rows]
                        for f in fields(self)})

    def __iter__(self) -> Iterator[Faces]:
        return (self[i] for i in range(len(self)))

    @classmethod
    def empty(cls) -> Faces:
        z = np.zeros
        return cls(z((0, 4), np.float32), z(0, np.float32), z((0, 5, 2), np.float32),
                   z((0, NUM_LANDMARKS, 2), np.float32), z((0, NUM_LANDMARKS, 3), np.float32),
                   z((0, NUM_LANDMARKS, 3), np.float32), z((0, 3, 3), np.float32), z((0, 3), np.float32),
                   z((0, 3), np.float32), z((0, NUM_LANDMARKS), np.float32), z((0, NUM_LANDMARKS), bool))

    def to_faces(self) -> list[Face]:
        """Engine :class:`Face` objects (what a pipeline's frames carry)."""
        out = []
        for i in range(len(self)):
            face = Face(box=self.box[i], score=float(self.score[i]), keypoints=self.keypoints[i],
                        track_id=None if self.track_id is None else int(self.track_id[i]))
            for name in OUTPUT_FIELDS:
                setattr(face, name, getattr(self, name)[i])
            out.append(face)
        return out

    @classmethod
    def from_faces(cls, faces: Sequence[Face]) -> Faces:
        """Stack a frame's faces (all with landmarks) into arrays."""
        if not faces:
            return cls.empty()
        tracked = all(f.track_id is not None for f in faces)
        return cls(np.stack([np.asarray(f.box, np.float32) for f in faces]),
                   np.array([f.score for f in faces], np.float32),
                   np.stack([np.asarray(f.keypoints, np.float32) for f in faces]),
                   *(np.stack([getattr(f, name) for f in faces]) for name in OUTPUT_FIELDS),
                   track_id=np.array([f.track_id for f in faces], np.int64) if tracked else None)


def _detections(detections: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(boxes (N, 4), scores (N,), keypoints (N, 5, 2) or None) from what a caller has: CenterFace
    Detections (``boxes``), supervision Detections (``xyxy``), :class:`Faces` (``box``) or an (N, 4) array."""
    for attr, score_attr in (("boxes", "scores"), ("xyxy", "confidence"), ("box", "score")):
        if hasattr(detections, attr):
            boxes = np.asarray(getattr(detections, attr), np.float32).reshape(-1, 4)
            scores = getattr(detections, score_attr, None)
            keypoints = getattr(detections, "keypoints", None)
            return (boxes, np.ones(len(boxes), np.float32) if scores is None else np.asarray(scores, np.float32),
                    None if keypoints is None else np.asarray(keypoints, np.float32))
    boxes = np.asarray(detections, np.float32).reshape(-1, 4)
    return boxes, np.ones(len(boxes), np.float32), None


class LandmarkModel:
    """68 3D landmarks, head pose and confidence for faces on images: the engine's one predictor.

    ``LandmarkModel.from_bundle()`` opens the engine's default bundle on the best backend here;
    ``model.predict(image_rgb, detections)`` returns :class:`Faces`. The ``landmarks`` stage calls
    :meth:`run` (many frames and faces in one backend call) with its own crop matrices.
    """

    def __init__(self, bundle: Bundle, backend: Backend, gpu_crop: bool = True):
        self.bundle = bundle
        self.backend = backend
        # torch on CUDA can crop on the device: only the uint8 frames cross to the GPU
        self.device_crop = bool(gpu_crop and backend.device == "cuda" and hasattr(backend, "infer_crops"))
        spec = bundle.manifest.input
        std = np.asarray(spec.std, np.float32)
        # the bundle's properties build arrays on each access: keep them
        self._scale = (np.float32(spec.scale) / std).reshape(1, 3, 1, 1)  # x * scale - mean, / std in one step
        self._shift = (-np.asarray(spec.mean, np.float32) / std).reshape(1, 3, 1, 1)
        self.K0, self.normals, self.input_size = bundle.K0, bundle.normals, bundle.input_size
        self._buffers: dict[str, np.ndarray] = {}  # reused crop / model-input arrays, grown on demand

    @classmethod
    def from_bundle(cls, path: str | Path | Bundle | None = None, backend: BackendName = "auto",
                    device: Device | None = None, *, precision: Precision = "fp32", max_batch: int = 32,
                    intra_op_threads: int | None = None, engine_dir: str | Path | None = None,
                    cuda_graphs: bool = True, gpu_crop: bool = True) -> LandmarkModel:
        """Open a bundle directory (default: the engine's bundled model) on ``backend`` (auto: TensorRT
        engine if built, else torch on CUDA, else ONNX Runtime on CPU)."""
        if isinstance(path, Bundle):
            bundle = path
        else:
            path = Path(path) if path else default_bundle()
            if not (path / "manifest.json").is_file():
                raise BundleMissingError(missing_bundle_message(path))
            bundle = load_bundle(path)
        return cls(bundle, create_backend(bundle, backend, device, precision, max_batch, intra_op_threads,
                                          engine_dir, cuda_graphs), gpu_crop)

    def close(self) -> None:
        self.backend.close()
        self._buffers.clear()

    def __enter__(self) -> LandmarkModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ the one path

    def _buffer(self, name: str, n: int, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """First ``n`` rows of a reused (capacity, *shape) array (no allocation per frame)."""
        buf = self._buffers.get(name)
        if buf is None or len(buf) < n:
            buf = self._buffers[name] = np.empty((max(n, 1), *shape), dtype)
        return buf[:n]

    def infer(self, images: Sequence[np.ndarray], image_index: Sequence[int], M: np.ndarray) -> dict[str, np.ndarray]:
        """Raw model outputs (crop camera) for faces ``k``: crop ``M[k]`` (image -> crop affine) of
        ``images[image_index[k]]`` (HxWx3 uint8 RGB). One backend call, chunked by its ``max_batch``."""
        if self.device_crop:
            return self.backend.infer_crops(images, [(int(i), m) for i, m in zip(image_index, M)])  # type: ignore[attr-defined]
        S, n = self.input_size, len(M)
        crops = self._buffer("crops", n, (S, S, 3), np.uint8)
        for k, (i, m) in enumerate(zip(image_index, M)):
            crop_face(images[i], m, S, out=crops[k])
        # Bundle.preprocess, fused: (crop * scale - mean) / std = crop * (scale / std) - mean / std
        x = self._buffer("input", n, (3, S, S), np.float32)
        np.multiply(crops.transpose(0, 3, 1, 2), self._scale, out=x)
        x += self._shift
        return self.backend.infer(x)

    def run(self, images: Sequence[np.ndarray], image_index: Sequence[int], M: np.ndarray, K: np.ndarray
            ) -> dict[str, np.ndarray]:
        """:meth:`infer` + :func:`uncrop`: image-space :data:`OUTPUT_FIELDS` for every face (``K``: (N, 3, 3))."""
        M = np.asarray(M, np.float64)
        return uncrop(self.infer(images, image_index, M), M, self.K0, np.asarray(K, np.float64), self.normals)

    # ------------------------------------------------------------ one image

    def predict_rois(self, image_rgb: np.ndarray, rois: np.ndarray, camera_matrix: np.ndarray | None = None
                     ) -> dict[str, np.ndarray]:
        """:data:`OUTPUT_FIELDS` for square rois (N, 4) of one image (``camera_matrix``: its intrinsics,
        default :func:`~engine.geometry.image_intrinsics`)."""
        rois = np.asarray(rois, np.float64).reshape(-1, 4)
        if not len(rois):
            return {name: getattr(Faces.empty(), name) for name in OUTPUT_FIELDS}
        M = np.stack([crop_matrix(roi, self.input_size) for roi in rois])
        K = image_intrinsics(image_rgb.shape[1], image_rgb.shape[0]) if camera_matrix is None else camera_matrix
        Ks = np.broadcast_to(np.asarray(K, np.float64), (len(M), 3, 3))
        return self.run([image_rgb], np.zeros(len(M), np.int64), M, Ks)

    def predict(self, image_rgb: np.ndarray, detections: Any, camera_matrix: np.ndarray | None = None,
                passes: int = 1) -> Faces:
        """Landmarks and pose of the faces ``detections`` (CenterFace or supervision Detections, or (N, 4)
        x1y1x2y2 boxes) on one HxWx3 uint8 RGB image. ``passes = 2`` crops again from the first pass's
        landmarks, as the engine does while tracking a face."""
        boxes, scores, keypoints = _detections(detections)
        if not len(boxes):
            return Faces.empty()
        out = self.predict_rois(image_rgb, roi_from_box(boxes), camera_matrix)
        for _ in range(passes - 1):
            out = self.predict_rois(image_rgb, roi_from_landmarks(out["landmarks_2d"]), camera_matrix)
        if keypoints is None:
            keypoints = keypoints_from_landmarks(out["landmarks_2d"])
        return Faces(boxes, scores, keypoints, **out)

    __call__ = predict
