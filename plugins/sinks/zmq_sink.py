"""ZeroMQ sinks: ``zmq_pub`` (fan-out, lossy for slow subscribers) and ``zmq_push`` (lossless).

Every message is multipart ``[topic, payload]``: the topic is the stream id (UTF-8), so SUB sockets
can filter by stream; the payload is one :mod:`engine.messages` message (a frame, or the end-of-stream
message sent once per stream). Decode with ``engine.messages.decode`` or use ``engine.client.Subscriber``.

Losses are never silent. ``zmq_pub`` has ZeroMQ PUB semantics by default (``drop_policy =
"subscriber"``): a subscriber whose queue is at the high-water mark loses that message and only it;
the others and the pipeline go on. The pipeline cannot see which subscriber lost what, so each one counts
its own losses: the stream's end-of-stream message carries ``frames`` (frame messages sent), and
``Subscriber.lost`` is ``frames`` minus what it received. ``drop_policy = "all"`` sends with
``ZMQ_XPUB_NODROP`` instead: a message that meets any full subscriber queue is dropped for every
subscriber and counted pipeline-side per stream (``sink_drops`` in the summary and metrics,
``dropped`` in the end-of-stream message). Under both policies the end-of-stream message waits up to
``eos_timeout_ms`` for room at every subscriber. ``zmq_push`` waits for a receiver
(up to ``send_timeout_ms`` if set), logs while it waits, and gives up after ``linger_ms`` once the
pipeline is asked to stop, so Ctrl-C works without a receiver.

Security: with ``curve_secret`` the socket uses ZeroMQ CURVE (encryption; with ``curve_clients`` also
client authentication through ZAP). Binding an address other than loopback without keys is refused
unless ``allow_insecure = true``. Keys: ``python -m engine keys DIR NAME``.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from ipaddress import ip_address
from typing import ClassVar, Literal
from urllib.parse import urlsplit

import zmq
from pydantic import Field, model_validator

from engine.curve import apply_curve, start_authenticator
from engine.frame import Frame
from engine.messages import encode, encode_eos
from engine.plugin import PluginOptions, Sink, path_option

log = logging.getLogger(__name__)

WAIT_LOG_S = 5.0  # zmq_push: log "no receiver" after this long blocked, then every such interval


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address or ``localhost``."""
    parts = urlsplit(endpoint)
    if parts.scheme in ("ipc", "inproc"):
        return True
    host = (parts.hostname or "").split(";")[-1]
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name


class ZmqOptions(PluginOptions):
    endpoint: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ endpoint, e.g. tcp://127.0.0.1:5555")
    mode: Literal["bind", "connect"] = Field("bind", description="bind the endpoint or connect to it")
    hwm: int = Field(1000, ge=0, description="send high-water mark in messages (0 = unlimited)")
    linger_ms: int = Field(2000, ge=-1, description="how long close() may wait to deliver queued messages")
    eos_timeout_ms: int = Field(2000, ge=0, description="how long an end-of-stream message may wait for queue room")
    curve_secret: str | None = path_option(
        None, description="CURVE: this end's key file with its secret key (python -m engine keys); encrypts the socket."
    )
    curve_server_key: str | None = path_option(
        None, description="CURVE, mode = connect: the binding peer's public key file."
    )
    curve_clients: str | None = path_option(
        None, description="CURVE, mode = bind: folder of the public key files of the clients allowed (ZAP); "
        "unset = any client that knows this server's public key."
    )
    allow_insecure: bool = Field(False, description="allow binding a non-loopback address without CURVE keys")

    @model_validator(mode="after")
    def _secure_edge(self) -> ZmqOptions:
        if self.mode == "bind" and not is_loopback(self.endpoint) and not self.curve_secret and not self.allow_insecure:
            raise ValueError(f"binding {self.endpoint} (not loopback) without CURVE keys would let anyone on the network "
                             "read the results; set curve_secret (python -m engine keys) or allow_insecure = true")
        if self.mode == "connect" and self.curve_secret and not self.curve_server_key:
            raise ValueError("curve_secret with mode = 'connect' needs curve_server_key (the binding peer's public key)")
        return self


class _ZmqSink(Sink):
    socket_type: ClassVar[int]

    def __init__(self, options: ZmqOptions):
        super().__init__(options)
        self.socket: zmq.Socket | None = None
        self.sent: dict[str, int] = defaultdict(int)  # frame messages per stream, for the eos message
        self.dropped_by_stream: dict[str, int] = defaultdict(int)
        self.dropped = 0

    def _open(self) -> zmq.Socket:
        opts: ZmqOptions = self.options
        sock = zmq.Context.instance().socket(self.socket_type)
        sock.setsockopt(zmq.SNDHWM, opts.hwm)
        sock.setsockopt(zmq.LINGER, opts.linger_ms)
        try:
            if opts.curve_secret:
                if opts.mode == "bind":
                    start_authenticator(opts.curve_clients)
                apply_curve(sock, opts.curve_secret, opts.curve_server_key, server=opts.mode == "bind")
            sock.bind(opts.endpoint) if opts.mode == "bind" else sock.connect(opts.endpoint)
        except (zmq.ZMQError, OSError, ValueError) as exc:
            sock.close(0)
            raise RuntimeError(f"cannot {opts.mode} {opts.endpoint}: {exc}") from exc
        log.info("%s %s %s%s", self.name, "bound to" if opts.mode == "bind" else "connected to", opts.endpoint,
                 " (CURVE)" if opts.curve_secret else "")
        return sock

    def _try_send(self, parts: list[bytes]) -> bool:
        try:
            self.socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def _send_waiting(self, parts: list[bytes], timeout_s: float | None) -> bool:
        """Retry until sent, ``timeout_s`` passed, or (after a stop request) ``linger_ms`` passed."""
        start = last_log = time.monotonic()
        stop_deadline = None
        while not self._try_send(parts):
            now = time.monotonic()
            if self.stop_event.is_set():
                stop_deadline = stop_deadline or now + max(self.options.linger_ms, 0) / 1000.0
            if (timeout_s is not None and now - start >= timeout_s) or (stop_deadline and now >= stop_deadline):
                return False
            if now - last_log >= WAIT_LOG_S:
                last_log = now
                log.warning("%s: no room to send on %s for %.0f s (no receiver?); waiting%s", self.name,
                            self.options.endpoint, now - start, " (Ctrl-C stops)" if not self.stop_event.is_set() else "")
            limits = [t for t in (timeout_s and start + timeout_s, stop_deadline) if t]
            wait_ms = int(1000 * min([0.05, *(t - now for t in limits)]))
            self.socket.poll(max(wait_ms, 1), zmq.POLLOUT)
            time.sleep(0.002)  # XPUB reports POLLOUT even when a subscriber is full
        return True

    def _drop(self, stream_id: str, why: str) -> None:
        self.dropped += 1
        self.dropped_by_stream[stream_id] += 1
        self.count(stream_id, "sink_drops")
        if self.dropped == 1 or self.dropped % 100 == 0:
            log.warning("%s: %d message(s) dropped (%s)", self.name, self.dropped, why)

    def _send_frame(self, stream_id: str, parts: list[bytes]) -> bool:
        raise NotImplementedError

    def write(self, frame: Frame) -> None:
        # seq = messages sent so far: a message dropped for everyone ("all", push timeout) takes no number,
        # so a gap a subscriber sees is its own loss
        if self._send_frame(frame.stream_id, [frame.stream_id.encode(), encode(frame, self.sent[frame.stream_id])]):
            self.sent[frame.stream_id] += 1

    def end_of_stream(self, stream_id: str) -> None:
        try:
            self._send_eos(stream_id)
        finally:  # nothing kept per ended stream; a new stream with this id counts (seq) from 0
            self.sent.pop(stream_id, None)
            self.dropped_by_stream.pop(stream_id, None)

    def _send_eos(self, stream_id: str) -> None:
        payload = encode_eos(stream_id, self.sent.get(stream_id, 0), self.counts_of(stream_id),
                             self.dropped_by_stream.get(stream_id, 0))
        if not self._send_waiting([stream_id.encode(), payload], self.options.eos_timeout_ms / 1000.0):
            self._drop(stream_id, "end-of-stream message: no room")
            log.error("%s: end-of-stream message of %r could not be sent within %d ms", self.name, stream_id,
                      self.options.eos_timeout_ms)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()  # waits up to linger_ms for queued messages
            self.socket = None


class ZmqPubSink(_ZmqSink):
    """Publish messages on a PUB socket: a slow subscriber loses its own messages at the HWM, never blocks."""

    name = "zmq_pub"
    socket_type = zmq.XPUB  # a PUB that also reports subscriptions (for wait_for_subscribers)

    class Options(ZmqOptions):
        wait_for_subscribers: int = Field(
            0, ge=0, description="before data flows, wait until this many subscriptions arrived (slow-joiner fix)"
        )
        wait_timeout_s: float = Field(10.0, gt=0, description="give up waiting for subscribers after this long")
        drop_policy: Literal["subscriber", "all"] = Field(
            "subscriber", description="'subscriber': PUB semantics, a slow subscriber loses only its own messages "
            "(each subscriber computes its loss from the end-of-stream message's frame count); 'all': a message "
            "that meets any full subscriber queue is dropped for all subscribers and counted in sink_drops"
        )

    def start(self) -> None:
        self.socket = self._open()
        self.socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # report every subscription, not only new topics
        # "all": a full subscriber queue -> EAGAIN for everyone, which is counted here
        self.socket.setsockopt(zmq.XPUB_NODROP, int(self.options.drop_policy == "all"))
        want = self.options.wait_for_subscribers
        if want:
            got, deadline = 0, time.monotonic() + self.options.wait_timeout_s
            while got < want and time.monotonic() < deadline and not self.stop_event.is_set():
                if self.socket.poll(100):
                    msg = self.socket.recv()
                    got += bool(msg) and msg[0] == 1  # b"\x01topic" = subscribe
            if got < want:
                log.warning("zmq_pub: %d of %d subscriber(s) after %.1f s; starting anyway", got, want, self.options.wait_timeout_s)

    def _send_frame(self, stream_id: str, parts: list[bytes]) -> bool:
        while self.socket.poll(0):  # discard (un)subscription notices so they do not pile up
            self.socket.recv()
        if self._try_send(parts):  # "subscriber": always succeeds, ZeroMQ drops per full subscriber
            return True
        self._drop(stream_id, "a subscriber's queue is at the high-water mark (drop_policy = 'all')")
        return False

    def _send_eos(self, stream_id: str) -> None:
        # The marker is what lets each subscriber count its losses, so it waits for room at every
        # subscriber (NODROP) whatever the policy.
        if self.options.drop_policy == "all":
            return super()._send_eos(stream_id)
        payload = encode_eos(stream_id, self.sent.get(stream_id, 0), self.counts_of(stream_id),
                             self.dropped_by_stream.get(stream_id, 0))
        self.socket.setsockopt(zmq.XPUB_NODROP, 1)
        try:
            if self._send_waiting([stream_id.encode(), payload], self.options.eos_timeout_ms / 1000.0):
                return
        finally:
            self.socket.setsockopt(zmq.XPUB_NODROP, 0)
        # Still full: deliver it to the subscribers that have room; the full one misses it (counted).
        self._try_send([stream_id.encode(), payload])
        self.count(stream_id, "eos_drops")
        log.error("zmq_pub: a subscriber had no room for the end-of-stream message of %r within %d ms; "
                  "it was sent to the others (that subscriber cannot count its losses)", stream_id,
                  self.options.eos_timeout_ms)


class ZmqPushSink(_ZmqSink):
    """Push messages on a PUSH socket: lossless, blocks the pipeline while the peer is slow."""

    name = "zmq_push"
    socket_type = zmq.PUSH

    class Options(ZmqOptions):
        send_timeout_ms: int | None = Field(
            None, ge=0, description="drop (and count) a message after blocking this long; unset = wait for a "
            "receiver (logged every 5 s; after a stop request at most linger_ms)"
        )

    def start(self) -> None:
        self.socket = self._open()

    def _send_frame(self, stream_id: str, parts: list[bytes]) -> bool:
        timeout = self.options.send_timeout_ms
        if self._send_waiting(parts, None if timeout is None else timeout / 1000.0):
            return True
        self._drop(stream_id, "send timeout" if not self.stop_event.is_set() else "stopping, no receiver")
        return False
