"""benchmarks/bench_peers.py's parts run on a few frames: this engine (default and detect-every-frame),
the 3DDFA_V2-style loop and, where the .venv-peers interpreter exists, MediaPipe Face Mesh."""

import sys

import pytest

from engine.assets import REPO_ROOT, sample_clip, shared_dir

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import bench_peers  # noqa: E402

FRAMES = 12


@pytest.mark.parametrize("detect_every", [None, 1])
def test_engine_runs(detect_every):
    r = bench_peers.run_engine_clip(sample_clip(), FRAMES, detect_every, threads=None)
    assert r["frames"] == FRAMES and r["frames_with_face"] == FRAMES and r["fps"] > 0


def test_tddfa_style_tracks_the_face():
    if not (shared_dir() / "assets" / "teacher_3ddfa_v2").is_dir():
        pytest.skip(f"shared assets missing: no teacher weights under {shared_dir()}/assets")
    r = bench_peers.TddfaStyle().run(sample_clip(), FRAMES)
    assert r["frames"] == FRAMES and r["frames_with_face"] == FRAMES and r["fps"] > 0


def test_mediapipe_runs_in_its_venv():
    if not bench_peers.PEERS_PYTHON.is_file():
        pytest.skip(f"no {bench_peers.PEERS_PYTHON}: MediaPipe needs its own venv (python3 -m venv .venv-peers && "
                    ".venv-peers/bin/pip install mediapipe==0.10.14 av numpy)")
    r = bench_peers.run_mediapipe(sample_clip(), FRAMES, bench_peers.PEERS_PYTHON)
    assert r["frames"] == FRAMES and r["frames_with_face"] >= FRAMES - 2 and r["fps"] > 0
