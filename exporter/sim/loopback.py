"""The loopback HTTP plumbing every simulated API runs on.

:class:`LoopbackAPIServer` serves an API object's :meth:`~LoopbackAPIServer.handle`
over real HTTP/1.1 (keep-alive) on a loopback address from a daemon thread, so
the exporter's real client, connection pool and timeouts are exercised. Requests
reach ``handle`` as :class:`APIRequest`; it answers an :class:`APIResponse`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger(__name__)

API_PREFIX = "/rest/v1"


class HeaderDict(dict[str, str]):
    """A plain dict of request headers as sent, looked up case-insensitively."""

    def _key(self, key: str) -> str:
        if not super().__contains__(key):
            lowered = key.lower()
            for k in self:
                if k.lower() == lowered:
                    return k
        return key

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(self._key(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(self._key(key) if isinstance(key, str) else key)

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(self._key(key), default)


@dataclass(frozen=True)
class APIRequest:
    """One parsed HTTP request as the API implementations see it."""

    method: str
    path: str  # URL path, percent-decoded, without the query string
    query: dict[str, str]  # last value wins for a repeated parameter
    headers: HeaderDict
    raw_query: str = ""
    raw_path: str = field(default="", compare=False)  # as received, still percent-encoded

    @property
    def segments(self) -> list[str] | None:
        """Path segments below ``/rest/v1``, or None for a path outside the API."""
        raw = urlsplit(self.raw_path).path if self.raw_path else self.path
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
    """Turns HTTP into :class:`APIRequest` and an :class:`APIResponse` back into HTTP."""

    server: _Server
    # Keep-alive like the real API, so the exporter's connection pool is exercised.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's
    # algorithm and the client's delayed ACK add ~40 ms to every keep-alive answer.
    disable_nagle_algorithm = True
    # An idle keep-alive connection must not hold a thread for ever; longer
    # than a polling client's usual gap, so reused connections are rarely stale.
    timeout = 75
    server_version = "ExecSimulated/1.0"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the peer (or stop()) already closed the socket
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _dispatch(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > 0:
            # Drain a request body so the connection stays usable (bounded).
            self.rfile.read(min(length, 1 << 20))
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        request = APIRequest(
            method=self.command,
            path=unquote(split.path),
            query=query,
            headers=HeaderDict(self.headers.items()),
            raw_query=split.query,
            raw_path=split.path,
        )
        try:
            response = self.server.api.handle(request)
        except Exception:  # a bug in a simulator must not kill the connection silently
            log.exception("simulated API failed on %s %s", self.command, self.path)
            response = APIResponse.json(500, {"error": {
                "type": "api_error", "code": "internal_error",
                "message": "Internal server error"}})
        self._send(response)

    def _send(self, response: APIResponse) -> None:
        self._send_chunks(response, len(response.body), (response.body,))

    def _send_chunks(self, response: APIResponse, length: int, chunks: Iterable[bytes]) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(length))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            for chunk in chunks:
                if self.server.stopping.is_set():
                    break
                self.wfile.write(chunk)
        except OSError:
            # The client gave up (timeout, body limit) or stop() closed the socket.
            self.close_connection = True
        if self.server.stopping.is_set():
            self.close_connection = True

    do_GET = _dispatch
    do_POST = _dispatch
    do_PUT = _dispatch
    do_PATCH = _dispatch
    do_DELETE = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Handler threads are daemons; server_close() must not wait for a hung one.
    block_on_close = False

    def __init__(self, address: tuple[str, int], api: LoopbackAPIServer, family: int) -> None:
        self.address_family = family
        self.api = api
        self.stopping = api.stopping
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, RequestHandler)

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._conn_lock:
            if alive:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            # shutdown (not close) wakes a thread blocked on the socket without
            # racing it for the file descriptor; the handler closes it itself.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class LoopbackAPIServer:
    """An HTTP API served on a loopback address from a daemon thread.

    Subclasses implement :meth:`handle`. :attr:`stopping` is set by :meth:`stop`;
    long-running handlers (hangs, streamed bodies) wait on it so a stop is prompt.
    Usable as a context manager.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if host == "localhost":
            host = "127.0.0.1"
        address = ipaddress.ip_address(host)
        # A simulator with a published key has no business on a real interface.
        if not address.is_loopback:
            raise ValueError(f"refusing to serve on non-loopback address {host}")
        self._host = host
        self._family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        self._port = port
        self.stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def handle(self, request: APIRequest) -> APIResponse:
        """Answer one request. Runs on a handler thread: must be thread-safe."""
        raise NotImplementedError

    def start(self) -> Self:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is not None:
            return self
        self.stopping.clear()
        self._server = _Server((self._host, self._port), self, self._family)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: wakes waiting handlers, closes sockets, joins (bounded)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self.stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=2.0)
        self._server = None
        self._thread = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        return self._port

    @property
    def base_url(self) -> str:
        """The API base URL, e.g. ``http://127.0.0.1:PORT/rest/v1``."""
        host = f"[{self._host}]" if self._family == socket.AF_INET6 else self._host
        return f"http://{host}:{self._port}{API_PREFIX}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

