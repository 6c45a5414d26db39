"""ZeroMQ sinks: ``zmq_pub`` (fan-out, lossy for slow subscribers) and ``zmq_push`` (lossless).

Every message is multipart ``[topic, payload]``: the topic is the stream id (UTF-8), so SUB sockets
can filter by stream; the payload is one :mod:`engine.messages` message (a frame, or the end-of-stream
message sent once per stream). Decode with ``engine.messages.decode`` or use ``engine.client.Subscriber``.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import ClassVar, Literal

import zmq
from pydantic import Field

from engine.frame import Frame
from engine.messages import encode, encode_eos
from engine.plugin import PluginOptions, Sink

log = logging.getLogger(__name__)


class ZmqOptions(PluginOptions):
    endpoint: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ endpoint, e.g. tcp://127.0.0.1:5555")
    mode: Literal["bind", "connect"] = Field("bind", description="bind the endpoint or connect to it")
    hwm: int = Field(1000, ge=0, description="send high-water mark in messages (0 = unlimited)")
    linger_ms: int = Field(2000, ge=-1, description="how long close() may wait to deliver queued messages")


class _ZmqSink(Sink):
    socket_type: ClassVar[int]

    def __init__(self, options: ZmqOptions):
        super().__init__(options)
        self.socket: zmq.Socket | None = None
        self.sent: dict[str, int] = defaultdict(int)  # frame messages per stream, for the eos message
        self.dropped = 0

    def _open(self) -> zmq.Socket:
        opts: ZmqOptions = self.options
        sock = zmq.Context.instance().socket(self.socket_type)
        sock.setsockopt(zmq.SNDHWM, opts.hwm)
        sock.setsockopt(zmq.LINGER, opts.linger_ms)
        try:
            sock.bind(opts.endpoint) if opts.mode == "bind" else sock.connect(opts.endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise RuntimeError(f"cannot {opts.mode} {opts.endpoint}: {exc}") from exc
        log.info("%s %s %s", self.name, "bound to" if opts.mode == "bind" else "connected to", opts.endpoint)
        return sock

    def _send(self, topic: str, payload: bytes) -> None:
        try:
            self.socket.send_multipart([topic.encode(), payload], copy=False)
        except zmq.Again:  # zmq_push with send_timeout_ms: the peer did not take it in time
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("%s: %d message(s) dropped (send timeout)", self.name, self.dropped)

    def write(self, frame: Frame) -> None:
        self._send(frame.stream_id, encode(frame))
        self.sent[frame.stream_id] += 1

    def end_of_stream(self, stream_id: str) -> None:
        self._send(stream_id, encode_eos(stream_id, self.sent.get(stream_id, 0)))

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()  # waits up to linger_ms for queued messages
            self.socket = None


class ZmqPubSink(_ZmqSink):
    """Publish messages on a PUB socket: slow subscribers lose messages at their HWM, never block."""

    name = "zmq_pub"
    socket_type = zmq.XPUB  # a PUB that also reports subscriptions (for wait_for_subscribers)

    class Options(ZmqOptions):
        wait_for_subscribers: int = Field(
            0, ge=0, description="before data flows, wait until this many subscriptions arrived (slow-joiner fix)"
        )
        wait_timeout_s: float = Field(10.0, gt=0, description="give up waiting for subscribers after this long")

    def start(self) -> None:
        self.socket = self._open()
        self.socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # report every subscription, not only new topics
        want = self.options.wait_for_subscribers
        if want:
            got, deadline = 0, time.monotonic() + self.options.wait_timeout_s
            while got < want and time.monotonic() < deadline:
                if self.socket.poll(100):
                    msg = self.socket.recv()
                    got += bool(msg) and msg[0] == 1  # b"\x01topic" = subscribe
            if got < want:
                log.warning("zmq_pub: %d of %d subscriber(s) after %.1f s; starting anyway", got, want, self.options.wait_timeout_s)

    def write(self, frame: Frame) -> None:
        super().write(frame)
        while self.socket.poll(0):  # discard (un)subscription notices so they do not pile up
            self.socket.recv()


class ZmqPushSink(_ZmqSink):
    """Push messages on a PUSH socket: lossless, blocks the pipeline while the peer is slow."""

    name = "zmq_push"
    socket_type = zmq.PUSH

    class Options(ZmqOptions):
        send_timeout_ms: int | None = Field(
            None, ge=0, description="drop (and count) a message after blocking this long; unset = block forever"
        )

    def start(self) -> None:
        self.socket = self._open()
        if self.options.send_timeout_ms is not None:
            self.socket.setsockopt(zmq.SNDTIMEO, self.options.send_timeout_ms)
