"""Message schema: round trip with every field, raw little-endian arrays, version rules, JSON form."""

import json

import msgpack
import numpy as np
import pytest

from engine.frame import Face, Frame
from engine.messages import (
    SCHEMA_VERSION,
    EndOfStream,
    FrameMessage,
    SchemaVersionError,
    decode,
    decode_obj,
    encode,
    encode_eos,
    to_json_obj,
)


def _full_frame() -> Frame:
    rng = np.random.default_rng(0)
    full = Face(
        box=np.array([10.5, 20.25, 110.0, 150.0], np.float32),
        score=0.93,
        keypoints=rng.uniform(0, 100, (5, 2)).astype(np.float32),
        track_id=7,
        landmarks_2d=rng.uniform(0, 100, (68, 2)).astype(np.float32),
        landmarks_3d=rng.normal(0, 5, (68, 3)).astype(np.float32),
        landmarks_canonical=rng.normal(0, 5, (68, 3)).astype(np.float32),
        rotation=np.diag([1.0, -1.0, -1.0]).astype(np.float32),
        euler=np.array([10.0, -5.0, 2.5], np.float32),
        translation=np.array([1.0, 2.0, 60.0], np.float32),
        confidence=rng.uniform(0, 1, 68).astype(np.float32),
        visibility=rng.uniform(0, 1, 68) > 0.3,
    )
    minimal = Face(box=np.array([1, 2, 3, 4], np.float32), score=0.5, keypoints=np.zeros((5, 2), np.float32))
    image = np.zeros((48, 64, 3), np.uint8)
    return Frame(stream_id="cam/0", index=42, pts=1.68, time=1700000000.25, image=image, faces=[full, minimal])


def test_round_trip_all_fields():
    frame = _full_frame()
    msg = decode(encode(frame))
    assert isinstance(msg, FrameMessage)
    assert msg.version == SCHEMA_VERSION
    assert (msg.stream_id, msg.index, msg.pts, msg.time) == ("cam/0", 42, 1.68, 1700000000.25)
    assert (msg.width, msg.height) == (64, 48)
    assert len(msg.faces) == 2
    for got, want in zip(msg.faces, frame.faces):
        for name in Face.__dataclass_fields__:
            a, b = getattr(got, name), getattr(want, name)
            if b is None:
                assert a is None, name
            elif isinstance(b, np.ndarray):
                assert a.shape == b.shape and a.dtype == b.dtype, name
                np.testing.assert_array_equal(a, b, err_msg=name)
            else:
                assert a == pytest.approx(b), name
    assert msg.faces[1].landmarks_2d is None and msg.faces[1].track_id is None


def test_wire_format_raw_arrays_and_omitted_fields():
    obj = msgpack.unpackb(encode(_full_frame()), raw=False)
    assert obj["version"] == list(SCHEMA_VERSION) and obj["type"] == "frame"
    lm = obj["faces"][0]["landmarks_2d"]
    assert lm["dtype"] == "<f4" and lm["shape"] == [68, 2] and isinstance(lm["data"], bytes)
    assert len(lm["data"]) == 68 * 2 * 4
    assert obj["faces"][0]["visibility"]["dtype"] == "|b1"
    assert set(obj["faces"][1]) == {"box", "score", "keypoints"}  # None fields are omitted


def test_unknown_major_rejected_newer_minor_accepted():
    obj = msgpack.unpackb(encode(_full_frame()), raw=False)
    obj["version"] = [SCHEMA_VERSION[0] + 1, 0]
    with pytest.raises(SchemaVersionError, match=r"schema version 2\.0 is not supported"):
        decode(msgpack.packb(obj, use_bin_type=True))
    obj["version"] = [SCHEMA_VERSION[0], SCHEMA_VERSION[1] + 3]
    obj["new_top_level_key"] = {"x": 1}
    obj["faces"][0]["new_face_key"] = [1, 2, 3]
    msg = decode(msgpack.packb(obj, use_bin_type=True))
    assert msg.version == (1, SCHEMA_VERSION[1] + 3) and msg.faces[0].track_id == 7


def test_end_of_stream_message():
    msg = decode(encode_eos("cam/0", 250))
    assert msg == EndOfStream(stream_id="cam/0", frames=250)


def test_json_form_round_trip():
    frame = _full_frame()
    text = json.dumps(to_json_obj(frame))
    obj = json.loads(text)
    assert obj["faces"][0]["landmarks_2d"][0] == pytest.approx(frame.faces[0].landmarks_2d[0].tolist())
    msg = decode_obj(obj, arrays_as_lists=True)
    np.testing.assert_array_equal(msg.faces[0].landmarks_3d, frame.faces[0].landmarks_3d)
    np.testing.assert_array_equal(msg.faces[0].visibility, frame.faces[0].visibility)
    # a decoded message re-encodes to the same JSON
    assert json.dumps(to_json_obj(decode(encode(frame)))) == text
