"""3DDFA_V2 MobileNet-0.5 teacher: face box -> 62 3DMM parameters -> 68 2D landmarks.

Follows ``shared/assets/teacher_3ddfa_v2/README.md``: the box/landmark crop conventions, zero padding
outside the image, a bilinear resize to 120x120 (torch, half-pixel centres like ``cv2.INTER_LINEAR``),
BGR input scaled ``(p - 127.5) / 128``, de-normalised parameters and the BFM 68-point bases.

Confidence (the teacher has no uncertainty head): :meth:`Teacher.predict_refined` runs the box pass and
the landmark (second) pass and measures, per landmark, how far the two passes disagree, normalised by the
face size ``sqrt(w * h)`` of the landmark bounding box: ``confidence = exp(-d / CONFIDENCE_SCALE)``.
The teacher's typical error is ~3.5 % NME, where the confidence is about 0.5; identical passes give 1.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from engine.assets import shared_asset
from engine.landmarks68 import FLIP_PERMUTATION
from training.teacher.base import TeacherResult
from training.teacher.mobilenet import MobileNetV1

log = logging.getLogger(__name__)

INPUT_SIZE = 120
CONFIDENCE_SCALE = 0.05  # landmark disagreement (fraction of face size) at which confidence = 1/e


def roi_from_boxes(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) x1y1x2y2 -> (N, 4) square crop boxes (3DDFA_V2 ``parse_roi_box_from_bbox``)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    old = (b[:, 2] - b[:, 0] + b[:, 3] - b[:, 1]) / 2
    cx = (b[:, 0] + b[:, 2]) / 2
    cy = (b[:, 1] + b[:, 3]) / 2 + old * 0.14
    side = np.floor(old * 1.58)  # int() of a positive number
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)


def roi_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(N, 68, 2) -> (N, 4) square of side sqrt(2) * max(w, h) centred on the landmark box."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 68, 2)
    lo, hi = lm.min(axis=1), lm.max(axis=1)
    c = (lo + hi) / 2
    side = np.sqrt(2.0) * (hi - lo).max(axis=1)
    return np.concatenate([c - side[:, None] / 2, c + side[:, None] / 2], axis=1)


def crop_zero_padded(image: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """Crop ``roi`` (rounded to integers) from ``image``; pixels outside the image are zero."""
    h, w = image.shape[:2]
    sx, sy, ex, ey = (int(round(v)) for v in roi)
    out = np.zeros((max(ey - sy, 1), max(ex - sx, 1), image.shape[2]), dtype=image.dtype)
    x0, y0, x1, y1 = max(sx, 0), max(sy, 0), min(ex, w), min(ey, h)
    if x1 > x0 and y1 > y0:
        out[y0 - sy : y1 - sy, x0 - sx : x1 - sx] = image[y0:y1, x0:x1]
    return out


def pose_from_params(params: np.ndarray) -> np.ndarray:
    """(N, 62) -> (N, 3) yaw, pitch, roll in degrees (3DDFA_V2 ``utils/pose.py``)."""
    P = params[:, :12].reshape(-1, 3, 4)[:, :, :3].astype(np.float64)
    r1 = P[:, 0] / np.linalg.norm(P[:, 0], axis=1, keepdims=True)
    r2 = P[:, 1] / np.linalg.norm(P[:, 1], axis=1, keepdims=True)
    r3 = np.cross(r1, r2)
    yaw = np.arcsin(np.clip(r3[:, 0], -1, 1))
    pitch = np.arctan2(r3[:, 1], r3[:, 2])
    roll = np.arctan2(r2[:, 0], r1[:, 0])
    return np.degrees(np.stack([yaw, pitch, roll], axis=1)).astype(np.float32)


class Teacher:
    """The 3DDFA_V2 MobileNet-0.5 teacher. ``Teacher(device="cpu")``; batched over faces."""

    name = "3ddfa_v2_mb05_120x120"

    def __init__(self, device: str = "cpu", asset_dir: Path | None = None, runtime: str = "torch",
                 threads: int | None = None) -> None:
        """``runtime="onnxruntime"`` runs the same network through ONNX Runtime (CPU; outputs within
        ~1e-5 of torch, about 8x faster on one core than torch's depthwise convolutions): the
        pseudo-label writer's choice."""
        root = Path(asset_dir) if asset_dir is not None else shared_asset("teacher_3ddfa_v2")
        self.device = torch.device(device)
        self.net = MobileNetV1()
        try:
            self.net.load_state_dict(load_file(str(root / "mb05_120x120.safetensors")), strict=True)
        except (OSError, RuntimeError) as err:
            raise RuntimeError(f"{root / 'mb05_120x120.safetensors'}: cannot load teacher weights: {err}") from err
        self.net.eval().to(self.device)
        self.session = None
        if runtime == "onnxruntime":
            self.session = self._ort_session(threads)
        elif runtime != "torch":
            raise ValueError(f"runtime must be torch or onnxruntime, got {runtime!r}")
        bfm = np.load(root / "bfm68.npz")
        self.param_mean = bfm["param_mean"].astype(np.float64)
        self.param_std = bfm["param_std"].astype(np.float64)
        self.u_base = bfm["u_base"].astype(np.float64)
        self.w_shp = bfm["w_shp_base"].astype(np.float64)
        self.w_exp = bfm["w_exp_base"].astype(np.float64)

    # -- network ---------------------------------------------------------------------------------
    def preprocess(self, image_rgb: np.ndarray | list[np.ndarray], rois: np.ndarray) -> torch.Tensor:
        """Crops -> (N, 3, 120, 120) float BGR scaled (p - 127.5) / 128. ``image_rgb`` is one image for
        all rois or a list with one image per roi."""
        images = image_rgb if isinstance(image_rgb, list) else [image_rgb] * len(rois)
        batch = []
        for image, roi in zip(images, rois):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}")
            crop = torch.from_numpy(np.ascontiguousarray(crop_zero_padded(image[:, :, ::-1], roi)))
            x = crop.permute(2, 0, 1)[None].float()
            # cv2.INTER_LINEAR: bilinear, half-pixel centres, no antialiasing, uint8 result.
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
            batch.append(x.round().clamp(0, 255))
        x = torch.cat(batch) if batch else torch.zeros((0, 3, INPUT_SIZE, INPUT_SIZE))
        return (x - 127.5) / 128.0

    @torch.inference_mode()
    def infer(self, x: torch.Tensor) -> np.ndarray:
        """(N, 3, 120, 120) -> (N, 62) de-normalised parameters."""
        if len(x) == 0:
            return np.zeros((0, 62))
        if self.session is not None:
            out = self.session.run(None, {"input": x.numpy()})[0].astype(np.float64)
        else:
            out = self.net(x.to(self.device)).double().cpu().numpy()
        return out * self.param_std + self.param_mean

    def landmarks_from_params(self, params: np.ndarray, rois: np.ndarray) -> np.ndarray:
        """(N, 62), (N, 4) -> (N, 68, 2) image pixels (README ``similar_transform``)."""
        P = params[:, :12].reshape(-1, 3, 4)
        S = self.u_base + params[:, 12:52] @ self.w_shp.T + params[:, 52:62] @ self.w_exp.T  # (N, 204)
        S = S.reshape(-1, 68, 3)
        pts = np.einsum("nij,nkj->nki", P[:, :, :3], S) + P[:, None, :, 3]  # (N, 68, 3)
        sx, sy, ex, ey = (rois[:, i : i + 1] for i in range(4))
        x = (pts[..., 0] - 1) * (ex - sx) / INPUT_SIZE + sx
        y = (INPUT_SIZE - pts[..., 1]) * (ey - sy) / INPUT_SIZE + sy
        return np.stack([x, y], axis=-1).astype(np.float32)

    def _predict_rois(self, image_rgb: np.ndarray | list[np.ndarray], rois: np.ndarray) -> TeacherResult:
        params = self.infer(self.preprocess(image_rgb, rois))
        return TeacherResult(
            landmarks=self.landmarks_from_params(params, rois),
            params=params.astype(np.float32),
            roi=rois.astype(np.float32),
            pose=pose_from_params(params),
        )

    # -- public API ------------------------------------------------------------------------------
    def predict(self, image_rgb: np.ndarray, boxes: np.ndarray) -> TeacherResult:
        """One pass from face boxes (N, 4) x1y1x2y2 (a detector's boxes)."""
        return self._predict_rois(image_rgb, roi_from_boxes(boxes))

    def predict_from_landmarks(self, image_rgb: np.ndarray, landmarks: np.ndarray) -> TeacherResult:
        """One pass re-cropped from previous landmarks (the 3DDFA_V2 second pass / tracking crop)."""
        return self._predict_rois(image_rgb, roi_from_landmarks(landmarks))

    def predict_refined(self, image_rgb: np.ndarray, boxes: np.ndarray) -> TeacherResult:
        """Box pass, then landmark pass; returns the second pass with a per-landmark ``confidence``."""
        first = self.predict(image_rgb, boxes)
        second = self.predict_from_landmarks(image_rgb, first.landmarks)
        second.confidence = agreement_confidence(first.landmarks, second.landmarks)
        return second

    def predict_refined_batch(self, images: list[np.ndarray], boxes: np.ndarray, mirror: bool = False) -> TeacherResult:
        """:meth:`predict_refined` for one face box (N, 4) in each of N images, in one network batch
        per pass (e.g. the 41 rig views of an identity).

        ``mirror=True`` also runs both passes on the horizontally flipped images, maps those landmarks
        back (x -> W - 1 - x, iBUG indices remapped) and averages: the teacher's left/right asymmetric
        errors cancel, which pseudo-labels want (issue 12). Confidence then also counts the disagreement
        between the two views."""
        images = list(images)
        if mirror:
            widths = np.array([im.shape[1] for im in images], dtype=np.float64)
            flipped = [np.ascontiguousarray(im[:, ::-1]) for im in images]
            b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            fboxes = np.stack([widths - 1 - b[:, 2], b[:, 1], widths - 1 - b[:, 0], b[:, 3]], axis=1)
            both = self.predict_refined_batch(images + flipped, np.concatenate([b, fboxes]))
            n = len(images)
            back = both.landmarks[n:][:, FLIP_PERMUTATION].copy()
            back[..., 0] = widths[:, None] - 1 - back[..., 0]
            lm = (both.landmarks[:n] + back) / 2
            conf = np.sqrt(both.confidence[:n] * both.confidence[n:][:, FLIP_PERMUTATION])
            conf = conf * agreement_confidence(both.landmarks[:n], back)
            return TeacherResult(lm.astype(np.float32), both.params[:n], both.roi[:n], both.pose[:n],
                                 conf.astype(np.float32))
        first = self._predict_rois(images, roi_from_boxes(boxes))
        second = self._predict_rois(images, roi_from_landmarks(first.landmarks))
        second.confidence = agreement_confidence(first.landmarks, second.landmarks)
        return second

    def _ort_session(self, threads: int | None):
        import tempfile

        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        with tempfile.TemporaryDirectory() as tmp:
            model = self.export_onnx(Path(tmp) / "teacher.onnx").read_bytes()
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])

    def export_onnx(self, path: str | Path) -> Path:
        """Export the network (normalised input -> normalised 62 outputs) with a dynamic batch axis."""
        path = Path(path)
        net = MobileNetV1()
        net.load_state_dict(self.net.state_dict())
        net.eval()
        dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated but exact for this CNN
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                net, (dummy,), str(path), input_names=["input"], output_names=["params"],
                dynamic_axes={"input": {0: "batch"}, "params": {0: "batch"}}, opset_version=17, dynamo=False,
            )
        return path


def agreement_confidence(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 68) in (0, 1]: exp(-|a - b| / (CONFIDENCE_SCALE * face size)), face size = sqrt(w h) of b."""
    size = np.sqrt(np.prod(b.max(axis=1) - b.min(axis=1), axis=1)).clip(min=1e-6)  # (N,)
    d = np.linalg.norm(a - b, axis=-1) / size[:, None]
    return np.exp(-d / CONFIDENCE_SCALE).astype(np.float32)
