"""The HTTP server: /metrics, the landing page, health, readiness and reload.

One thread per connection (TLS handshake included) with socket timeouts and a
request head deadline, so slow or stalled clients never hold up a scrape.
Request heads are parsed by llhttp (via httptools): anything malformed or
ambiguous gets 400 and a closed connection. Response heads are rendered once
and kept. Nothing here calls the API. The limits are listed in
docs/operations.md, and what each optimisation buys in docs/performance.md.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import functools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httptools

from . import __version__
from .client import PERSISTENT_REASONS
from .exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Exposition
from .landing import landing_page
from .store import Store
from .webconfig import LiveWebConfig, WebConfig

log = logging.getLogger(__name__)

SOCKET_TIMEOUT = 10.0  # a client that sends nothing for this long is dropped
# The deadline of a whole request head (TLS handshake included) and of a keep-alive
# connection's wait for its next one: a trickling client cannot hold a thread forever.
REQUEST_HEAD_TIMEOUT = 10.0
MAX_CONNECTIONS = 512  # threads are cheap here, but not unbounded
MAX_REQUEST_BODY = 65536  # /-/reload needs no body at all
MAX_HEADERS = 100  # as http.client
MAX_HEADER_LINE = 65536  # as http.client
OPENMETRICS_MEDIA_TYPE = "application/openmetrics-text"


class Web:
    """What the handlers need, wired by the CLI."""

    def __init__(self, store: Store, exposition: Exposition, telemetry_path: str = "/metrics",
                 web_config: WebConfig | None = None,
                 reload: Callable[[], tuple[bool, str]] | None = None,
                 clock: Callable[[], float] | None = None,
                 source: Callable[[tuple[str, str]], str] | None = None) -> None:
        self.store = store
        # Where a target's values come from ("summary" or "participants"), for the page.
        self.source = source
        self.exposition = exposition
        self.telemetry_path = telemetry_path
        self._web_config = LiveWebConfig(web_config or WebConfig())
        self.reload = reload
        self.clock = clock or exposition.clock.time

    @property
    def web_config(self) -> WebConfig:
        """The web configuration in force (reread when its files change)."""
        return self._web_config.get()

    def ready(self) -> bool:
        """Whether every target has a value or a settled error (with no targets: once
        discovery has read the scenario list)."""
        snapshot = self.store.snapshot()
        if not snapshot.targets:
            return "scenarios" in snapshot.discovery_success
        return all(t.summary is not None or t.last_error in PERSISTENT_REASONS
                   for t in snapshot.targets)


class Handler(BaseHTTPRequestHandler):
    """Routes requests; one instance per connection."""

    server: ExporterHTTPServer
    raw_requestline: bytes  # set by BaseHTTPRequestHandler
    # Header fields by lower-case name, set by parse_request (instead of ``headers``).
    fields: dict[str, str]
    protocol_version = "HTTP/1.1"
    # Without TCP_NODELAY, Nagle's algorithm and the client's delayed ACK add ~40 ms to
    # a keep-alive scrape whose head and body leave in separate writes (TLS).
    disable_nagle_algorithm = True
    timeout = SOCKET_TIMEOUT
    server_version = f"exec-exporter/{__version__}"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        # Formatted only when it is written: send_response logs every request.
        if log.isEnabledFor(logging.DEBUG):
            log.debug("http %s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes | tuple[bytes, ...],
              content_type: str = "text/plain; charset=utf-8",
              extra: dict[str, str] | None = None) -> None:
        chunks = (body,) if isinstance(body, bytes) else body
        self.log_request(status)
        web = self.server.web
        start, middle, end = self._head_parts(web.web_config, status, content_type, extra)
        head = b"".join((start, _http_date(int(web.clock())), middle,
                         str(sum(map(len, chunks))).encode("ascii"), end))
        _write_all(self.connection, (head, *chunks) if self.command != "HEAD" else (head,))

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """Answer an error like any other answer (the configured headers included), in
        plain text, and close the connection."""
        self.close_connection = True
        text = message or self.responses.get(code, ("Error",))[0]
        self._send(code, f"{text}\n".encode("latin-1", "replace"), extra=_CLOSE)

    def _head_parts(self, config: WebConfig, status: int, content_type: str,
                    extra: dict[str, str] | None) -> tuple[bytes, bytes, bytes]:
        """The head ``send_response`` and ``send_header`` would write, split around its
        Date and Content-Length values; rendered once per (status, content type, extra
        headers, web configuration) and kept on the server."""
        key = (status, content_type, tuple(extra.items()) if extra else ())
        heads = self.server.heads
        found = heads.get(key)
        if found is not None and found[0] is config:
            return found[1]
        reason = self.responses.get(status, ("",))[0]  # as send_response_only does
        start = (f"{self.protocol_version} {status} {reason}\r\n"
                 f"Server: {self.version_string()}\r\nDate: ")
        middle = f"\r\nContent-Type: {content_type}\r\nContent-Length: "
        end = "".join(f"\r\n{name}: {value}"
                      for name, value in (*config.headers.items(), *key[2])) + "\r\n\r\n"
        parts = (start.encode("latin-1"), middle.encode("latin-1"), end.encode("latin-1"))
        heads[key] = (config, parts)  # the keys are this module's constants: a few dozen
        return parts

    def handle_one_request(self) -> None:
        # From here until the request head is parsed, the head deadline runs.
        self.server.waiting(self.connection, True)
        try:
            super().handle_one_request()
        finally:
            self.server.waiting(self.connection, False)

    def parse_request(self) -> bool:
        """Parse the request head with llhttp; answer and close on anything malformed.
        Header lines are read one at a time, so their size and number are bounded."""
        self.command = ""
        self.request_version = "HTTP/1.1"  # so an error reply carries a status line
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        head = _Head()
        parser = head.parser = httptools.HttpRequestParser(head)
        try:
            parser.feed_data(self.raw_requestline)
            for _ in range(MAX_HEADERS + 1):
                if head.complete:
                    break
                line = self.rfile.readline(MAX_HEADER_LINE + 1)
                if not line:
                    return False  # the client went away mid-head
                if len(line) > MAX_HEADER_LINE:
                    self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                    "Header line too long")
                    return False
                parser.feed_data(line)
            else:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers")
                return False
        except httptools.HttpParserUpgrade:
            pass  # Upgrade or CONNECT: the head is complete; nothing is upgraded here
        except httptools.HttpParserError as exc:
            log.debug("malformed request head from %s: %s", self.address_string(), exc)
            self.send_error(HTTPStatus.BAD_REQUEST, "Malformed request head")
            return False
        self.server.waiting(self.connection, False)  # the head is in: its deadline ends
        if not head.complete or head.duplicate:
            self.send_error(HTTPStatus.BAD_REQUEST, "Malformed request head"
                            if not head.complete else f"Duplicate {head.duplicate} header")
            return False
        version = head.version
        if version not in ("1.1", "1.0"):
            self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED
                            if version >= "2" else HTTPStatus.BAD_REQUEST)
            return False
        self.request_version = "HTTP/" + version
        self.command = head.method
        self.path = head.url.decode("iso-8859-1")
        if self.path.startswith("//"):
            self.path = "/" + self.path.lstrip("/")  # as the standard library does
        self.fields = head.fields
        self.close_connection = not head.keep_alive
        if version == "1.1" and head.fields.get("expect", "").lower() == "100-continue":
            return self.handle_expect_100()
        return True

    def _authorized(self) -> bool:
        if self.server.web.web_config.check_auth(self.fields.get("authorization")):
            return True
        if self.fields.get("content-length", "0") != "0" or "transfer-encoding" in self.fields:
            self.close_connection = True  # its body is not read: keep-alive would go astray
        self._send(HTTPStatus.UNAUTHORIZED, b"Unauthorized\n",
                   extra={"WWW-Authenticate": 'Basic realm="exec-exporter"'})
        return False

    def _read_body(self) -> bool:
        """Read and ignore a small request body; refuse (and answer) anything else."""
        if "transfer-encoding" in self.fields:
            self.send_error(HTTPStatus.LENGTH_REQUIRED, "Length required")
            return False
        size = int(self.fields.get("content-length", "0"))  # llhttp admits digits only
        if size > MAX_REQUEST_BODY:
            self.send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request body too large")
            return False
        if size:
            self.rfile.read(size)
        return True

    def do_GET(self) -> None:
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        web = self.server.web
        if path == web.telemetry_path:
            self._metrics()
        elif path == "/":
            self._send(HTTPStatus.OK, landing_page(web).encode(), "text/html; charset=utf-8")
        elif path == "/-/healthy":
            self._send(HTTPStatus.OK, b"Healthy\n")
        elif path == "/-/ready":
            if web.ready():
                self._send(HTTPStatus.OK, b"Ready\n")
            else:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"Not ready: waiting for first data\n")
        elif path == "/-/reload":
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"Use POST to reload\n",
                       extra={"Allow": "POST"})
        else:
            self._send(HTTPStatus.NOT_FOUND, b"Not found\n")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        if not self._authorized() or not self._read_body():
            return
        path = self.path.split("?", 1)[0]
        if path != "/-/reload":
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"Method not allowed\n")
            return
        reload = self.server.web.reload
        if reload is None:
            self._send(HTTPStatus.NOT_FOUND, b"Reload is not available\n")
            return
        ok, message = reload()
        status = HTTPStatus.OK if ok else HTTPStatus.INTERNAL_SERVER_ERROR
        self._send(status, (message + "\n").encode())

    do_PUT = do_POST

    def _metrics(self) -> None:
        openmetrics = wants_openmetrics(self.fields.get("accept", ""))
        gzip = wants_gzip(self.fields.get("accept-encoding", ""))
        body = self.server.web.exposition.render_chunks(openmetrics=openmetrics, gzip=gzip)
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
        self._send(HTTPStatus.OK, body, content_type, _METRICS_HEADERS[gzip])


_CLOSE = {"Connection": "close"}
# Caches between Prometheus and here must key on both negotiated headers.
_METRICS_HEADERS = {False: {"Vary": "Accept-Encoding, Accept"},
                    True: {"Vary": "Accept-Encoding, Accept", "Content-Encoding": "gzip"}}


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> bytes:
    """``second`` as ``date_time_string`` writes it (formatted once a second)."""
    return email.utils.formatdate(second, usegmt=True).encode("ascii")


class _Head:
    """httptools callbacks: the request target and headers of one request head."""

    # Headers a request may carry once: two lengths are the classic request smuggling
    # trick, two credentials or hosts are ambiguous.
    SINGLE = frozenset({"authorization", "content-length", "host"})

    url = b""
    duplicate = ""  # the first single-use header found twice
    complete = False
    method = version = ""
    keep_alive = False

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}  # by lower-case name; repeats joined with ", "
        self.parser: httptools.HttpRequestParser | None = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("ascii").lower()  # llhttp admits only token characters
        text = value.decode("iso-8859-1").strip(" \t")
        if key in self.fields:
            if key in self.SINGLE:
                self.duplicate = self.duplicate or key
            text = f"{self.fields[key]}, {text}"  # RFC 9110 5.3: one list
        self.fields[key] = text

    def on_headers_complete(self) -> None:
        # Read now: once a message without a body is complete (in this same feed),
        # llhttp resets its state for the next one.
        assert self.parser is not None
        self.method = self.parser.get_method().decode("ascii")
        self.version = self.parser.get_http_version()
        self.keep_alive = self.parser.should_keep_alive()
        self.parser = None  # no reference cycle
        self.complete = True


def _qvalues(header: str) -> dict[str, float]:
    """``Accept``-style header to {lower-case token: highest q} (RFC 9110 12.4.2; a q
    that is not a number counts as 0)."""
    found: dict[str, float] = {}
    for item in header.split(","):
        token, *params = item.split(";")
        token = token.strip().lower()
        if not token:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        found[token] = max(q, found.get(token, 0.0))
    return found


def wants_gzip(accept_encoding: str) -> bool:
    """Whether to gzip: gzip acceptable (q > 0, named or by ``*``) and not ranked below
    identity. A client refusing both gets identity rather than a useless 406."""
    if accept_encoding == "gzip":
        return True  # what Prometheus sends, without parsing
    q = _qvalues(accept_encoding)
    star = q.get("*", 0.0)
    gzip = q.get("gzip", q.get("x-gzip", star))
    return gzip > 0 and gzip >= q.get("identity", star)


def wants_openmetrics(accept: str) -> bool:
    """Whether to answer in OpenMetrics: q > 0 and not ranked below ``text/plain``."""
    if "openmetrics" not in accept:
        return False  # without parsing: not asked for
    first = accept.partition(",")[0]
    if first.startswith(OPENMETRICS_MEDIA_TYPE) and "q=" not in first:
        return True  # without parsing: first choice at q=1, as Prometheus asks
    q = _qvalues(accept)
    openmetrics = q.get(OPENMETRICS_MEDIA_TYPE, 0.0)
    return openmetrics > 0 and openmetrics >= q.get("text/plain", 0.0)


def _write_all(sock: Any, chunks: tuple[bytes, ...]) -> None:
    """Write ``chunks`` in order: headers and body in one writev, the body uncopied."""
    if isinstance(sock, ssl.SSLSocket) or not hasattr(sock, "sendmsg"):
        for chunk in chunks:
            sock.sendall(chunk)
        return
    views = [memoryview(c) for c in chunks if c]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if sent:
            views[0] = views[0][sent:]


class ExporterHTTPServer(ThreadingHTTPServer):
    """A threading server that wraps TLS per connection and caps connections."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], web: Web) -> None:
        self.web = web
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        # Connections waiting for a request head, with their deadlines (monotonic).
        self._waiting: dict[socket.socket, float] = {}
        self._waiting_lock = threading.Lock()
        # Response heads by (status, content type, extra headers): see Handler._head_parts.
        self.heads: dict[tuple[int, str, tuple[tuple[str, str], ...]],
                         tuple[WebConfig, tuple[bytes, bytes, bytes]]] = {}
        host, port = address
        # No host (or "::") means every address, IPv4 and IPv6, on one dual-stack
        # socket as Go's net.Listen does; a machine without IPv6 gets IPv4 alone.
        self._dual_stack = host in ("", "::")
        if self._dual_stack:
            self.address_family = socket.AF_INET6
            try:
                super().__init__(("::", port), Handler)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    raise
                log.debug("no IPv6 here (%s); listening on IPv4 only", exc)
            self._dual_stack = False
            host = "0.0.0.0"
        # A name or literal picks its own family (socket.gaierror for an unknown name).
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self.address_family = family
        super().__init__((str(sockaddr[0]), int(sockaddr[1])), Handler)

    def server_bind(self) -> None:
        if self._dual_stack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def waiting(self, conn: socket.socket, start: bool) -> None:
        """Start or end the request head deadline of ``conn``."""
        with self._waiting_lock:
            if start:
                self._waiting[conn] = time.monotonic() + REQUEST_HEAD_TIMEOUT
            else:
                self._waiting.pop(conn, None)

    def service_actions(self) -> None:
        self._hang_up_waiting()  # runs in the accept loop every poll interval

    def _hang_up_waiting(self, oldest: bool = False) -> bool:
        """Hang up on the connections past their head deadline (or the one waiting longest)."""
        now = time.monotonic()
        with self._waiting_lock:
            waiting = self._waiting
            chosen = ([min(waiting, key=waiting.__getitem__)] if oldest and waiting else
                      [conn for conn, deadline in waiting.items() if deadline <= now])
            for conn in chosen:
                del waiting[conn]
        for conn in chosen:
            _hang_up(conn)
        return bool(chosen)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Full: make room by hanging up on the connection that has waited longest for
        # its request, so idle or stalled clients cannot lock out a scrape.
        if not self._slots.acquire(blocking=False) and not (
                self._hang_up_waiting(oldest=True) and self._slots.acquire(timeout=0.5)):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            context = self.web.web_config.ssl_context
            if context is not None:
                request.settimeout(SOCKET_TIMEOUT)
                try:
                    # Wrapped first (detaching the plain socket), so that the socket in
                    # the handshake is the one the head deadline or the cap hangs up on.
                    request = context.wrap_socket(request, server_side=True,
                                                  do_handshake_on_connect=False)
                    self.waiting(request, True)  # the handshake is part of the request head
                    request.do_handshake()
                    if not self.web.web_config.client_allowed(request.getpeercert()):
                        raise ssl.SSLError("the client certificate has none of "
                                           "client_allowed_sans")
                except (ssl.SSLError, OSError) as exc:
                    log.debug("TLS connection from %s refused: %s", client_address, exc)
                    self.shutdown_request(request)
                    return
                finally:
                    self.waiting(request, False)
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


def _hang_up(conn: socket.socket) -> None:
    # shutdown() wakes the handler thread blocked on the socket (it reads EOF and
    # closes the socket itself). The plain socket method is used on TLS sockets too:
    # SSLSocket.shutdown would drop the TLS state under the reading thread.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(conn, socket.SHUT_RDWR)


def parse_listen_address(value: str) -> tuple[str, int]:
    """``[HOST]:PORT`` (IPv6 in brackets) to a bind address; no host means every address,
    IPv4 and IPv6 (``"::"``). Raise ValueError saying what is wrong."""
    host, sep, port = value.rpartition(":")
    example = "expected [HOST]:PORT, e.g. :10025, 127.0.0.1:10025 or [::1]:10025"
    if not sep:
        raise ValueError(f"{value!r}: no port; {example}")
    if not port.isdigit():
        raise ValueError(f"{value!r}: port {port!r} is not a number; {example}")
    if int(port) > 65535:
        raise ValueError(f"{value!r}: port {int(port)} is out of range (0-65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError(f"{value!r}: empty brackets; {example}")
    elif "[" in host or "]" in host or ":" in host:
        raise ValueError(f"{value!r}: an IPv6 address goes in brackets; {example}")
    return host or "::", int(port)


class ListenError(OSError):
    """The server could not bind its address; ``reason`` is the error from the OS."""

    def __init__(self, reason: OSError) -> None:
        super().__init__(reason.errno, reason.strerror or str(reason))
        self.reason = reason


def listen_failure(exc: OSError, listen: str) -> tuple[int, str]:
    """The exit code (2: an address that cannot work here, 1: anything else) and one
    line saying why the server could not start, with the fix."""
    if not isinstance(exc, ListenError):
        return 1, f"cannot start: {exc}"
    exc = exc.reason
    where = f"--web.listen-address={listen}"
    if isinstance(exc, socket.gaierror):
        host = listen.rpartition(":")[0].strip("[]")
        return 2, f"{where}: unknown host {host!r} (no address found for it)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return 2, (f"{where}: not an address of this machine; use one of its addresses, "
                   "or :PORT for all of them")
    if exc.errno == errno.EACCES:
        return 2, (f"{where}: permission denied (ports below 1024 need privileges); "
                   "choose a higher port")
    if exc.errno == errno.EADDRINUSE:
        return 1, (f"cannot listen on {listen}: the port is already in use (another "
                   "exporter or the demo may be running); choose another with "
                   "--web.listen-address")
    return 1, f"cannot start: {exc}"


def serve(address: tuple[str, int], web: Web) -> ExporterHTTPServer:
    """Bind (or raise ListenError) and serve in a daemon thread; ``shutdown()`` stops it."""
    try:
        server = ExporterHTTPServer(address, web)
    except OSError as exc:
        raise ListenError(exc) from exc
    # A short poll interval keeps shutdown() (and so SIGTERM) prompt.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="http", daemon=True)
    thread.start()
    return server
