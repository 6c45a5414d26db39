"""The README's run command: ``python -m engine run pipeline.toml`` on the bundled sample clip with the
committed default bundle emits landmarks and pose for every frame, over ZeroMQ and into the file sink."""

import socket
import subprocess
import sys
import threading

import numpy as np

from engine.assets import REPO_ROOT, default_bundle
from engine.bundle import load_bundle
from engine.client import Subscriber, read_messages
from engine.messages import EndOfStream, FrameMessage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_default_bundle_loads():
    bundle = load_bundle(default_bundle())
    assert bundle.input_size > 0 and bundle.normals.shape == (68, 3)


def test_readme_run_command_emits_landmarks_and_pose(tmp_path):
    port = free_port()
    # the committed pipeline.toml, with its outputs moved to a temp folder and a free port
    text = (REPO_ROOT / "pipeline.toml").read_text()
    assert 'directory = "out"' in text and "tcp://127.0.0.1:5555" in text
    config = tmp_path / "pipeline.toml"
    config.write_text(
        text.replace('directory = "out"', f'directory = "{tmp_path / "out"}"')
        .replace("tcp://127.0.0.1:5555", f"tcp://127.0.0.1:{port}")
        .replace('path = "samples/astronaut.mp4"', f'path = "{REPO_ROOT / "samples" / "astronaut.mp4"}"')
    )
    received: list[FrameMessage] = []

    def subscribe() -> None:
        with Subscriber(f"tcp://127.0.0.1:{port}", timeout_s=60.0, stop_after_eos=1) as sub:
            received.extend(m for m in sub if isinstance(m, FrameMessage))

    listener = threading.Thread(target=subscribe, daemon=True)
    listener.start()
    run = subprocess.run(
        [sys.executable, "-m", "engine", "run", str(config)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    listener.join(timeout=60)

    frames = [m for m in read_messages(tmp_path / "out" / "sample.msgpack") if isinstance(m, FrameMessage)]
    assert isinstance(list(read_messages(tmp_path / "out" / "sample.msgpack"))[-1], EndOfStream)
    assert len(frames) == 225  # every frame of the sample clip
    with_face = [f for f in frames if f.faces]
    assert len(with_face) >= 220
    track_ids = {face.track_id for f in with_face for face in f.faces}
    assert len(track_ids) == 1, track_ids  # one face, one track through the clip
    for f in with_face:
        face = f.faces[0]
        assert face.landmarks_2d.shape == (68, 2) and face.landmarks_3d.shape == (68, 3)
        assert face.rotation.shape == (3, 3) and np.allclose(face.rotation @ face.rotation.T, np.eye(3), atol=1e-4)
        assert face.confidence.shape == (68,) and np.all((face.confidence >= 0) & (face.confidence <= 1))
        assert face.visibility.dtype == bool and np.all(np.isfinite(face.euler))
        # the landmarks sit on the detected face: their centre inside the box, their extent face-sized
        x1, y1, x2, y2 = face.box
        cx, cy = face.landmarks_2d.mean(axis=0)
        assert x1 <= cx <= x2 and y1 <= cy <= y2
        extent = np.ptp(face.landmarks_2d, axis=0)
        assert 0.4 * (x2 - x1) < extent[0] < 1.6 * (x2 - x1)
    # the astronaut looks at the camera: small yaw on most frames
    yaws = np.array([f.faces[0].euler[0] for f in with_face])
    assert np.median(np.abs(yaws)) < 25, np.median(np.abs(yaws))
    # the subscriber saw the same frames
    assert len(received) >= 0.9 * len(frames)
    assert "frames" in run.stdout.lower()
