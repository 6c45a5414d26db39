"""Face tracking and temporal smoothing: per-stream IoU tracker, One-Euro filters, the ``tracker`` stage."""

from plugins.trackers.iou_tracker import IoUTracker, Track, box_iou, landmark_similarity
from plugins.trackers.one_euro import (
    FaceSmoother,
    OneEuroFilter,
    OneEuroParams,
    RotationFilter,
    frame_timestamp,
    orthonormalize,
)

__all__ = [
    "FaceSmoother",
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
