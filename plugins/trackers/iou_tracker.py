"""Per-stream face tracking by IoU association (Hungarian assignment), with optional landmarks.

One :class:`IoUTracker` per stream. Each frame with detections calls :meth:`IoUTracker.update`, which
matches the detections to the live tracks and returns one track id per detection: matched faces keep
their track's id, unmatched ones start a new track (ids are unique and never reused within a tracker).
A track survives ``max_age`` frames without a match, so a face missed for a few frames keeps its id;
after that a re-appearing face gets a new id.

The match score of a (track, detection) pair is the IoU of the detection box with the track's box
moved by its constant-velocity estimate (so two faces crossing do not swap ids), and, when both sides
have 68 landmarks, the larger of that and a landmark similarity (IoU of the landmark bounding boxes,
scaled down by the mean landmark distance in face sizes). Pairs below ``iou_threshold`` never match.

On frames without detection, the landmark stage can ask :meth:`IoUTracker.predict` for the live tracks
(last box, last landmarks, age) to crop from landmarks, and report what it found with
:meth:`IoUTracker.refresh` (keeps the track alive) or :meth:`IoUTracker.mark_lost` (ends it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.boxes import box_iou, landmark_box  # noqa: F401  (re-exported: plugins.trackers.box_iou)
from scipy.optimize import linear_sum_assignment

VELOCITY_MOMENTUM = 0.5  # weight of the previous velocity estimate (smooths detector box jitter)


@dataclass
class Track:
    """A live track as :meth:`IoUTracker.predict` reports it (copies; editing them changes nothing)."""

    track_id: int
    box: np.ndarray  # (4,) float32 x1y1x2y2: last matched detector box (or refreshed estimate)
    landmarks: np.ndarray | None  # (68, 2) last landmarks in image pixels, None if never given
    age: int  # frames since the last match or refresh (0 = updated on this frame)
    hits: int  # frames matched or refreshed so far
    predicted_box: np.ndarray  # (4,) box moved by the velocity estimate to the queried frame


@dataclass
class _State:
    track_id: int
    box: np.ndarray  # float64 (4,)
    last_frame: int
    landmarks: np.ndarray | None = None
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # box change per frame
    hits: int = 1

    def box_at(self, frame_index: int) -> np.ndarray:
        return self.box + self.velocity * max(frame_index - self.last_frame, 0)

    def landmarks_at(self, frame_index: int) -> np.ndarray | None:
        if self.landmarks is None:
            return None
        shift = (self.velocity[:2] + self.velocity[2:]) / 2 * max(frame_index - self.last_frame, 0)
        return self.landmarks + shift

    def move_to(self, box: np.ndarray, frame_index: int, landmarks: np.ndarray | None) -> None:
        gap = frame_index - self.last_frame
        if gap > 0:
            step = (box - self.box) / gap
            self.velocity = VELOCITY_MOMENTUM * self.velocity + (1 - VELOCITY_MOMENTUM) * step
        self.box = box
        self.last_frame = frame_index
        if landmarks is not None:
            self.landmarks = landmarks
        self.hits += 1


def landmark_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Similarity in [0, 1] of two (68, 2) landmark sets: IoU of their bounding boxes times
    ``max(0, 1 - d)``, d = mean point distance in face sizes (so a mirrored or shifted face inside
    the same box scores lower than the same face)."""
    box_a, box_b = landmark_box(a), landmark_box(b)
    iou = float(box_iou(box_a, box_b)[0, 0])
    size = max(float(np.max(box_a[2:] - box_a[:2])), float(np.max(box_b[2:] - box_b[:2])), 1e-6)
    dist = float(np.mean(np.linalg.norm(np.asarray(a, np.float64) - b, axis=-1))) / size
    return iou * max(0.0, 1.0 - dist)


def landmark_similarity_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`landmark_similarity` of every pair: (N, K, 2) x (M, K, 2) -> (N, M), vectorised."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    box_a, box_b = landmark_box(a), landmark_box(b)
    iou = box_iou(box_a, box_b)
    side_a = np.max(box_a[:, 2:] - box_a[:, :2], axis=-1)
    side_b = np.max(box_b[:, 2:] - box_b[:, :2], axis=-1)
    size = np.maximum(np.maximum(side_a[:, None], side_b[None, :]), 1e-6)
    dist = np.linalg.norm(a[:, None] - b[None, :], axis=-1).mean(axis=-1) / size
    return iou * np.maximum(0.0, 1.0 - dist)


class IoUTracker:
    """Assigns stable track ids to the faces of ONE stream (see the module docstring).

    Args:
        iou_threshold: minimum match score (IoU or landmark similarity) for a detection to continue a track.
        max_age: frames a track may go without a match (it can still match on the frame after them);
            a face re-appearing later gets a new id.
        use_landmarks: use landmark similarity when both the track and the detection have landmarks.
        first_id: the first id handed out (ids then count up).
    """

    def __init__(self, iou_threshold: float = 0.3, max_age: int = 30, use_landmarks: bool = True, first_id: int = 1):
        if not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
        if max_age < 0:
            raise ValueError(f"max_age must be >= 0, got {max_age}")
        self.iou_threshold = iou_threshold
        self.max_age = max_age
        self.use_landmarks = use_landmarks
        self._next_id = first_id
        self._tracks: dict[int, _State] = {}
        self._frame: int | None = None

    def __len__(self) -> int:
        return len(self._tracks)

    # ---------------------------------------------------------------- queries

    def predict(self, frame_index: int) -> list[Track]:
        """The tracks that can still match at ``frame_index`` (expired ones are dropped first), by id.
        Call it with the current frame's index before :meth:`update`/:meth:`refresh` on that frame."""
        self._expire(frame_index)
        return [
            Track(
                track_id=s.track_id,
                box=s.box.astype(np.float32),
                landmarks=None if s.landmarks is None else s.landmarks.astype(np.float32),
                age=frame_index - s.last_frame,
                hits=s.hits,
                predicted_box=s.box_at(frame_index).astype(np.float32),
            )
            for s in sorted(self._tracks.values(), key=lambda s: s.track_id)
        ]

    # ---------------------------------------------------------------- updates

    def update(
        self,
        boxes: np.ndarray,
        scores: np.ndarray | None,
        frame_index: int,
        landmarks: np.ndarray | None = None,
    ) -> np.ndarray:
        """Associate this frame's detections with the tracks; returns (N,) int64 track ids.

        ``boxes`` (N, 4) x1y1x2y2 image pixels; ``scores`` (N,) (higher-scoring detections win ties;
        may be None); ``landmarks`` optional (N, 68, 2) image pixels, rows of NaN for faces without.
        ``frame_index`` must not decrease between calls.
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        n = len(boxes)
        if landmarks is not None:
            landmarks = np.asarray(landmarks, np.float64)
            if landmarks.shape[0] != n or landmarks.ndim != 3 or landmarks.shape[2] != 2:
                raise ValueError(f"landmarks must be (N={n}, K, 2), got {landmarks.shape}")
        if scores is not None and len(scores) != n:
            raise ValueError(f"{len(scores)} scores for {n} boxes")
        self._expire(frame_index)
        ids = np.full(n, -1, dtype=np.int64)
        states = list(self._tracks.values())
        if n and states:
            sim = self._similarity(states, boxes, landmarks, frame_index)
            # tiny score bonus: among equal overlaps the more confident detection continues the track
            bonus = 0.0 if scores is None else 1e-6 * np.asarray(scores, np.float64)[None, :]
            rows, cols = linear_sum_assignment(-(sim + bonus))
            for r, c in zip(rows, cols):
                if sim[r, c] >= self.iou_threshold and sim[r, c] > 0:
                    state = states[r]
                    state.move_to(boxes[c].copy(), frame_index, self._row(landmarks, c))
                    ids[c] = state.track_id
        for c in np.flatnonzero(ids < 0):
            ids[c] = self._new_track(boxes[c].copy(), frame_index, self._row(landmarks, c))
        self._frame = frame_index
        return ids

    def refresh(self, track_id: int, frame_index: int, landmarks: np.ndarray, box: np.ndarray | None = None) -> None:
        """Keep a track alive from a landmark estimate on a frame without (matching) detection.

        Without ``box``, the track's detector-style box is moved and scaled like the landmarks'
        bounding box moved since the last update, so later IoU matches against detector boxes
        still compare like with like.
        """
        state = self._tracks.get(track_id)
        if state is None:
            raise KeyError(f"track {track_id} is not alive (expired or marked lost)")
        landmarks = np.asarray(landmarks, np.float64)
        if box is None:
            if state.landmarks is None:
                raise ValueError(f"track {track_id} has no previous landmarks: pass box=")
            box = _follow(state.box, landmark_box(state.landmarks), landmark_box(landmarks))
        state.move_to(np.asarray(box, np.float64).copy(), frame_index, landmarks)

    def mark_lost(self, track_id: int) -> None:
        """End a track now (e.g. the landmark model found no face in its crop). Unknown ids are ignored."""
        self._tracks.pop(track_id, None)

    def reset(self) -> None:
        """Forget every track (ids keep counting up, so they stay unique)."""
        self._tracks.clear()
        self._frame = None

    # ---------------------------------------------------------------- internals

    def _expire(self, frame_index: int) -> None:
        if self._frame is not None and frame_index < self._frame:
            raise ValueError(f"frame_index went backwards: {frame_index} after {self._frame}")
        # a track may miss max_age frames and still match on the next one (SORT's rule)
        for tid in [t for t, s in self._tracks.items() if frame_index - s.last_frame > self.max_age + 1]:
            del self._tracks[tid]

    def _similarity(
        self, states: list[_State], boxes: np.ndarray, landmarks: np.ndarray | None, frame_index: int
    ) -> np.ndarray:
        predicted = np.stack([s.box_at(frame_index) for s in states])
        sim = box_iou(predicted, boxes)
        if self.use_landmarks and landmarks is not None:
            rows = [r for r, s in enumerate(states)
                    if s.landmarks is not None and s.landmarks.shape == landmarks.shape[1:]]
            cols = np.flatnonzero(np.isfinite(landmarks).all(axis=(1, 2)))
            if rows and cols.size:  # one vectorised pass over the (track, detection) pairs
                track_lm = np.stack([states[r].landmarks_at(frame_index) for r in rows])
                lm_sim = landmark_similarity_matrix(track_lm, landmarks[cols])
                sub = sim[np.ix_(rows, cols)]
                sim[np.ix_(rows, cols)] = np.maximum(sub, lm_sim)
        return sim

    @staticmethod
    def _row(landmarks: np.ndarray | None, i: int) -> np.ndarray | None:
        if landmarks is None or not np.isfinite(landmarks[i]).all():
            return None
        return landmarks[i].copy()

    def _new_track(self, box: np.ndarray, frame_index: int, landmarks: np.ndarray | None) -> int:
        tid = self._next_id
        self._next_id += 1
        self._tracks[tid] = _State(track_id=tid, box=box, last_frame=frame_index, landmarks=landmarks)
        return tid


def _follow(box: np.ndarray, old_ref: np.ndarray, new_ref: np.ndarray) -> np.ndarray:
    """Move and scale ``box`` the way the reference box ``old_ref`` became ``new_ref``."""
    old_c, new_c = (old_ref[:2] + old_ref[2:]) / 2, (new_ref[:2] + new_ref[2:]) / 2
    old_s = max(float(np.max(old_ref[2:] - old_ref[:2])), 1e-6)
    scale = float(np.max(new_ref[2:] - new_ref[:2])) / old_s
    centre = (box[:2] + box[2:]) / 2
    half = (box[2:] - box[:2]) / 2 * scale
    moved = new_c + (centre - old_c) * scale
    return np.concatenate([moved - half, moved + half])
