"""The loopback HTTP plumbing every simulated API runs on.

:class:`LoopbackAPIServer` serves its :meth:`~LoopbackAPIServer.handle` over real
HTTP/1.1 (keep-alive) on a loopback address from a daemon thread, so the exporter's
real client, connection pool and timeouts are exercised.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

from requests.structures import CaseInsensitiveDict

log = logging.getLogger(__name__)

API_PREFIX = "/rest/v1"
# Request headers as sent, looked up case-insensitively.
HeaderDict = CaseInsensitiveDict


@dataclass(frozen=True)
class APIRequest:
    """One parsed HTTP request as the API implementations see it."""

    method: str
    path: str  # URL path, percent-decoded, without the query string
    query: dict[str, str]  # last value wins for a repeated parameter
    headers: CaseInsensitiveDict[str]
    raw_path: str = field(default="", compare=False)  # as received, still percent-encoded

    @property
    def segments(self) -> list[str] | None:
        """Path segments below ``/rest/v1``, or None for a path outside the API."""
        raw = self.raw_path or self.path
        if raw != API_PREFIX and not raw.startswith(API_PREFIX + "/"):
            return None
        rest = raw[len(API_PREFIX) :].strip("/")
        return [unquote(s) for s in rest.split("/")] if rest else []


@dataclass
class APIResponse:
    """What to send back."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Self:
        """A JSON response."""
        return cls(status, json.dumps(payload).encode(), dict(headers or {}))


class RequestHandler(BaseHTTPRequestHandler):
    """Turns HTTP into an :class:`APIRequest` and an :class:`APIResponse` back into HTTP."""

    server: _Server
    # Keep-alive like the real API, so the exporter's connection pool is exercised.
    protocol_version = "HTTP/1.1"
    # Head and body go out in separate writes: without TCP_NODELAY, Nagle and the
    # client's delayed ACK add ~40 ms to every keep-alive answer.
    disable_nagle_algorithm = True
    # An idle keep-alive connection must not hold a thread for ever.
    timeout = 75
    server_version = "ExecSimulated/1.0"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # the peer (or stop()) closed the socket
            super().finish()
        with self.server.lock:
            self.server.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        """Any method: parse, let the API answer, send."""
        with contextlib.suppress(ValueError):  # drain a body (bounded): keep-alive
            self.rfile.read(max(0, min(int(self.headers.get("Content-Length") or 0), 1 << 20)))
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        request = APIRequest(self.command, unquote(split.path), query,
                             CaseInsensitiveDict(self.headers.items()), split.path)
        try:
            response = self.server.api.handle(request)
        except Exception:  # a bug in a simulator must not kill the connection silently
            log.exception("simulated API failed on %s %s", self.command, self.path)
            response = APIResponse.json(500, {"error": {
                "type": "api_error", "code": "internal_error",
                "message": "Internal server error"}})
        try:
            self.write_response(response)
        except OSError:  # the client gave up (timeout, body limit) or stop() closed it
            self.close_connection = True
        if self.server.api.stopping.is_set():
            self.close_connection = True

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def write_response(self, response: APIResponse) -> None:
        """Write ``response`` (a hook for fakes that write differently)."""
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # server_close() must not wait for a hung handler

    def __init__(self, api: LoopbackAPIServer) -> None:
        self.api = api
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        super().__init__((api.host, api.port), api.handler_class)


class LoopbackAPIServer:
    """An HTTP API served on a loopback address from a daemon thread; a context manager.

    Subclasses implement :meth:`handle`. :meth:`stop` sets :attr:`stopping`, which
    long-running handlers (hangs, streamed bodies) wait on so a stop is prompt.
    """

    handler_class: type[RequestHandler] = RequestHandler

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = "127.0.0.1" if host == "localhost" else host
        # A simulator with a published key has no business on a real interface.
        if not ipaddress.IPv4Address(self.host).is_loopback:
            raise ValueError(f"refusing to serve on non-loopback address {host}")
        self.port = port  # the bound one after start()
        self.stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def handle(self, request: APIRequest) -> APIResponse:
        """Answer one request. Runs on a handler thread: must be thread-safe."""
        raise NotImplementedError

    def start(self) -> Self:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is None:
            self.stopping.clear()
            self._server = _Server(self)
            self.port = self._server.server_address[1]
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"{type(self).__name__}:{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: wakes waiting handlers, closes sockets, joins (bounded)."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self.stopping.set()
        server.shutdown()
        with server.lock:
            connections = list(server.connections)
        for connection in connections:
            # shutdown (not close) wakes a thread blocked on the socket without racing
            # it for the file descriptor; the handler closes it itself.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        server.server_close()
        thread.join(timeout=2.0)
        self._server = self._thread = None

    @property
    def base_url(self) -> str:
        """The API base URL, e.g. ``http://127.0.0.1:PORT/rest/v1``."""
        return f"http://{self.host}:{self.port}{API_PREFIX}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
