"""Face.extra: a plugin's per-face output rides the wire (schema 1.4) without engine changes."""

import numpy as np

from engine.frame import Face, Frame
from engine.messages import SCHEMA_VERSION, FrameMessage, decode, decode_obj, encode, to_json_obj


def test_extra_round_trips_msgpack_and_json():
    face = Face(box=np.zeros(4, np.float32), score=0.9, keypoints=np.zeros((5, 2), np.float32))
    face.extra = {"gaze": np.array([0.1, -0.2], np.float32), "blink": np.array([True, False]),
                  "emotion": np.arange(7, dtype=np.int16)}
    frame = Frame("cam", 3, 0.1, 0.0, np.zeros((4, 4, 3), np.uint8), faces=[face])
    msg = decode(encode(frame))
    assert isinstance(msg, FrameMessage) and msg.version == SCHEMA_VERSION == (1, 4)
    got = msg.faces[0].extra
    assert set(got) == set(face.extra)
    for name, value in face.extra.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name], value)
    as_json = decode_obj(to_json_obj(frame), arrays_as_lists=True).faces[0].extra
    np.testing.assert_allclose(as_json["gaze"], face.extra["gaze"], rtol=1e-6)
    plain = Face(box=np.zeros(4, np.float32), score=0.9, keypoints=np.zeros((5, 2), np.float32))
    assert "extra" not in to_json_obj(Frame("cam", 0, None, 0.0, frame.image, faces=[plain]))["faces"][0]
    assert decode(encode(Frame("cam", 0, None, 0.0, frame.image, faces=[plain]))).faces[0].extra == {}
