"""One stream's face tracking, as a part stages compose: :class:`FaceTracker` with one :meth:`update`.

The ``tracker`` stage and the ``landmarks`` stage both keep one per stream. ``update(frame)`` runs after
a frame's faces are known (like supervision's ``tracker.update_with_detections``):

- on a detected frame it matches the faces to the tracks (:class:`IoUTracker`: box IoU and, when the
  faces carry landmarks, landmark similarity) and sets ``face.track_id``;
- on a frame the detector skipped (``meta["detected"] = False``) the faces were made from the tracks
  (:meth:`followed`, cropped from their last landmarks): a face whose mean landmark confidence is under
  ``lost_confidence`` ends its track, the others refresh theirs and get the track's box and keypoints.

It returns True when the stream should get a fresh detection: a track was lost, no face is left, or a
tracked face's confidence dropped below ``redetect_drop`` x its own running mean (a relative test:
models differ in how confident they are on a good face; the track is kept).
"""

from __future__ import annotations

import numpy as np

from engine.crop import roi_from_box, roi_from_landmarks
from engine.frame import Face, Frame
from engine.landmarks68 import NUM_LANDMARKS, keypoints_from_landmarks
from plugins.trackers.iou_tracker import IoUTracker, Track

RECENT_TRACK_FRAMES = 2  # a track's landmarks older than this are not used to crop a detected face
MIN_ROI_PX, MIN_ROI_OF_BOX = 8.0, 0.5  # landmark rois smaller than this are degenerate (use the box)
CONFIDENCE_MOMENTUM = 0.9  # running mean of a track's confidence over ~10 frames (redetect_drop)


def roi_from_track(track: Track) -> np.ndarray:
    """Crop roi from a track's last landmarks moved by its box velocity; its box when the landmarks
    are degenerate (collapsed to a point, e.g. an untrained model, or far smaller than the face)."""
    shift = (track.predicted_box[:2] + track.predicted_box[2:] - track.box[:2] - track.box[2:]) / 2
    roi = roi_from_landmarks(track.landmarks + shift)
    box_side = float(np.max(track.predicted_box[2:] - track.predicted_box[:2]))
    if roi[2] - roi[0] < max(MIN_ROI_PX, MIN_ROI_OF_BOX * box_side):
        return roi_from_box(track.predicted_box)
    return roi


def _landmarks_of(faces: list[Face]) -> np.ndarray | None:
    """(N, 68, 2) landmarks of faces that have them (NaN rows for the others), None when none has."""
    if not faces or all(f.landmarks_2d is None for f in faces):
        return None
    return np.stack([np.full((NUM_LANDMARKS, 2), np.nan) if f.landmarks_2d is None else f.landmarks_2d for f in faces])


class FaceTracker:
    """Track ids, follow-between-detections and re-detection wishes of one stream's faces."""

    def __init__(self, iou_threshold: float = 0.3, max_age: int = 30, use_landmarks: bool = True,
                 lost_confidence: float = 0.2, redetect_drop: float = 0.8):
        self.tracker = IoUTracker(iou_threshold, max_age, use_landmarks)
        self.iou_threshold, self.lost_confidence, self.redetect_drop = iou_threshold, lost_confidence, redetect_drop
        self.scores: dict[int, float] = {}  # track id -> last face score
        self.confidence: dict[int, float] = {}  # track id -> running mean landmark confidence
        self.last_index: int | None = None  # the stream's last finished frame
        self.live_ids: set[int] = set()  # live tracks after the last update

    # ------------------------------------------------------------ before the model (crops)

    def recent(self, frame_index: int) -> list[Track]:
        """Tracks with landmarks seen in the last frames: a detected face overlapping one crops from them."""
        return [t for t in self.tracker.predict(frame_index) if t.landmarks is not None and t.age <= RECENT_TRACK_FRAMES]

    def followed(self, frame_index: int) -> list[Track]:
        """Tracks to follow on a frame the detector skipped: only faces seen on the stream's previous
        frame (a track the last detection did not confirm keeps its id but is not followed blindly)."""
        gap = frame_index - self.last_index if self.last_index is not None else 1
        return [t for t in self.tracker.predict(frame_index) if t.landmarks is not None and t.age <= gap]

    def face_from(self, track: Track, keypoints: np.ndarray) -> Face:
        """The face a followed track stands for (box moved by its velocity; landmarks come from the model)."""
        return Face(box=track.predicted_box, score=self.scores.get(track.track_id, 0.0), keypoints=keypoints,
                    track_id=track.track_id)

    # ------------------------------------------------------------ after the model

    def update(self, frame: Frame, detected: bool | None = None) -> bool:
        """Track ``frame.faces`` (see the module docstring); True = ask the detector for a fresh detection.
        ``detected``: override ``frame.meta["detected"]`` (the ``tracker`` stage treats every frame as detected)."""
        detected = frame.meta.get("detected", True) if detected is None else detected
        tracker, redetect = self.tracker, False
        # each face's mean landmark confidence, once (np.add.reduce: ndarray.mean's wrapper costs more)
        mean_conf = {id(f): float(np.add.reduce(f.confidence, axis=None)) / f.confidence.size
                     for f in frame.faces if f.confidence is not None}
        if detected:
            faces = frame.faces
            ids = tracker.update(np.array([f.box for f in faces], np.float32).reshape(-1, 4),
                                 np.array([f.score for f in faces], np.float32), frame.index, _landmarks_of(faces))
            for face, tid in zip(faces, ids):
                face.track_id = int(tid)
                self.scores[int(tid)] = float(face.score)
            live = tracker.predict(frame.index)
        else:
            kept = []
            for face in frame.faces:
                if mean_conf[id(face)] < self.lost_confidence:
                    tracker.mark_lost(face.track_id)
                    redetect = True
                else:
                    tracker.refresh(face.track_id, frame.index, face.landmarks_2d)
                    kept.append(face)
            live = tracker.predict(frame.index)
            boxes = {t.track_id: t.box for t in live}
            for face in kept:
                face.box = boxes.get(face.track_id, face.box)
                face.keypoints = keypoints_from_landmarks(face.landmarks_2d)
            frame.faces = kept
            redetect = redetect or not kept
        redetect = self._watch_confidence(frame.faces, detected, mean_conf) or redetect
        self.live_ids = {t.track_id for t in live}
        self.scores = {k: v for k, v in self.scores.items() if k in self.live_ids}
        self.confidence = {k: v for k, v in self.confidence.items() if k in self.live_ids}
        self.last_index = frame.index
        return redetect

    def _watch_confidence(self, faces: list[Face], detected: bool, mean_conf: dict[int, float]) -> bool:
        drop, dipped = self.redetect_drop, False
        for face in faces:
            if face.track_id is None or face.confidence is None:
                continue
            c = mean_conf[id(face)]
            mean = self.confidence.get(face.track_id)
            if mean is not None and c < drop * mean and not detected:
                dipped = True
            self.confidence[face.track_id] = c if mean is None else CONFIDENCE_MOMENTUM * mean + (1 - CONFIDENCE_MOMENTUM) * c
        return dipped
