"""Versioned per-frame message schema: what sinks send and subscribers decode.

Wire format (msgpack map, one per frame)::

    {"type": "frame", "version": [1, 1], "stream": "cam0", "index": 12, "pts": 0.48,
     "time": 1712.3, "size": [640, 480],
     "faces": [{"box": ARRAY, "score": 0.98, "keypoints": ARRAY, "track_id": 3,
                "landmarks_2d": ARRAY, ...}]}

An ARRAY is ``{"dtype": "<f4", "shape": [68, 2], "data": <raw little-endian bytes>}`` (never nested
lists, so decoding is one ``np.frombuffer``). Optional face fields that a pipeline did not compute are
omitted, not sent as nil. A face's ``"extra"`` (schema 1.4, only when a plugin filled ``Face.extra``) is a
map of name -> ARRAY in the array's own dtype: per-face outputs of third-party stages. ZeroMQ sinks add ``"seq"``: the number of frame messages this sink sent
for the stream before this one (0, 1, 2, ...), so a subscriber sees a gap as soon as it loses one (a
``zmq_pub`` subscriber whose queue is full loses messages the others get). When a stream ends, sinks send one end-of-stream message::

    {"type": "eos", "version": [1, 4], "stream": "cam0", "frames": 250, "dropped": 3,
     "lost": {"drops": 0, "errors": 0, "decode_errors": 2}}

``frames`` is how many frame messages the sink emitted for that stream, so a subscriber can tell
whether it missed any; ``dropped`` how many frame messages this sink could not deliver (zmq_pub at the
high-water mark, zmq_push after its send timeout); ``lost`` the stream's counters upstream of the sink
(queue ``drops`` of a live source, stage/sink ``errors``, ``decode_errors`` = damaged packets skipped,
``reconnects``, ``outages``; only the non-zero ones need be present). Compatibility: a decoder accepts any minor version of its major version
(unknown keys are ignored) and rejects other major versions with :class:`SchemaVersionError`.
The JSON form (JSONL file sink) is the same map with arrays as nested lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import msgpack
import numpy as np

from engine.frame import Face, Frame

# 1.1: faces carry the landmark stage's fields (landmarks_2d/3d/canonical, rotation, euler,
# translation, confidence, visibility) and track_id; 1.0 decoders read 1.1 messages (extra keys only).
# 1.2: eos carries ``dropped`` and ``lost`` (loss counters).
# 1.3: frame messages from ZeroMQ sinks carry ``seq`` (per-sink, per-stream message counter).
# 1.4: a face may carry ``extra``: {name: array} of plugin outputs (Face.extra), arrays in their own dtype.
SCHEMA_VERSION: tuple[int, int] = (1, 4)

# Face fields sent as arrays, with the dtype they are sent in (None: keep the array's own dtype).
_ARRAY_FIELDS: dict[str, str] = {
    "box": "<f4",
    "keypoints": "<f4",
    "landmarks_2d": "<f4",
    "landmarks_3d": "<f4",
    "landmarks_canonical": "<f4",
    "rotation": "<f4",
    "euler": "<f4",
    "translation": "<f4",
    "confidence": "<f4",
    "visibility": "|b1",
}
_OPTIONAL_FIELDS = [f.name for f in fields(Face) if f.name not in ("box", "score", "keypoints", "extra")]


class SchemaVersionError(ValueError):
    """A message from an incompatible (different major) schema version."""


class MessageError(ValueError):
    """A message that is not a valid engine message (missing keys, bad array)."""


@dataclass
class FrameMessage:
    """A decoded per-frame message. ``faces`` are :class:`engine.frame.Face` with numpy arrays."""

    stream_id: str
    index: int
    pts: float | None
    time: float
    width: int
    height: int
    faces: list[Face] = field(default_factory=list)
    version: tuple[int, int] = SCHEMA_VERSION
    seq: int | None = None  # the sink's message counter for this stream (ZeroMQ sinks), None in files


@dataclass
class EndOfStream:
    """Sent once when a stream ends; ``frames`` = frame messages the sender emitted for it, ``dropped``
    = frame messages it could not deliver, ``lost`` = the stream's loss counters upstream."""

    stream_id: str
    frames: int
    version: tuple[int, int] = SCHEMA_VERSION
    dropped: int = 0
    lost: dict[str, int] = field(default_factory=dict)


Message = FrameMessage | EndOfStream


# ---------------------------------------------------------------- arrays


def pack_array(value: Any, dtype: str) -> dict[str, Any]:
    arr = np.ascontiguousarray(np.asarray(value), dtype=np.dtype(dtype))
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}


def unpack_array(obj: Any, key: str) -> np.ndarray:
    try:
        dtype = np.dtype(obj["dtype"])
        shape = tuple(int(s) for s in obj["shape"])
        data = obj["data"]
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageError(f"{key}: expected an array map with dtype, shape and data") from exc
    if dtype.kind not in "biuf" or dtype.itemsize > 8:  # never let a message choose an object dtype
        raise MessageError(f"{key}: unsupported dtype {obj['dtype']!r}")
    if not isinstance(data, (bytes, bytearray)) or any(n < 0 for n in shape) or len(shape) > 8:
        raise MessageError(f"{key}: data must be raw bytes and shape non-negative (got {type(data).__name__}, {list(shape)})")
    if len(data) % dtype.itemsize or len(data) // dtype.itemsize != int(np.prod(shape, dtype=object)):
        raise MessageError(f"{key}: {len(data)} bytes do not fit shape {list(shape)} of {dtype.str}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=True)


# ---------------------------------------------------------------- encode


def _face_obj(face: Face, array: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "box": array(face.box, _ARRAY_FIELDS["box"]),
        "score": float(face.score),
        "keypoints": array(face.keypoints, _ARRAY_FIELDS["keypoints"]),
    }
    for name in _OPTIONAL_FIELDS:
        value = getattr(face, name)
        if value is None:
            continue
        obj[name] = int(value) if name == "track_id" else array(value, _ARRAY_FIELDS[name])
    if face.extra:  # each array in its own dtype, little-endian
        obj["extra"] = {str(k): array(v, np.asarray(v).dtype.newbyteorder("<").str) for k, v in face.extra.items()}
    return obj


def frame_obj(frame: Frame | FrameMessage, json_arrays: bool = False, seq: int | None = None) -> dict[str, Any]:
    """The message map of a frame, or of a decoded frame message (re-encoding it, e.g. to save it).
    ``json_arrays``: arrays as nested lists for JSON; ``seq``: the sink's message counter (ZeroMQ)."""
    array = _list_array if json_arrays else pack_array
    width, height = frame.size if isinstance(frame, Frame) else (frame.width, frame.height)
    if seq is None and isinstance(frame, FrameMessage):
        seq = frame.seq
    obj = {
        "type": "frame",
        "version": list(SCHEMA_VERSION),
        "stream": frame.stream_id,
        "index": int(frame.index),
        "pts": None if frame.pts is None else float(frame.pts),
        "time": float(frame.time),
        "size": [width, height],
        "faces": [_face_obj(face, array) for face in frame.faces],
    }
    if seq is not None:
        obj["seq"] = int(seq)
    return obj


def eos_obj(stream_id: str, frames: int, lost: dict[str, int] | None = None, dropped: int = 0) -> dict[str, Any]:
    return {"type": "eos", "version": list(SCHEMA_VERSION), "stream": stream_id, "frames": int(frames),
            "dropped": int(dropped), "lost": {str(k): int(v) for k, v in (lost or {}).items()}}


def _list_array(value: Any, dtype: str) -> list:
    return np.asarray(value, dtype=np.dtype(dtype)).tolist()


def encode(frame: Frame, seq: int | None = None) -> bytes:
    """One frame as a msgpack message (``seq``: see the module docstring)."""
    return msgpack.packb(frame_obj(frame, seq=seq), use_bin_type=True)


def encode_eos(stream_id: str, frames: int, lost: dict[str, int] | None = None, dropped: int = 0) -> bytes:
    return msgpack.packb(eos_obj(stream_id, frames, lost, dropped), use_bin_type=True)


# ---------------------------------------------------------------- decode


def _check_version(obj: dict[str, Any]) -> tuple[int, int]:
    try:
        major, minor = (int(v) for v in obj["version"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageError("message has no valid 'version' [major, minor]") from exc
    if major != SCHEMA_VERSION[0]:
        raise SchemaVersionError(
            f"message schema version {major}.{minor} is not supported: this decoder reads "
            f"{SCHEMA_VERSION[0]}.x (installed facelift-engine); use a matching engine version"
        )
    return major, minor


def _face_from_obj(obj: dict[str, Any], key: str, arrays_as_lists: bool) -> Face:
    def arr(name: str) -> np.ndarray:
        if arrays_as_lists:
            return np.asarray(obj[name], dtype=np.dtype(_ARRAY_FIELDS[name]).newbyteorder("="))
        return unpack_array(obj[name], f"{key}.{name}")

    try:
        face = Face(box=arr("box"), score=float(obj["score"]), keypoints=arr("keypoints"))
    except KeyError as exc:
        raise MessageError(f"{key}: missing key {exc.args[0]!r}") from exc
    for name in _OPTIONAL_FIELDS:
        if obj.get(name) is not None:
            setattr(face, name, int(obj[name]) if name == "track_id" else arr(name))
    extra = obj.get("extra") or {}
    if not isinstance(extra, dict):
        raise MessageError(f"{key}.extra: expected a map of name -> array")
    # JSON carries no dtype: lists come back as numpy's default for their values
    face.extra = {str(k): np.asarray(v) if arrays_as_lists else unpack_array(v, f"{key}.extra.{k}") for k, v in extra.items()}
    return face


def decode_obj(obj: dict[str, Any], arrays_as_lists: bool = False) -> Message:
    """A message map (from msgpack or JSON) as a :class:`FrameMessage` or :class:`EndOfStream`.
    Anything malformed raises :class:`MessageError` (or :class:`SchemaVersionError`), never a bare
    ``ValueError``/``TypeError``."""
    if not isinstance(obj, dict):
        raise MessageError(f"expected a message map, got {type(obj).__name__}")
    version = _check_version(obj)
    kind = obj.get("type")
    try:
        if kind == "eos":
            lost = obj.get("lost") or {}
            return EndOfStream(stream_id=str(obj["stream"]), frames=int(obj["frames"]), version=version,
                               dropped=int(obj.get("dropped") or 0), lost={str(k): int(v) for k, v in lost.items()})
        if kind == "frame":
            width, height = (int(v) for v in obj["size"])
            faces = [
                _face_from_obj(f, f"faces[{i}]", arrays_as_lists) for i, f in enumerate(obj["faces"])
            ]
            return FrameMessage(
                stream_id=str(obj["stream"]),
                index=int(obj["index"]),
                pts=None if obj.get("pts") is None else float(obj["pts"]),
                time=float(obj["time"]),
                width=width,
                height=height,
                faces=faces,
                version=version,
                seq=None if obj.get("seq") is None else int(obj["seq"]),
            )
    except MessageError:
        raise
    except KeyError as exc:
        raise MessageError(f"{kind} message: missing key {exc.args[0]!r}") from exc
    except (TypeError, ValueError, AttributeError, OverflowError, MemoryError) as exc:
        raise MessageError(f"{kind} message: malformed ({type(exc).__name__}: {exc})") from exc
    raise MessageError(f"unknown message type {kind!r} (expected 'frame' or 'eos')")


def decode(data: bytes) -> Message:
    """Decode one msgpack message (see the module docstring for the schema)."""
    try:
        obj = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise MessageError(f"not a msgpack message: {exc}") from exc
    return decode_obj(obj)


def to_json_obj(message: Frame | Message) -> dict[str, Any]:
    """JSON-ready form of a frame or message (arrays as nested lists), for JSONL files."""
    if isinstance(message, EndOfStream):
        return eos_obj(message.stream_id, message.frames, message.lost, message.dropped)
    return frame_obj(message, json_arrays=True)
