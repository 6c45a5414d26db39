"""Overlay sink and drawing: real clips through the real runtime (decoder, CenterFace, tracker), the
video decoded back with PyAV, previews opened with Pillow, and drawn pixels checked where they must be."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from clips import make_clip
from PIL import Image

from engine.cli import main as cli_main
from engine.client import read_messages
from engine.config import parse_config
from engine.frame import Face, Frame
from engine.geometry import FRONTAL, rotation_from_euler
from engine.messages import FrameMessage
from engine.runtime import Pipeline
from plugins.sinks.draw import (
    AXIS_COLORS,
    OCCLUDED_COLOR,
    VISIBLE_COLOR,
    DrawStyle,
    annotate,
    axes_2d,
    axes_projected,
    face_axes,
    track_color,
)
from plugins.sinks.overlay_sink import OverlaySink, rate_from_pts


def _decode(path) -> tuple[int, int, int, float]:
    """(frames, width, height, fps) of a video file, by decoding every frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        n = sum(1 for _ in container.decode(stream))
        return n, stream.width, stream.height, float(stream.average_rate)


def test_overlay_video_and_previews_from_a_pipeline(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=45, size=(320, 240), fps=30)
    out = tmp_path / "overlay"
    config = parse_config(
        {
            "pipeline": {"log_level": "WARNING"},
            "sources": [{"type": "file", "id": "cam/0", "path": str(clip)}],
            "stages": [{"type": "centerface", "input_size": 320}, {"type": "tracker"}],
            "sinks": [
                {"type": "overlay", "directory": str(out), "preview_frames": 2, "preview_every": 20},
                {"type": "file_sink", "directory": str(tmp_path / "msgs"), "format": "msgpack"},
            ],
        }
    )
    summary = Pipeline(config).run(handle_signals=False)
    assert not summary.get("fatal")
    video = out / "cam_0.mp4"
    assert _decode(video) == (45, 320, 240, 30.0)  # every frame, the source's size and rate
    previews = sorted(out.glob("*.png"))
    assert [p.name for p in previews] == ["cam_0_000000.png", "cam_0_000020.png"]  # at most 2
    messages = {m.index: m for m in read_messages(tmp_path / "msgs" / "cam_0.msgpack") if isinstance(m, FrameMessage)}
    for path, index in zip(previews, (0, 20)):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == (320, 240)
            pixels = np.asarray(im.convert("RGB"))
        (face,) = messages[index].faces
        # the box outline in the track's colour (PNG is lossless): middle of the left edge
        x1, y1, _, y2 = face.box
        assert tuple(pixels[int((y1 + y2) / 2), int(round(x1))]) == track_color(face.track_id)
        # the nose keypoint (no landmarks in this pipeline) is drawn
        nx, ny = face.keypoints[2]
        assert tuple(pixels[int(round(ny)), int(round(nx))]) == (255, 220, 0)


def test_cli_preview_writes_pngs(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=30, size=(320, 240), fps=25)
    config = tmp_path / "p.toml"
    config.write_text(
        f'[pipeline]\nlog_level = "WARNING"\n[[sources]]\ntype = "file"\nid = "s"\npath = {json.dumps(str(clip))}\n'
        '[[stages]]\ntype = "centerface"\ninput_size = 256\n[[stages]]\ntype = "tracker"\n'
    )
    preview = tmp_path / "preview"
    assert cli_main(["run", str(config), "--preview", str(preview)]) == 0
    pngs = sorted(p.name for p in preview.iterdir())
    assert pngs == ["s_000000.png", "s_000025.png"]  # every 25th frame, no video in preview mode
    with Image.open(preview / pngs[1]) as im:
        assert im.size == (320, 240)


def test_sink_odd_size_unknown_pts_and_empty_frames(tmp_path):
    sink = OverlaySink(OverlaySink.Options(directory=tmp_path, fps=None))
    sink.start()
    rng = np.random.default_rng(0)
    for i in range(7):
        image = rng.integers(0, 255, (121, 161, 3), dtype=np.uint8)
        sink.write(Frame("odd", i, None, 0.0, image))  # no pts, no faces
    sink.write(Frame("one", 0, 0.0, 0.0, np.zeros((64, 64, 3), np.uint8)))  # a one-frame stream
    sink.end_of_stream("odd")
    sink.close()  # flushes "one", which never got end_of_stream
    assert _decode(tmp_path / "odd.mp4") == (7, 160, 120, 25.0)  # even size for yuv420p, default rate
    assert _decode(tmp_path / "one.mp4")[:3] == (1, 64, 64)
    assert rate_from_pts(0.0, 1001 / 30000) == pytest.approx(30000 / 1001)
    assert rate_from_pts(None, 0.04) is None


def _face(rotation: np.ndarray, visibility: np.ndarray | None = None) -> Face:
    """A face box (100, 100)-(260, 260) with 68 landmarks on a ring and the nose tip (30) in the middle."""
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    landmarks = np.stack([180 + 70 * np.cos(angles), 180 + 70 * np.sin(angles)], axis=1)
    landmarks[30] = (180, 180)
    return Face(
        box=np.array([100, 100, 260, 260], np.float32), score=0.9, keypoints=landmarks[[36, 45, 30, 48, 54]],
        track_id=3, landmarks_2d=landmarks.astype(np.float32), rotation=rotation, visibility=visibility,
    )


def test_draw_landmarks_by_visibility_and_pose_axes(tmp_path):
    rotation = rotation_from_euler(35.0, 20.0, 10.0)
    visibility = np.arange(68) % 2 == 0
    visibility[30] = True
    face = _face(rotation, visibility)
    style = DrawStyle(point_radius=3, axis_scale=0.5)
    image = annotate(np.full((360, 360, 3), 90, np.uint8), [face], style)
    Image.fromarray(image).save(tmp_path / "drawn.png")  # for a look when debugging
    lm = face.landmarks_2d
    for i in (0, 1, 2, 3, 17, 20):
        x, y = np.round(lm[i]).astype(int)
        assert tuple(image[y, x]) == (VISIBLE_COLOR if visibility[i] else OCCLUDED_COLOR), i
    origin, ends = face_axes(face, style)
    np.testing.assert_allclose(origin, lm[30])
    for name, end in ends.items():
        x, y = np.round(origin + 0.8 * (end - origin)).astype(int)
        window = image[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3)  # Pillow's rasterisation is within 1 px
        assert (window == AXIS_COLORS[name]).all(axis=1).any(), name
    x1, y1, x2, y2 = face.box.astype(int)
    assert tuple(image[(y1 + y2) // 2, x2]) == track_color(3)


def test_axes_conventions():
    # frontal face: "right" (head +x) to the image's right, "up" to the image's top, forward at the camera
    ends = axes_2d(FRONTAL, (100.0, 100.0), 50.0)
    np.testing.assert_allclose(ends["right"], (150, 100))
    np.testing.assert_allclose(ends["up"], (100, 50))
    np.testing.assert_allclose(ends["forward"], (100, 100))
    # subject turns to their left (yaw > 0): the nose (forward axis) moves to the image's right
    assert axes_2d(rotation_from_euler(30, 0, 0), (0.0, 0.0), 1.0)["forward"][0] > 0
    # a far face: the perspective projection through K agrees with the intrinsics-free drawing
    K = np.array([[800.0, 0, 320], [0, 800.0, 240], [0, 0, 1]])
    r = rotation_from_euler(25.0, -15.0, 5.0)
    t = np.array([0.0, 0.0, 2000.0])
    origin, ends_3d = axes_projected(r, t, K, 10.0)
    np.testing.assert_allclose(origin, (320, 240))
    ends_2d = axes_2d(r, origin, 10.0 * 800.0 / 2000.0)
    for name in ends_3d:
        np.testing.assert_allclose(ends_3d[name], ends_2d[name], atol=0.05)
    assert axes_projected(r, np.array([0.0, 0.0, -5.0]), K, 10.0) is None  # behind the camera
