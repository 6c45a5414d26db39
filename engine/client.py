"""Client side for downstream apps: receive engine messages over ZeroMQ, or read a sink's files.

    from engine.client import Subscriber
    with Subscriber("tcp://127.0.0.1:5555", topics=["sample"]) as sub:
        for msg in sub:                     # stops after `timeout_s` without a message
            if isinstance(msg, FrameMessage):
                print(msg.index, len(msg.faces))

``kind="sub"`` (default) pairs with the ``zmq_pub`` sink, ``kind="pull"`` with ``zmq_push``.

Every malformed message raises :class:`engine.messages.MessageError` (a ``ValueError``); with
``skip_invalid=True`` iteration logs and counts it (``invalid``) and goes on. Messages larger than
``max_message_bytes`` are refused by ZeroMQ itself (``ZMQ_MAXMSGSIZE``: the peer is disconnected), so a
hostile sender cannot make the client allocate gigabytes. ``curve_server_key`` (the sink's public key
file) turns on CURVE encryption; ``curve_secret`` is this client's key file (needed when the sink only
admits known clients; default: a fresh anonymous key pair).

Losses are counted per stream on this side, because a ``zmq_pub`` sink drops messages per slow
subscriber (PUB semantics) and only the subscriber can know what it missed: ``received[stream]`` counts
frame messages, ``lost[stream]`` is how many the sink sent that did not arrive, as far as known: the
gaps in the messages' ``seq`` so far and, once the stream's end-of-stream message arrived (``ended``),
its ``frames`` minus ``received``. A subscriber still behind when a stream ends may miss that message
too (it is published like the others): the stream is then not in ``ended`` and the losses after the last
received message are unknown.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import msgpack
import zmq

from engine.curve import apply_curve
from engine.messages import EndOfStream, FrameMessage, Message, MessageError, decode, decode_obj

__all__ = ["Subscriber", "read_messages", "FrameMessage", "EndOfStream", "MessageError"]

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 64 << 20  # 64 MiB: thousands of faces per frame


class Subscriber:
    """A SUB (or PULL) socket that yields decoded messages.

    ``topics``: stream ids to receive (SUB only; ``None`` = all). ``mode="connect"`` (default) pairs
    with a sink that binds. Iteration ends after ``timeout_s`` seconds without a message (``None`` =
    wait forever) or, with ``stop_after_eos``, once that many streams have ended.
    """

    def __init__(
        self,
        endpoint: str,
        topics: list[str] | None = None,
        kind: Literal["sub", "pull"] = "sub",
        mode: Literal["connect", "bind"] = "connect",
        timeout_s: float | None = 5.0,
        stop_after_eos: int | None = None,
        hwm: int = 10_000,
        max_message_bytes: int | None = MAX_MESSAGE_BYTES,
        skip_invalid: bool = False,
        curve_server_key: str | None = None,
        curve_secret: str | None = None,
    ):
        if kind not in ("sub", "pull"):
            raise ValueError(f"kind must be 'sub' or 'pull', not {kind!r}")
        if topics and kind == "pull":
            raise ValueError("topics filter needs kind='sub' (PULL receives everything)")
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.stop_after_eos = stop_after_eos
        self.skip_invalid = skip_invalid
        self.invalid = 0  # malformed messages skipped (skip_invalid)
        self.received: dict[str, int] = {}  # frame messages received per stream
        self.lost: dict[str, int] = {}  # frame messages the sink sent that never arrived here, as far as known
        self.ended: set[str] = set()  # streams whose end-of-stream message arrived
        self._sent: dict[str, int] = {}  # per stream: messages the sink had sent, as far as known
        self._last_seq: dict[str, int] = {}  # per stream: the last seq received (a drop = a new stream, same id)
        self.socket = zmq.Context.instance().socket(zmq.SUB if kind == "sub" else zmq.PULL)
        self.socket.setsockopt(zmq.RCVHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        if max_message_bytes is not None:
            self.socket.setsockopt(zmq.MAXMSGSIZE, int(max_message_bytes))
        if curve_server_key:
            apply_curve(self.socket, curve_secret, curve_server_key, server=False)
        if kind == "sub":
            for topic in topics or [""]:
                self.socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        if mode == "bind":  # "tcp://127.0.0.1:*" picks a free port; ``endpoint`` then says which
            self.socket.bind(endpoint)
            self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            self.socket.connect(endpoint)

    def recv(self, timeout_s: float | None = None) -> Message:
        """The next message; raises ``TimeoutError`` after ``timeout_s`` (default: the instance's)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if timeout is not None and not self.socket.poll(int(timeout * 1000)):
            raise TimeoutError(f"no message from {self.endpoint} within {timeout:g} s")
        parts = self.socket.recv_multipart()
        if len(parts) != 2:
            raise MessageError(f"expected a [topic, payload] message, got {len(parts)} part(s)")
        msg = decode(parts[-1])
        self._account(msg)
        return msg

    def _account(self, msg: Message) -> None:
        sid = msg.stream_id
        # the sink's counts are cumulative per stream id, and so is ``received``
        if isinstance(msg, EndOfStream):
            self.ended.add(sid)
            sent = msg.frames
        else:
            last = self._last_seq.get(sid)
            if sid in self.ended or (msg.seq is not None and last is not None and msg.seq <= last):
                # a new stream with an ended one's id (a service re-adding a camera): counted afresh
                self.ended.discard(sid)
                for counts in (self.received, self.lost, self._sent):
                    counts.pop(sid, None)
            if msg.seq is not None:
                self._last_seq[sid] = msg.seq
            self.received[sid] = self.received.get(sid, 0) + 1
            if msg.seq is None and sid not in self.ended:  # no counter (an older sink): known at the end
                return
            sent = 0 if msg.seq is None else msg.seq + 1
        self._sent[sid] = max(self._sent.get(sid, 0), sent)
        self.lost[sid] = max(self._sent[sid] - self.received.get(sid, 0), 0)

    def __iter__(self) -> Iterator[Message]:
        ended = 0
        while True:
            try:
                msg = self.recv()
            except TimeoutError:
                return
            except MessageError as exc:
                if not self.skip_invalid:
                    raise
                self.invalid += 1
                log.warning("%s: invalid message skipped (%d so far): %s", self.endpoint, self.invalid, exc)
                continue
            yield msg
            if isinstance(msg, EndOfStream):
                ended += 1
                if self.stop_after_eos is not None and ended >= self.stop_after_eos:
                    return

    def close(self) -> None:
        self.socket.close(0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_messages(path: str | Path) -> Iterator[Message]:
    """Messages of a ``file_sink`` file (``.msgpack`` or ``.jsonl``), in order."""
    path = Path(path)
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield decode_obj(json.loads(line), arrays_as_lists=True)
        return
    with open(path, "rb") as f:
        for obj in msgpack.Unpacker(f, raw=False):
            yield decode_obj(obj)
