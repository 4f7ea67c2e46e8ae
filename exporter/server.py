"""The HTTP server: /metrics, the landing page, health, readiness and reload.

One thread per connection with socket timeouts, so slow or stalled clients
never hold up a scrape. TLS handshakes happen in the connection's own thread
for the same reason. Nothing here calls the API.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import http.client
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import __version__
from .config import format_duration
from .exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Exposition
from .store import Snapshot, Store, TargetState
from .webconfig import LiveWebConfig, WebConfig

log = logging.getLogger(__name__)

SOCKET_TIMEOUT = 10.0  # a client that sends nothing for this long is dropped
# The whole request head (TLS handshake, request line, headers), and a keep-alive
# connection's wait for its next request, must take no longer than this: a client
# trickling a byte at a time cannot hold a connection (and its thread) forever.
REQUEST_HEAD_TIMEOUT = 10.0
MAX_CONNECTIONS = 512  # threads are cheap here, but not unbounded
MAX_REQUEST_BODY = 65536  # /-/reload needs no body at all
MAX_HEADERS = 100  # as http.client
MAX_HEADER_LINE = 65536  # as http.client
# Reasons that waiting will not fix: such a target counts as settled for /-/ready.
SETTLED_REASONS = frozenset({"not_found", "bad_request"})


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
        """Whether every target has a value (polled or restored), or a settled error.
        With no targets, ready once discovery has read the scenario list (there is
        nothing to wait for)."""
        snapshot = self.store.snapshot()
        if not snapshot.targets:
            return "scenarios" in snapshot.discovery_success
        return all(t.summary is not None or t.last_error in SETTLED_REASONS
                   for t in snapshot.targets)


class Handler(BaseHTTPRequestHandler):
    """Routes requests; one instance per connection."""

    server: ExporterHTTPServer
    raw_requestline: bytes  # set by BaseHTTPRequestHandler
    _headers_buffer: list[bytes]  # ditto, by send_response and send_header
    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes: without TCP_NODELAY, Nagle's algorithm and
    # the client's delayed ACK would add ~40 ms to every keep-alive scrape.
    disable_nagle_algorithm = True
    timeout = SOCKET_TIMEOUT
    server_version = f"exec-exporter/{__version__}"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes | tuple[bytes, ...],
              content_type: str = "text/plain; charset=utf-8",
              extra: dict[str, str] | None = None) -> None:
        chunks = (body,) if isinstance(body, bytes) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(sum(map(len, chunks))))
        for name, value in self.server.web.web_config.headers.items():
            self.send_header(name, value)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self._headers_buffer.append(b"\r\n")
        head = b"".join(self._headers_buffer)
        self._headers_buffer = []
        _write_all(self.connection, (head, *chunks) if self.command != "HEAD" else (head,))

    def handle_one_request(self) -> None:
        # From here until the request head is parsed, the head deadline runs.
        self.server.waiting(self.connection, True)
        try:
            super().handle_one_request()
        finally:
            self.server.waiting(self.connection, False)

    def parse_request(self) -> bool:
        ok = self._parse_simple_request()
        if ok is None:
            ok = super().parse_request()
        self.server.waiting(self.connection, False)
        return ok

    def _parse_simple_request(self) -> bool | None:
        """The standard parse without the email package, which costs ~40 us a request
        (~150 us with cold caches, as every scrape 15 s apart finds them). Scrapes send
        a few plain headers; None hands anything else (HTTP/0.9, odd request lines,
        folded headers) to the standard library."""
        words = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n").split()
        if len(words) != 3 or words[2] not in ("HTTP/1.1", "HTTP/1.0"):
            return None
        self.requestline = " ".join(words)
        self.command, self.path, self.request_version = words
        if self.path.startswith("//"):
            self.path = "/" + self.path.lstrip("/")
        headers = http.client.HTTPMessage()
        for _ in range(MAX_HEADERS + 1):
            line = self.rfile.readline(MAX_HEADER_LINE + 1)
            if len(line) > MAX_HEADER_LINE:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long")
                return False
            if line in (b"\r\n", b"\n", b""):
                break
            text = line.decode("iso-8859-1")
            name, colon, value = text.partition(":")
            if not colon or text[0] in " \t" or not name.strip():
                self.send_error(HTTPStatus.BAD_REQUEST, "Malformed header line")
                return False
            headers[name.strip()] = value.strip()
        else:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers")
            return False
        self.headers = headers
        connection = headers.get("Connection", "").lower()
        self.close_connection = connection == "close" or (
            self.request_version == "HTTP/1.0" and connection != "keep-alive")
        if (headers.get("Expect", "").lower() == "100-continue"
                and self.request_version == "HTTP/1.1"):
            return self.handle_expect_100()
        return True

    def _authorized(self) -> bool:
        if self.server.web.web_config.check_auth(self.headers.get("Authorization")):
            return True
        if self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # its body is not read: keep-alive would go astray
        self._send(HTTPStatus.UNAUTHORIZED, b"Unauthorized\n",
                   extra={"WWW-Authenticate": 'Basic realm="exec-exporter"'})
        return False

    def _read_body(self) -> bool:
        """Read and ignore a small request body; refuse (and answer) anything else."""
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            self._send(HTTPStatus.LENGTH_REQUIRED, b"Length required\n")
            return False
        length = self.headers.get("Content-Length", "0").strip()
        if not length.isdigit():
            self.close_connection = True
            self._send(HTTPStatus.BAD_REQUEST, b"Bad request\n")
            return False
        size = int(length)
        if size > MAX_REQUEST_BODY:
            self.close_connection = True
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"Request body too large\n")
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
        accept = self.headers.get("Accept", "")
        openmetrics = "application/openmetrics-text" in accept
        gzip = "gzip" in self.headers.get("Accept-Encoding", "")
        body = self.server.web.exposition.render_chunks(openmetrics=openmetrics, gzip=gzip)
        extra = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"} if gzip else {}
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
        self._send(HTTPStatus.OK, body, content_type, extra)


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
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    def waiting(self, conn: socket.socket, start: bool) -> None:
        """Start or end the request head deadline of ``conn``."""
        with self._waiting_lock:
            if start:
                self._waiting[conn] = time.monotonic() + REQUEST_HEAD_TIMEOUT
            else:
                self._waiting.pop(conn, None)

    def service_actions(self) -> None:
        # Runs in the accept loop every poll interval: drop connections past their deadline.
        now = time.monotonic()
        with self._waiting_lock:
            expired = [conn for conn, deadline in self._waiting.items() if deadline <= now]
            for conn in expired:
                del self._waiting[conn]
        for conn in expired:
            _hang_up(conn)

    def _evict_oldest_waiting(self) -> bool:
        with self._waiting_lock:
            if not self._waiting:
                return False
            conn = min(self._waiting, key=self._waiting.__getitem__)
            del self._waiting[conn]
        _hang_up(conn)
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        # Full: make room by hanging up on the connection that has waited longest for
        # its request, so idle or stalled clients cannot lock out a scrape.
        if not self._slots.acquire(blocking=False) and not (
                self._evict_oldest_waiting() and self._slots.acquire(timeout=0.5)):
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
                self.waiting(request, True)  # the handshake is part of the request head
                try:
                    request = context.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    log.debug("TLS handshake with %s failed: %s", client_address, exc)
                    self.shutdown_request(request)
                    return
                finally:
                    self.waiting(request, False)
                if not self.web.web_config.client_allowed(request.getpeercert()):
                    log.debug("client certificate of %s has none of client_allowed_sans",
                              client_address)
                    self.shutdown_request(request)
                    return
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
    """``[HOST]:PORT`` (IPv6 hosts in brackets) to a bind address; empty host = all."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {value!r}: expected [HOST]:PORT")
    host = host.strip("[]")
    return host or "0.0.0.0", int(port)


def serve(address: tuple[str, int], web: Web) -> ExporterHTTPServer:
    """Bind and serve in a daemon thread; returns the server (``shutdown()`` to stop)."""
    server = ExporterHTTPServer(address, web)
    # A short poll interval keeps shutdown() (and so SIGTERM) prompt.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="http", daemon=True)
    thread.start()
    return server


# --- landing page -------------------------------------------------------------


def _when(ts: float | None, now: float) -> str:
    """A time for people: the UTC stamp and how far from now, durations as in the logs
    (``17m36s``). Never fails, whatever the scheduler's state: a target of the first
    fill is due at minus infinity, one with nothing planned at infinity."""
    if ts is None:
        return "never"
    if ts == -math.inf:
        return "now"
    if not math.isfinite(ts):
        return "not planned"
    try:
        stamp = dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "not planned" if ts > now else "long ago"
    delta = round(ts - now)
    if delta == 0:
        return f"{stamp} (now)"
    rel = f"in {format_duration(delta)}" if delta > 0 else f"{format_duration(-delta)} ago"
    return f"{stamp} ({rel})"


def _state(state: TargetState) -> tuple[str, str]:
    """(css class, text) of a target's state: a target never tried yet is waiting,
    not down."""
    if state.up:
        return "up", "up"
    if state.last_error is None:
        return "waiting", "waiting"
    return "down", "down"


def landing_page(web: Web) -> str:
    """A small HTML page: version, link to metrics, one row per target."""
    snapshot: Snapshot = web.store.snapshot()
    now = web.clock()
    e = html.escape
    rows = []
    for state in snapshot.targets:
        target = state.target
        error = "" if state.last_error is None else (
            f"{e(state.last_error)}: {e(state.last_error_message or '')} "
            f"({_when(state.last_error_time, now)})")
        css, text = _state(state)
        rows.append(
            "<tr>"
            f"<td>{e(target.scenario)}</td><td>{e(target.display_name or '')}</td>"
            f"<td>{e(target.cohort.name)}</td>"
            + (f"<td>{e(web.source(target.key))}</td>" if web.source else "")
            + f"<td class={css}>{text}</td>"
            f"<td>{_when(state.last_success, now)}</td><td>{error}</td>"
            f"<td>{_when(state.next_due, now)}</td></tr>")
    discovery = ""
    if snapshot.discovery_success or snapshot.discovery_error:
        items = []
        for kind in sorted(set(snapshot.discovery_success) | set(snapshot.discovery_error)):
            err = snapshot.discovery_error.get(kind)
            last = _when(snapshot.discovery_success.get(kind), now)
            items.append(f"<li>{e(kind)}: last read {last}"
                         + (f"; last error: {e(err)}" if err else "") + "</li>")
        discovery = "<h2>Discovery</h2><ul>" + "".join(items) + "</ul>"
    notice = ""
    if snapshot.pause_reason is not None and snapshot.pause_until is not None \
            and snapshot.pause_until > now:
        why = {"rate_limited": "the API answered 429 (rate limited)",
               "unauthorized": "the API refused the key (401)",
               "forbidden": "the API refused the workspace (403)"}.get(
                   snapshot.pause_reason, e(snapshot.pause_reason))
        then = ("the next request is sent" if snapshot.pause_reason == "rate_limited"
                else "a probe request is sent")
        notice = (f'<p class="notice">All requests are paused: {why}; {then} '
                  f"{_when(snapshot.pause_until, now)}.</p>")
    if snapshot.targets:
        source = "<th>Source</th>" if web.source else ""
        table = f"""<table><thead><tr><th>Scenario</th><th>Name</th><th>Cohort</th>{source}
<th>State</th><th>Last success</th><th>Last error</th><th>Next refresh</th></tr></thead>
<tbody>
{''.join(rows)}
</tbody></table>"""
    elif "scenarios" in snapshot.discovery_success:
        table = ("<p>No targets: discovery read the workspace's scenario list and found "
                 "no scenario to poll (check <code>discovery.scenarios</code> filters and "
                 "<code>exclude</code>).</p>")
    else:
        table = "<p>No targets yet: waiting for discovery to read the scenario list.</p>"
    path = e(web.telemetry_path)
    interval = format_duration(snapshot.interval) if snapshot.interval > 0 else "not set"
    stretched = " (stretched to fit the budget)" if snapshot.stretched else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Exec Exporter</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
th{{background:#f4f4f4}}.up{{color:#1a7f37}}.down{{color:#cf222e;font-weight:bold}}
.waiting{{color:#6e7781}}.notice{{background:#fff8c5;border:1px solid #d4a72c;padding:8px}}
</style></head><body>
<h1>Exec Exporter</h1>
<p>Version {e(__version__)}. <a href="{path}">Metrics</a> &middot;
<a href="/-/healthy">Health</a> &middot; <a href="/-/ready">Readiness</a></p>
{notice}
<p>{len(snapshot.targets)} targets; effective refresh interval {interval}{stretched};
{snapshot.targets_dropped} dropped by max_targets.
Configuration last loaded {_when(snapshot.reload_time, now)}
({'ok' if snapshot.reload_ok else 'last reload FAILED'}).</p>
{discovery}
<h2>Targets</h2>
{table}
</body></html>
"""
