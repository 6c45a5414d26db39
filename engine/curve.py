"""ZeroMQ CURVE for the network edge: key files, client/server set-up, ZAP authentication.

Key files are zmq.auth certificates (``python -m engine keys DIR NAME`` writes ``NAME.key`` with the
public key and ``NAME.key_secret`` with both). A server (the side that binds) loads its secret file; a
client loads the server's public file (and its own secret file, or gets a fresh anonymous pair).
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq
import zmq.auth

log = logging.getLogger(__name__)


def create_keys(folder: str | Path, name: str) -> tuple[Path, Path]:
    """(public file, secret file) of a new key pair in ``folder``."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def apply_curve(sock: zmq.Socket, secret_file: str | None, server_key_file: str | None, server: bool) -> None:
    """Make ``sock`` a CURVE server (``server``) or client from zmq.auth key files."""
    if server:
        public, secret = zmq.auth.load_certificate(secret_file)
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
        return
    if secret_file:
        public, secret = zmq.auth.load_certificate(secret_file)
    else:  # an anonymous client: a fresh key pair
        public, secret = zmq.curve_keypair()
    sock.curve_secretkey, sock.curve_publickey = secret, public
    sock.curve_serverkey, _ = zmq.auth.load_certificate(server_key_file)


_authenticators: dict[int, object] = {}  # one ZAP handler per context


def start_authenticator(clients_folder: str | None) -> None:
    """ZAP handler for CURVE servers of this process's context: only keys in ``clients_folder``, or any."""
    from zmq.auth.thread import ThreadAuthenticator

    ctx = zmq.Context.instance()
    auth = _authenticators.get(id(ctx))
    if auth is None:
        auth = ThreadAuthenticator(ctx, log=logging.getLogger("engine.zap"))
        auth.start()
        _authenticators[id(ctx)] = auth
    auth.configure_curve(domain="*", location=clients_folder or zmq.auth.CURVE_ALLOW_ANY)


