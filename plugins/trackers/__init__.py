"""Face tracking and temporal smoothing, as parts stages compose (:class:`FaceTracker`, :class:`FaceSmoother`,
one ``update`` each), the IoU tracker and One-Euro filters under them, and the ``tracker`` stage."""

from engine.geometry import orthonormalize  # re-exported (it lived here)
from plugins.trackers.face_tracker import FaceTracker
from plugins.trackers.iou_tracker import IoUTracker, Track, box_iou, landmark_similarity
from plugins.trackers.one_euro import (
    FaceSmoother,
    OneEuroFilter,
    OneEuroParams,
    RotationFilter,
    frame_timestamp,
)

__all__ = [
    "FaceSmoother",
    "FaceTracker",
    "IoUTracker",
    "OneEuroFilter",
    "OneEuroParams",
    "RotationFilter",
    "Track",
    "box_iou",
    "frame_timestamp",
    "landmark_similarity",
    "orthonormalize",
]
