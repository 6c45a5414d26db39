"""CelebV-HQ reader (github.com/CelebV-HQ/CelebV-HQ README: ``celebvhq_info.json`` + processed clips).

CelebV-HQ has no landmark ground truth: it is the paper's source of real multi-frame (MF) videos and
of qualitative results; here it yields clips with their attributes so evaluations can group e.g.
temporal stability or teacher agreement by emotion/appearance/action. ``celebvhq_info.json`` holds
``meta_info.appearance_mapping`` / ``action_mapping`` (attribute names) and ``clips.<clip_id>`` with
``ytb_id``, ``duration`` {start_sec, end_sec}, ``bbox`` {top, bottom, left, right} (normalised to the
*raw* YouTube frame), ``attributes`` {appearance: [0/1...], action: [0/1...], emotion: {sep_flag,
labels}}. Processed clips (already cropped to that box) are ``<clip_id>.mp4``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from engine.batch.dataset import CLIP_FOLDERS, INFO_FILE, SAFE_CLIP_ID, find_clip_folder
from training.evaluation.readers.base import EvalSample, Reader

log = logging.getLogger(__name__)

# The CelebV-HQ layout is defined once, with the batch job's reader (engine/batch/dataset.py).
INFO_NAME = INFO_FILE
CLIP_DIRS = CLIP_FOLDERS

LAYOUT = f"""\
<root>/
  {INFO_NAME}                 {{"meta_info": {{"appearance_mapping": [...], "action_mapping": [...]}},
                                 "clips": {{"<clip_id>": {{"ytb_id", "duration", "bbox", "attributes"}}}}}}
  <clips>/<clip_id>.mp4            processed clips; <clips> is clips_dir= or the first of
                                   {", ".join(CLIP_DIRS)} that holds most of the clips"""


class CelebVHQReader(Reader):
    name = "CelebV-HQ"
    layout = LAYOUT

    def __init__(self, root: str | Path, clips_dir: str | Path | None = None, attributes: bool = True):
        super().__init__()
        root = self._require(Path(root))
        self.info_path = self._require(root / INFO_NAME)
        with open(self.info_path) as fh:
            info = json.load(fh)
        try:
            self.appearance_names = list(info["meta_info"]["appearance_mapping"])
            self.action_names = list(info["meta_info"]["action_mapping"])
            # ids that are not plain file names (``../x``) are never opened (as in the batch job)
            self.clips: dict = {k: v for k, v in info["clips"].items() if SAFE_CLIP_ID.fullmatch(str(k))}
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{self.info_path}: missing key {exc} (expected meta_info.*_mapping and clips)")
        if clips_dir is not None:
            self.clips_dir = self._require(Path(clips_dir))
        else:
            self.clips_dir = find_clip_folder(root, sorted(self.clips))
            if not any(self.clips_dir.glob("*.mp4")):
                from training.evaluation.readers.base import DatasetLayoutError

                raise DatasetLayoutError(self.name, root / "clips" / "<clip_id>.mp4", self.layout,
                                         "no .mp4 clips found; pass clips_dir=")
        self.with_attributes = attributes
        self.missing_clips: list[str] = []

    def _attributes(self, clip: dict) -> dict[str, str]:
        att = clip.get("attributes") or {}
        emo = att.get("emotion") or {}
        labels = emo.get("labels")
        out = {"emotion": "multiple" if emo.get("sep_flag") else str(labels)}
        if self.with_attributes:
            for group, names in (("appearance", self.appearance_names), ("action", self.action_names)):
                values = att.get(group) or []
                out.update({f"{group}.{n}": str(bool(v)).lower() for n, v in zip(names, values)})
        return out

    def _samples(self) -> Iterator[EvalSample]:
        self.missing_clips = []
        for clip_id, clip in self.clips.items():
            path = self.clips_dir / f"{clip_id}.mp4"
            if not path.exists():
                self.missing_clips.append(clip_id)  # YouTube sources vanish: expected, counted
                continue
            yield EvalSample(
                key=clip_id,
                image=path,
                attributes=self._attributes(clip),
                extras={"ytb_id": clip.get("ytb_id"), "duration": clip.get("duration"),
                        "bbox_raw": clip.get("bbox"),
                        "emotion_labels": (clip.get("attributes") or {}).get("emotion", {}).get("labels")},
            )
        if self.missing_clips:
            log.info("%s: %d of %d clips in %s are not in %s", self.name, len(self.missing_clips),
                     len(self.clips), self.info_path.name, self.clips_dir)

    @staticmethod
    def frames(
        sample: EvalSample, every: int = 1, max_frames: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, HxWx3 uint8 RGB) of a clip, every ``every``-th frame (engine.video, upright)."""
        from engine.video import iter_frames

        yield from iter_frames(sample.image, every, max_frames=max_frames)
