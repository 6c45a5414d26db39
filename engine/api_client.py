"""Client of the service control API (``python -m engine serve``): one JSON request to ``host:port``.

Plain HTTP over ``http.client`` to the address the user gives: no URL schemes, redirects or proxies,
so it can only ever talk to that API (the engine downloads nothing). Used by ``engine streams`` and by
the service tests and benchmark.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

DEFAULT_API = "127.0.0.1:8080"


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ``ValueError`` naming what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: expected HOST:PORT, e.g. {DEFAULT_API} or [::1]:8080")
    return host.strip("[]"), int(port)


def api_address(api: str) -> tuple[str, int]:
    """``--api`` as given (``host:port``, optionally ``http://host:port/``) -> (host, port)."""
    scheme, sep, rest = api.partition("://")
    if sep and scheme != "http":
        raise ValueError(f"--api {api!r}: the control API speaks plain http (put TLS in a reverse proxy)")
    return parse_address((rest if sep else api).rstrip("/"))


def request(api: str, method: str, path: str, body: Any = None, token: str | None = None,
            timeout: float = 30.0) -> tuple[int, Any]:
    """(HTTP status, decoded JSON body) of one call; a non-JSON body comes back as ``{"detail": text}``.
    Raises ``OSError`` when nothing answers at ``api``."""
    host, port = api_address(api)
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw or b"null")
    except ValueError:
        return response.status, {"detail": raw.decode(errors="replace").strip() or response.reason}
