"""``python -m engine serve``: one long-lived pipeline whose streams are added and removed over HTTP.

The control API is a FastAPI app served by uvicorn in a thread of the engine's process (the pipeline's
own threads are untouched; the API only calls :meth:`Pipeline.add_source`, :meth:`Pipeline.remove_source`
and :meth:`Pipeline.streams`):

- ``POST /streams``: body = one source spec exactly as a ``[[sources]]`` table, as JSON -> 201 and the
  stream's status; 422 for an invalid spec (naming the key), 409 for an id in use, 400 when the input
  or a sink refuses it (missing file, a file name a sink cannot write), 503 while starting or stopping;
- ``GET /streams``, ``GET /streams/{id}``: status (id, uri, state, frames, faces, drops, errors, fps,
  last_error, ...);
- ``DELETE /streams/{id}``: drain and stop it; 200 and its final status once its end-of-stream went out
  through the sinks (``?wait_s=``, default 30), 202 if it takes longer (it is released when it ends);
- ``GET /healthz`` (liveness), ``GET /ready`` (readiness), ``GET /metrics`` (Prometheus).

Security: the API binds loopback unless told otherwise. Binding any other address requires a bearer
token (``--token-file``) unless ``--allow-insecure``; with a token every ``/streams`` request needs
``Authorization: Bearer <token>`` (also on loopback). Probes and ``/metrics`` stay open: orchestrators
and scrapers call them, and they carry no URIs (stream URIs, which may hold credentials, are only in
``/streams``, with passwords masked).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
import threading
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client.exposition import choose_encoder
from starlette.concurrency import run_in_threadpool

from engine.api_client import DEFAULT_API, parse_address  # noqa: F401  (re-exported: the CLI's names)
from engine.config import ConfigError
from engine.runtime import NotRunning, Pipeline, SourceRejected, StreamConflict

log = logging.getLogger(__name__)

REMOVE_WAIT_S = 30.0  # DELETE waits this long for the stream's end-of-stream by default


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost may resolve anywhere
        return False


class InsecureAddress(ValueError):
    """A non-loopback API address without a token or ``--allow-insecure``."""


def read_token(path: str | Path) -> str:
    """The bearer token in a file (surrounding whitespace ignored); ``ValueError`` if it is empty."""
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"{path}: the token file is empty")
    return token


def _error(status: int, message: str, errors: list[str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message, "errors": errors or [message]}, status_code=status)


def create_app(pipeline: Pipeline, token: str | None = None) -> FastAPI:
    """The control API for ``pipeline`` (see the module docstring)."""
    app = FastAPI(title="FaceLift engine", docs_url=None, redoc_url=None, openapi_url=None)

    def denied(request: Request) -> JSONResponse | None:
        if token is None:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        response = _error(401, "unauthorized: send 'Authorization: Bearer <token>' (the serve --token-file)")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.post("/streams")
    async def add_stream(request: Request) -> Response:
        if (refused := denied(request)) is not None:
            return refused
        try:
            spec = await request.json()
        except ValueError as exc:
            return _error(400, f"body: not JSON ({exc}); send a source spec such as "
                               '{"type": "file", "id": "cam1", "path": "clip.mp4"}')
        if not isinstance(spec, dict):
            return _error(422, f"body: expected a JSON object (a [[sources]] table), got {type(spec).__name__}")
        try:
            status = await run_in_threadpool(pipeline.add_source, spec)
        except ConfigError as exc:
            return _error(422, "; ".join(exc.errors), exc.errors)
        except StreamConflict as exc:
            return _error(409, str(exc))
        except SourceRejected as exc:
            return _error(400, str(exc), exc.errors)
        except NotRunning as exc:
            return _error(503, str(exc))
        return JSONResponse(status, status_code=201)

    @app.get("/streams")
    def list_streams(request: Request) -> Response:
        refused = denied(request)
        return refused if refused is not None else JSONResponse(pipeline.streams())

    @app.get("/streams/{stream_id:path}")
    def get_stream(stream_id: str, request: Request) -> Response:
        if (refused := denied(request)) is not None:
            return refused
        found = [s for s in pipeline.streams() if s["id"] == stream_id]
        return JSONResponse(found[0]) if found else _error(404, f"no stream {stream_id!r}")

    @app.delete("/streams/{stream_id:path}")
    def remove_stream(stream_id: str, request: Request, wait_s: float = REMOVE_WAIT_S) -> Response:
        # a plain def: FastAPI runs it in a worker thread, so waiting for the drain blocks no other request
        if (refused := denied(request)) is not None:
            return refused
        try:
            status = pipeline.remove_source(stream_id, wait_s=max(0.0, wait_s))
        except KeyError:
            return _error(404, f"no stream {stream_id!r}")
        return JSONResponse(status, status_code=200 if status.get("removed") else 202)

    @app.get("/healthz")
    def healthz() -> Response:
        return PlainTextResponse("ok\n")

    @app.get("/ready")
    def ready() -> Response:
        ok, why = pipeline.readiness()
        return PlainTextResponse(f"{'ready' if ok else 'not ready'}: {why}\n", status_code=200 if ok else 503)

    @app.get("/metrics")
    def metrics(request: Request) -> Response:
        if pipeline.metrics is None:
            return PlainTextResponse("not ready: starting\n", status_code=503)
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(pipeline.metrics.registry), media_type=content_type)

    return app


class ApiServer:
    """The control API on ``host:port``, served by uvicorn in a daemon thread. The socket is bound in the
    constructor, so a port in use or a refused address fails here, before the pipeline loads anything."""

    def __init__(self, pipeline: Pipeline, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
                 allow_insecure: bool = False):
        if not is_loopback(host) and token is None and not allow_insecure:
            raise InsecureAddress(f"--api {host}:{port} is not a loopback address: anyone who reaches it could add "
                                  "and remove streams; give --token-file FILE (bearer token) or --allow-insecure")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
            self.socket.listen(128)  # connections wait in the backlog until uvicorn's thread serves them
        except OSError:
            self.socket.close()
            raise
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(create_app(pipeline, token), log_config=None, access_log=False, lifespan="off",
                                log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.socket]}, name="api-http",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        log.info("control API on %s/streams (probes %s/healthz, %s/ready; metrics %s/metrics)",
                 self.url, self.url, self.url, self.url)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(5)
        self.socket.close()
