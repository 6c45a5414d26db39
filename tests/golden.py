"""Golden landmarks of the default model on the sample clip: the fixture and the one command that writes it.

``run_golden(config)`` runs the default pipeline's stages (CenterFace 320 -> landmarks with tracking and
smoothing, the default bundle on ONNX Runtime) on ``samples/astronaut.mp4`` in fixed batches, single
threaded, so the result is deterministic, and returns per-frame arrays. Two configurations:

- ``every``: the detector on every frame (crops from the previous landmarks on detected frames);
- ``tracked``: the detector on every 10th frame, crops from landmarks between (the tracking path).

The tracking loop (crop from the previous landmarks, smoothing) amplifies sub-pixel differences: the same
code with every crop moved by 0.001 px ends up to 1-5 px away after 200 frames (weakly trained model, so
crops a hair apart give landmarks a bit apart, and the next crop follows them). So the fixture also keeps
every face's crop matrix, and tests/test_golden.py checks two things:

- replay: the stages crop exactly where the golden run cropped (``replay=``), everything else is the
  code under test (crop pixels, preprocessing, model call, un-crop, pose, tracking, smoothing): landmarks
  within 0.05 px of the fixture;
- closed loop: the stages choose their crops themselves: same detections, track ids and faces, and
  landmarks as close as that chaos allows (bounds in the test).

When the default bundle changes, regenerate the fixture (one command, from the repo root)::

    nice -n 19 .venv/bin/python tests/golden.py
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import plugins.landmarks.stage as stage_module  # noqa: E402
from engine.assets import sample_clip  # noqa: E402
from engine.context import PipelineContext  # noqa: E402
from plugins.detectors.centerface import CenterFaceDetector  # noqa: E402
from plugins.landmarks.stage import LandmarkStage  # noqa: E402
from plugins.sources.pyav_source import FileSource  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "golden_astronaut.npz"
CONFIGS = {"every": 1, "tracked": 10}  # name -> centerface.detect_every
BATCH = 8  # frames per stage call (the landmark stage's frame_batch)


def run_golden(config: str, max_frames: int | None = None, replay: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per frame (NaN where no face): landmarks_2d (F, 68, 2), landmarks_3d (F, 68, 3), euler, translation,
    mean confidence, track id; plus ``detected`` (F,) bool and ``crop_matrices`` (every face's image -> crop
    affine, in processing order). ``replay``: crop matrices to use instead of the stage's own, in order."""
    matrices: list[np.ndarray] = []
    own = stage_module.crop_matrix

    def crop_matrix(roi, size: int) -> np.ndarray:
        M = own(roi, size) if replay is None else np.array(replay[len(matrices)], np.float64)
        matrices.append(M)
        return M

    stage_module.crop_matrix = crop_matrix  # the stage makes every crop through this module global
    try:
        out = _run(config, max_frames)
    finally:
        stage_module.crop_matrix = own
    out["crop_matrices"] = np.array(matrices, np.float64).reshape(-1, 3, 3)
    return out


def _run(config: str, max_frames: int | None) -> dict[str, np.ndarray]:
    source = FileSource(FileSource.Options(path=str(sample_clip()), max_frames=max_frames), "golden")
    frames = list(source.frames(threading.Event()))
    detector = CenterFaceDetector(CenterFaceDetector.Options(input_size=320, detect_every=CONFIGS[config]))
    stage = LandmarkStage(LandmarkStage.Options(backend="onnxruntime", tracking=True, smoothing=True))
    detector.context = stage.context = PipelineContext()  # as one pipeline: lost tracks reach the detector
    detector.start()
    stage.start()
    try:
        for i in range(0, len(frames), BATCH):
            stage.process(detector.process(frames[i : i + BATCH]))
    finally:
        stage.close()
    n = len(frames)
    out = {
        "landmarks_2d": np.full((n, 68, 2), np.nan, np.float32),
        "landmarks_3d": np.full((n, 68, 3), np.nan, np.float32),
        "euler": np.full((n, 3), np.nan, np.float32),
        "translation": np.full((n, 3), np.nan, np.float32),
        "confidence": np.full(n, np.nan, np.float32),
        "track_id": np.full(n, -1, np.int32),
        "detected": np.array([bool(f.meta.get("detected", True)) for f in frames]),
    }
    for k, frame in enumerate(frames):
        if frame.faces:  # one face on the sample clip; keep the first
            face = frame.faces[0]
            out["landmarks_2d"][k] = face.landmarks_2d
            out["landmarks_3d"][k] = face.landmarks_3d
            out["euler"][k] = face.euler
            out["translation"][k] = face.translation
            out["confidence"][k] = float(np.mean(face.confidence))
            out["track_id"][k] = -1 if face.track_id is None else face.track_id
    return out


def write_fixture(path: Path = FIXTURE) -> None:
    # 3D landmarks of one configuration only: they follow from the same crops, and keep the file small
    arrays = {f"{name}/{key}": value for name in CONFIGS for key, value in run_golden(name).items()
              if not (name == "tracked" and key == "landmarks_3d")}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    write_fixture()
