"""Multi-view (MV) samples: rig renders -> teacher -> masked lifting -> labelled training renders.

method.md section 4: render an identity from the 41-view rig, detect 2D landmarks with the teacher,
lift them to 3D with occlusion masks, then label renders from the augmented camera space with the
lifted points posed by each camera (the generator's exact landmarks are kept only for checks).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from engine.boxes import landmark_box

from training.cameras import AugmentedCameraSpace, rig_camera, rig_views
from training.generators.base import Generator, Identity
from training.lifting import LiftingConfig, LiftResult, lift_cameras
from training.masks import camera_visibility, landmark_visibility
from training.teacher.base import LandmarkTeacher

log = logging.getLogger(__name__)


@dataclass
class LiftedIdentity:
    identity: Identity
    lift: LiftResult
    detections: np.ndarray  # (V, 68, 2) teacher landmarks per rig view
    truth: np.ndarray  # (68, 3) generator's exact landmarks (checks only)

    @property
    def ok(self) -> bool:
        return self.lift.ok

    @property
    def reason(self) -> str | None:
        return self.lift.reason


class MVLabeler:
    def __init__(
        self,
        generator: Generator,
        teacher: LandmarkTeacher,
        detector=None,
        rig_size: int = 256,
        image_size: int = 256,
        lifting: LiftingConfig | None = None,
        camera_space: AugmentedCameraSpace | None = None,
        mirror: bool = False,
        rig_detector=None,
    ) -> None:
        self.generator = generator
        self.teacher = teacher
        self.detector = detector
        self.image_size = image_size
        self.mirror = mirror  # teacher mirror averaging (flip, remap, average)
        self.rig_detector = rig_detector or detector  # may run at the (smaller) rig render size
        self.lifting = lifting or LiftingConfig()
        self.camera_space = camera_space or AugmentedCameraSpace()
        self.rig = [rig_camera(az, el, size=rig_size) for az, el in rig_views()]
        self.rig_visible = camera_visibility(self.rig)  # (41, 68)
        self.detector_misses = 0

    def face_boxes(self, images: list[np.ndarray], fallbacks: list[np.ndarray], detector=None) -> np.ndarray:
        """(N, 4): the detector's most confident box on each image (one batched detector run), else
        the box of that image's ``fallbacks`` landmarks (counted in ``self.detector_misses``)."""
        detector = detector or self.detector
        dets = detector.detect_batch(images) if detector is not None else [None] * len(images)
        boxes = []
        for det, fallback in zip(dets, fallbacks):
            if det is not None and len(det.boxes):
                boxes.append(np.asarray(det.boxes[int(np.argmax(det.scores))], dtype=np.float32))
            else:
                self.detector_misses += self.detector is not None
                boxes.append(landmark_box(fallback).astype(np.float32))
        return np.stack(boxes)

    def lift_identity(self, seed: int) -> LiftedIdentity:
        identity = self.generator.identity(seed)
        renders = [self.generator.render(identity, cam) for cam in self.rig]
        images = [r.image for r in renders]
        boxes = self.face_boxes(images, [r.landmarks_2d for r in renders], self.rig_detector)
        detections = self.teacher.predict_refined_batch(images, boxes, mirror=self.mirror).landmarks
        result = lift_cameras(self.rig, detections, self.rig_visible, self.lifting)
        if not result.ok:
            log.info("identity %d rejected: %s", seed, result.reason)
        return LiftedIdentity(identity, result, detections, np.asarray(renders[0].landmarks_head, dtype=np.float32))

    def from_points(self, seed: int, points: np.ndarray) -> LiftedIdentity:
        """An identity lifted elsewhere (``python -m training.lift``): its labels, no rig renders."""
        from training.lifting import LiftResult

        identity = self.generator.identity(seed)
        nan = np.full(68, np.nan)
        lift = LiftResult(np.asarray(points, np.float64), np.zeros((0, 68)), nan, np.zeros(68, int), True, None)
        v_head, _ = self.generator.geometry(identity)
        truth = np.asarray(v_head[self.generator.model.landmarks68], dtype=np.float32)
        return LiftedIdentity(identity, lift, np.zeros((0, 68, 2), np.float32), truth)

    def training_renders(self, lifted: LiftedIdentity, count: int, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, dict]]:
        """``count`` renders from the augmented camera space with their on-disk arrays (DESIGN.md)."""
        points = lifted.lift.points.astype(np.float64)
        for _ in range(count):
            cam = self.camera_space.sample(rng, self.image_size)
            render = self.generator.render(lifted.identity, cam)
            l2d = cam.project(points)
            box = self.face_boxes([render.image], [l2d])[0]
            yield render.image, {
                "kind": np.int8(0),
                "identity": np.int64(lifted.identity.seed),
                "box": box,
                "landmarks_2d": l2d,
                "visible": landmark_visibility(cam.R),
                "confidence": np.ones(68, dtype=np.float32),
                "landmarks_3d": points,
                "landmarks_3d_true": render.landmarks_head,
                "R": cam.R,
                "t": cam.t,
                "K": cam.K,
            }
