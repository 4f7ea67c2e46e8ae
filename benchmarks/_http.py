"""A minimal HTTP/1.1 client for benchmarks: one persistent loopback connection.

Deliberately thin (raw socket, preallocated receive buffer) so the client's own
cost is small and the same for every server measured. A server that closes
the connection (HTTP/1.0, like prometheus_client's ``start_http_server``) is
reconnected on the next request, and that connect is part of its time.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

MAX_BODY = 256 << 20


class HTTPError(Exception):
    """The response was not a well-formed 200."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    length: int


class Connection:
    """Keep-alive GETs to 127.0.0.1:``port``."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self.connects = 0
        self._buf = bytearray(1 << 20)
        self._body = bytearray(1 << 20)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connects += 1
        return sock

    def get(self, path: str, headers: dict[str, str] | None = None,
            keep_body: bool = False) -> Response:
        """One GET; the timing covers connect (if needed), request and the whole body.

        The body is read into a reused buffer; it is returned only with ``keep_body``."""
        lines = [f"GET {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        started = time.perf_counter()
        reused = self.sock is not None
        if self.sock is None:
            self.sock = self._connect()
        sock = self.sock
        try:
            sock.sendall(request)
            status, head, length = self._read(sock)
        except (OSError, HTTPError):
            self.close()
            if not reused:
                raise
            # A server may drop a keep-alive connection that idled (the exporter
            # after 10 s, while slow naive scrapes run): reconnect once, as HTTP
            # clients do for a GET; the connect counts in this scrape's time.
            self.sock = sock = self._connect()
            try:
                sock.sendall(request)
                status, head, length = self._read(sock)
            except (OSError, HTTPError):
                self.close()
                raise
        seconds = time.perf_counter() - started
        if head.get("connection", "").lower() == "close" or self._closes:
            self.close()
        body = bytes(memoryview(self._body)[:length]) if keep_body else b""
        return Response(status, head, body, seconds, length)

    def _read(self, sock: socket.socket) -> tuple[int, dict[str, str], int]:
        buf = self._buf
        view = memoryview(buf)
        have = 0
        while True:
            if have == len(buf):
                raise HTTPError("response head too large")
            n = sock.recv_into(view[have:])
            if n == 0:
                raise HTTPError("connection closed before the response head")
            have += n
            end = buf.find(b"\r\n\r\n", 0, have)
            if end >= 0:
                break
        head_lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        version, status, *_ = head_lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in head_lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        self._closes = version == "HTTP/1.0" and \
            headers.get("connection", "").lower() != "keep-alive"
        start = end + 4
        length_text = headers.get("content-length")
        if length_text is None:  # read until the server closes
            chunks = [bytes(buf[start:have])]
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    break
                chunks.append(data)
            self._closes = True
            self._body = bytearray(b"".join(chunks))
            return int(status), headers, len(self._body)
        length = int(length_text)
        if length > MAX_BODY:
            raise HTTPError(f"body of {length} bytes")
        if len(self._body) < length:
            self._body = bytearray(length)
        body = self._body
        got = min(have - start, length)
        body[:got] = buf[start:start + got]
        bview = memoryview(body)
        while got < length:
            n = sock.recv_into(bview[got:])
            if n == 0:
                raise HTTPError("connection closed mid-body")
            got += n
        return int(status), headers, length

    _closes = False
