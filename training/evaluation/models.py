"""Model adapters for evaluation: one ``predict(image_rgb, boxes) -> dict`` for every model kind.

``predict(image_rgb, boxes (N, 4) x1y1x2y2, camera_matrix=None)`` returns ``landmarks_2d`` (N, 68, 2)
image pixels, ``rotation`` (N, 3, 3) head -> camera (OpenCV axes, engine/geometry.py) or None, and
``confidence`` (N, 68) where the model has one. ``camera_matrix`` is the frame's intrinsics when the
dataset knows them (the synthetic set); otherwise the engine's assumption (image diagonal focal).

- :class:`BundleModel`: a bundle directory, run exactly as the engine's ``landmarks`` stage runs it on
  a detected face: ``roi_from_box`` -> the engine's one predictor
  (:meth:`plugins.landmarks.model.LandmarkModel.predict_rois`: crop, preprocess, the onnxruntime
  backend, un-crop and pose to the image camera), so the evaluation measures what the engine outputs.
- :class:`OnnxModel`: a bare ONNX file with the bundle's I/O; its input convention comes from a
  sidecar ``<file>.json`` (a bundle manifest or just its ``input`` section), a ``manifest.json`` beside
  it, or explicit arguments (``input_size``, defaults of the model config for the rest).
- :class:`TeacherModel`: the 3DDFA_V2 teacher (``Teacher.predict_refined``: box pass + landmark pass),
  the peer row of every report. Its rotation is the 3DMM pose ``P[:, :3]`` (orthonormalised) turned
  to OpenCV axes (``FRONTAL @ R``), with the same perspective-crop correction the engine applies to
  its own model (the crop centre's ray), so both are compared the same way.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from engine.bundle import Bundle, BundleError, InputSpec, Manifest, load_bundle
from engine.crop import CropConvention, crop_matrix, roi_from_box, roi_from_landmarks
from engine.geometry import FRONTAL, image_intrinsics, orthonormalize, pose_to_image
from engine.landmarks68 import NAMES, REGIONS
from plugins.landmarks.backends import REQUIRED_OUTPUTS, create_backend
from plugins.landmarks.model import LandmarkModel

Prediction = dict[str, np.ndarray | None]


class EvalModel(Protocol):
    name: str

    def predict(self, image_rgb: np.ndarray, boxes: np.ndarray, camera_matrix: np.ndarray | None = None
                ) -> Prediction: ...


def _camera(image: np.ndarray, camera_matrix: np.ndarray | None) -> np.ndarray:
    h, w = image.shape[:2]
    return np.asarray(camera_matrix, np.float64) if camera_matrix is not None else image_intrinsics(w, h)


class BundleModel:
    """A model bundle on the engine's onnxruntime backend, cropped and un-cropped as the engine does."""

    def __init__(self, bundle: Bundle, name: str | None = None, intra_op_threads: int | None = None,
                 max_batch: int = 32, passes: int = 1):
        self.bundle = bundle
        self.name = name or bundle.manifest.name
        self.model = LandmarkModel(bundle, create_backend(bundle, "onnxruntime", "cpu", "fp32", max_batch, intra_op_threads))
        self.backend = self.model.backend
        self.passes = passes  # 2: re-crop from the first pass's landmarks, as the engine does while tracking

    def second_pass(self) -> BundleModel:
        """The same model and backend, predicting twice: box crop, then ``roi_from_landmarks`` crop."""
        twin = copy.copy(self)
        twin.name, twin.passes = f"{self.name} (2nd pass)", 2
        return twin

    @classmethod
    def from_dir(cls, path: str | Path, name: str | None = None, **kwargs) -> BundleModel:
        return cls(load_bundle(path), name, **kwargs)

    def predict(self, image_rgb: np.ndarray, boxes: np.ndarray, camera_matrix: np.ndarray | None = None
                ) -> Prediction:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        out = self._predict_rois(image_rgb, roi_from_box(boxes), camera_matrix)
        for _ in range(self.passes - 1):
            if len(boxes):
                out = self._predict_rois(image_rgb, roi_from_landmarks(out["landmarks_2d"]), camera_matrix)
        return out

    def _predict_rois(self, image_rgb: np.ndarray, rois: np.ndarray, camera_matrix: np.ndarray | None) -> Prediction:
        out = self.model.predict_rois(image_rgb, rois, _camera(image_rgb, camera_matrix))
        if not len(rois):  # the keys an empty prediction always had
            return {"landmarks_2d": np.zeros((0, 68, 2), np.float32), "rotation": np.zeros((0, 3, 3)),
                    "confidence": np.zeros((0, 68), np.float32)}
        return {"landmarks_2d": out["landmarks_2d"], "rotation": out["rotation"].astype(np.float64),
                "confidence": out["confidence"], "landmarks_3d": out["landmarks_3d"],
                "landmarks_canonical": out["landmarks_canonical"]}


@dataclass(frozen=True)
class _OnnxFileBundle(Bundle):
    """A :class:`Bundle` whose model is an arbitrary ONNX file (not ``<dir>/model.onnx``)."""

    onnx_file: Path = Path("model.onnx")

    @property
    def onnx_path(self) -> Path:
        return self.onnx_file


def onnx_input_spec(path: Path, spec: str | Path | None = None, input_size: int | None = None,
                    mean: tuple[float, float, float] | None = None, std: tuple[float, float, float] | None = None,
                    focal_ratio: float | None = None) -> tuple[InputSpec, dict]:
    """The input convention of a bare ONNX file: (InputSpec, the manifest dict it came from or {}).

    Looked up in order: ``spec`` (a JSON file), ``<file>.json``, ``manifest.json`` beside the file,
    then ``input_size`` (+ optional mean/std/focal ratio, else the model config's defaults).
    """
    for cand in ([Path(spec)] if spec else []) + [path.with_suffix(".json"), path.parent / "manifest.json"]:
        if cand.is_file():
            raw = json.loads(cand.read_text())
            inp = raw.get("input", raw) if isinstance(raw, dict) else raw
            try:
                return InputSpec.model_validate(inp), (raw if "input" in raw else {})
            except ValueError as e:
                raise BundleError(f"{cand}: not an input spec (a bundle manifest or its 'input' section): {e}") from e
        if spec and cand == Path(spec):
            raise BundleError(f"{cand}: input spec file not found")
    if input_size is None:
        raise BundleError(
            f"{path}: a bare ONNX file needs its input convention: put a bundle manifest.json (or "
            f"{path.with_suffix('.json').name} with the manifest's 'input' section) beside it, or pass --input-size"
        )
    from plugins.landmarks.transformer import LandmarkTransformerConfig

    d = LandmarkTransformerConfig(img_size=input_size)
    if focal_ratio is not None:
        d = d.model_copy(update={"focal_ratio": focal_ratio})
    return InputSpec(size=input_size, mean=list(mean or d.mean), std=list(std or d.std),
                     crop=CropConvention().as_dict(), K0=d.k0().tolist()), {}


class OnnxModel(BundleModel):
    """A bare ONNX file with the bundle's I/O (input ``image`` (N, 3, S, S); outputs as the bundle's)."""

    def __init__(self, path: str | Path, name: str | None = None, spec: str | Path | None = None,
                 input_size: int | None = None, intra_op_threads: int | None = None, **spec_kwargs):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise BundleError(f"{path}: ONNX file not found")
        input_spec, raw = onnx_input_spec(path, spec, input_size, **spec_kwargs)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs = {o.name: list(o.shape) for o in session.get_outputs()}
        missing = [n for n in REQUIRED_OUTPUTS if n not in outputs]
        if missing:
            raise BundleError(f"{path}: outputs {missing} missing (has {list(outputs)}); the evaluation needs "
                              f"the bundle's outputs {list(REQUIRED_OUTPUTS)}")
        if "normals_template" in raw:
            normals = raw["normals_template"]
        else:
            from training.masks import normals_template

            normals = np.asarray(normals_template(), float).tolist()
        manifest = Manifest.model_validate({
            "bundle_version": raw.get("bundle_version", "1.0.0"), "name": name or path.stem,
            "model": raw.get("model", {}), "input": input_spec.model_dump(),
            "landmarks": {"names": NAMES, "regions": {k: [v.start, v.stop] for k, v in REGIONS.items()}},
            "normals_template": normals, "outputs": {k: [str(s) for s in v] for k, v in outputs.items()},
            "files": {},
        })
        super().__init__(_OnnxFileBundle(path=path.parent, manifest=manifest, onnx_file=path), name or path.stem,
                         intra_op_threads)


def teacher_rotation(params: np.ndarray, rois: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(N, 3, 3) head -> camera rotations from 3DDFA parameters (N, 62) and their crop rois (N, 4).

    3DDFA's ``P[:, :3]`` is a scaled rotation from the BFM frame (x = subject's left, y up, z out of
    the face: ICT's axes) to a weak-perspective camera with y up and z towards the viewer; OpenCV
    axes flip y and z (``FRONTAL``). The crop is then turned towards its centre's ray in the frame
    camera (``pose_to_image``, as for our model), with a square crop of the roi as the crop camera.
    """
    out = []
    for p, roi in zip(np.asarray(params, np.float64), np.asarray(rois, np.float64)):
        r_crop = FRONTAL @ orthonormalize(p[:12].reshape(3, 4)[:, :3])
        size = 120  # any crop size: only the roi's centre matters for the rotation
        M = crop_matrix(roi, size)
        K0 = np.array([[size, 0.0, (size - 1) / 2], [0.0, size, (size - 1) / 2], [0.0, 0.0, 1.0]])
        R, _ = pose_to_image(r_crop, np.array([0.0, 0.0, 1.0]), M, K0, K)
        out.append(R)
    return np.stack(out) if out else np.zeros((0, 3, 3))


class TeacherModel:
    """The 3DDFA_V2 teacher (training/teacher/tddfa.py), two passes as in pseudo-labelling."""

    def __init__(self, name: str = "3DDFAv2 (teacher)", device: str = "cpu"):
        from training.teacher.tddfa import Teacher

        self.name = name
        self.teacher = Teacher(device=device)

    def predict(self, image_rgb: np.ndarray, boxes: np.ndarray, camera_matrix: np.ndarray | None = None
                ) -> Prediction:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        res = self.teacher.predict_refined(image_rgb, boxes)
        return {
            "landmarks_2d": res.landmarks.astype(np.float32),
            "rotation": teacher_rotation(res.params, res.roi, _camera(image_rgb, camera_matrix)),
            "confidence": res.confidence,
        }


BASELINES = {"teacher": TeacherModel}


def open_model(spec: str, threads: int | None = None, onnx_spec: str | Path | None = None,
               input_size: int | None = None) -> EvalModel:
    """``PATH`` or ``LABEL=PATH``: a bundle directory or an ``.onnx`` file; ``teacher``: the baseline."""
    label, _, target = spec.partition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
    if target in BASELINES:
        return BASELINES[target](**({"name": label} if label else {}))
    path = Path(target)
    if path.is_dir():
        return BundleModel.from_dir(path, label or None, intra_op_threads=threads)
    if path.suffix == ".onnx":
        return OnnxModel(path, label or None, spec=onnx_spec, input_size=input_size, intra_op_threads=threads)
    raise BundleError(f"{path}: not a bundle directory (with manifest.json) or an .onnx file")
