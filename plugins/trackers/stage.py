"""``tracker`` stage: gives every detected face a ``track_id`` that is stable over a stream's frames.

For pipelines without the landmark stage (which runs its own tracker and smoother per stream): put it
after ``centerface``. One :class:`~plugins.trackers.face_tracker.FaceTracker` per stream id (the part the
landmark stage composes too); a stream's tracker is dropped after the
stream's last frame (``meta["end_of_stream"]``, or :meth:`end_of_stream` for a stream that stopped or was
removed) so long runs over many files and streams do not accumulate state.
"""

from __future__ import annotations

from pydantic import Field

from engine.frame import Frame
from engine.plugin import PluginOptions, Stage
from plugins.trackers.face_tracker import FaceTracker


class TrackerStage(Stage):
    """Face tracking (IoU + Hungarian): sets Face.track_id, unique and stable per stream."""

    name = "tracker"

    class Options(PluginOptions):
        iou_threshold: float = Field(0.3, ge=0, le=1, description="Minimum box IoU to continue a track.")
        max_age: int = Field(
            30, ge=0, description="Frames a track survives unmatched; a face back later gets a new id."
        )
        use_landmarks: bool = Field(
            True, description="Also match by 68-landmark similarity when faces carry landmarks_2d."
        )

    options: Options

    def __init__(self, options: Options):
        super().__init__(options)
        self.trackers: dict[str, FaceTracker] = {}

    def tracker_for(self, stream_id: str) -> FaceTracker:
        tracker = self.trackers.get(stream_id)
        if tracker is None:
            o = self.options
            tracker = self.trackers[stream_id] = FaceTracker(o.iou_threshold, o.max_age, o.use_landmarks)
        return tracker

    def process(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            # every frame's faces are detections here (frames the detector skipped have none)
            self.tracker_for(frame.stream_id).update(frame, detected=True)
            if frame.meta.get("end_of_stream"):
                del self.trackers[frame.stream_id]
        return frames

    def end_of_stream(self, stream_id: str) -> None:
        self.trackers.pop(stream_id, None)
