"""Rotation metadata (phone video): the stream's display matrix turns frames upright, as FFmpeg's
autorotate does, for all 8 right-angle orientations; a sideways-stored portrait clip gives the same
frames and faces as the upright one, and nothing is lost or counted as an error."""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from clips import _astronaut, camera_motion_frame

from plugins.detectors.centerface import CenterFace
from plugins.sources.pyav_source import FileSource, upright


def write_clip(path: Path, images: list[np.ndarray], degrees: int = 0, hflip: bool = False) -> Path:
    """An H.264 clip of ``images`` whose display matrix says: rotate ``degrees`` counter-clockwise, then
    mirror (PyAV's ``set_display_rotation``: what ``-metadata:s:v rotate=N`` / a phone writes)."""
    h, w = images[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv444p"  # 4:4:4: colours survive exactly enough
        stream.options = {"crf": "10"}
        if degrees or hflip:
            stream.set_display_rotation(degrees, hflip=hflip)
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def decode(path: Path) -> tuple[list[np.ndarray], FileSource]:
    source = FileSource(FileSource.Options(path=str(path)), "cam")
    return [f.image for f in source.frames(threading.Event())], source


def marker_image() -> np.ndarray:
    """64x32, asymmetric in both axes: white band on the left, green on top, blue at the bottom."""
    img = np.zeros((32, 64, 3), np.uint8)
    img[:, :16] = 255
    img[:8, :, 1] = 255
    img[-8:, :, 2] = 160
    return img


@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
def test_every_right_angle_orientation_is_displayed_upright(tmp_path, degrees, hflip):
    img = marker_image()
    frames, source = decode(write_clip(tmp_path / "r.mp4", [img] * 3, degrees, hflip))
    expect = np.rot90(img, degrees // 90)  # counter-clockwise, as the display matrix says
    expect = expect[:, ::-1] if hflip else expect
    assert len(frames) == 3 and not source.errors and not source.counters
    for frame in frames:
        assert frame.shape == expect.shape and frame.flags.c_contiguous
        assert np.abs(frame.astype(int) - expect).mean() < 4


def test_phone_portrait_clip_stored_sideways_gives_upright_frames_and_faces(tmp_path):
    # a phone films portrait, stores the sensor's landscape pixels and a "rotate 90 clockwise" tag
    src = _astronaut()
    portrait = [camera_motion_frame(src, i, 8, (240, 320)) for i in range(8)]
    stored = [np.ascontiguousarray(np.rot90(p, 1)) for p in portrait]  # 320x240, sideways
    upright_clip = write_clip(tmp_path / "upright.mp4", portrait)
    phone_clip = write_clip(tmp_path / "phone.mp4", stored, degrees=-90)  # = rotate tag 90 (clockwise)
    with av.open(str(phone_clip)) as c:
        assert c.streams.video[0].width == 320 and next(c.decode(video=0)).rotation == -90  # really stored sideways
    ref, _ = decode(upright_clip)
    got, source = decode(phone_clip)
    assert len(got) == len(ref) == 8 and not source.errors and not source.counters  # nothing lost or counted
    assert got[0].shape == (320, 240, 3)
    assert max(np.abs(a.astype(int) - b).mean() for a, b in zip(got, ref)) < 3
    detector = CenterFace(input_size=320)
    faces_upright = detector.detect_batch(got)
    faces_sideways = detector.detect_batch(stored)  # what the engine saw before: the face lying on its side
    assert all(len(d) == 1 for d in faces_upright)
    for d, r in zip(faces_upright, detector.detect_batch(ref)):
        np.testing.assert_allclose(d.boxes, r.boxes, atol=4)
    assert sum(len(d) for d in faces_sideways) < len(got)


def test_odd_angles_are_left_as_decoded_and_logged_once(caplog):
    img = marker_image()
    m = np.zeros(9, np.int32)
    m[[0, 1, 3, 4]] = (np.array([1, -1, 1, 1]) * 46341).astype(np.int32)  # 45 degrees, 16.16 fixed point
    m[8] = 1 << 30
    for _ in range(3):
        assert upright(img, m, "odd") is img
    assert caplog.text.count("not a multiple of 90 degrees") == 1
