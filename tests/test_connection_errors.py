"""Connection failures in a user's words, with the host and port, never the HTTP
library's internal class names and never cut before the cause.

Real sockets on 127.0.0.1 throughout: a closed port (refused), a name that cannot
resolve (``nonexistent.invalid``, RFC 2606), a TLS server with a self-signed
certificate (untrusted), a proxy that is down and one that refuses the tunnel, and a
server that accepts but never answers (timeout). Then the same as a user meets it: the
exporter and the backfill as processes, their log, landing page and output.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import require_tool
from harness import ROOT, Subprocess, config_text, free_port, make_key, wait_until

from exporter.client import ConnectionFailed, ExecClient, Timeout

INTERNALS = ("_Deadline", "HTTPConnection", "Pool", "Max retries", "NewConnectionError",
             "urllib3", "object at 0x")


def fail(base_url: str, timeout: float = 5.0) -> str:
    """The message of the error one summary request against ``base_url`` raises."""
    client = ExecClient(base_url, make_key(), timeout)
    try:
        with pytest.raises((ConnectionFailed, Timeout)) as caught:
            client.summary("discovery-call", {})
    finally:
        client.close()
    message = str(caught.value)
    for word in INTERNALS:
        assert word not in message, message
    return message


@pytest.fixture
def closed_port() -> int:
    return free_port()  # bound, then released: nothing listens there now


class _Listener:
    """A loopback server running ``handle(conn)`` for every connection, in a thread."""

    def __init__(self, handle, wrap: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handle, self.wrap = handle, wrap
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            try:
                if self.wrap is not None:
                    conn = self.wrap.wrap_socket(conn, server_side=True)
                self.handle(conn)
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def listener() -> Iterator[type[_Listener]]:
    made: list[_Listener] = []

    def make(handle, wrap: ssl.SSLContext | None = None) -> _Listener:
        made.append(_Listener(handle, wrap))
        return made[-1]

    yield make  # type: ignore[misc]
    for one in made:
        one.close()


def test_refused(closed_port: int) -> None:
    assert fail(f"http://127.0.0.1:{closed_port}") == (
        f"127.0.0.1:{closed_port}: connection refused (nothing listens on that port)")


def test_name_not_found() -> None:
    message = fail("https://nonexistent.invalid:8443/rest/v1")
    if message.endswith("(timeout)"):
        pytest.skip("this machine's resolver does not answer; name-not-found untestable")
    assert message == "nonexistent.invalid:8443: name not found (DNS lookup failed)"


def test_tls_certificate_not_trusted(tmp_path: Path, listener) -> None:
    openssl = require_tool("openssl", "apt-get install openssl")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "k.pem", "-out",
                    "c.pem", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   cwd=tmp_path, check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    server = listener(lambda conn: conn.recv(1024), wrap=context)
    message = fail(f"https://127.0.0.1:{server.port}")
    assert message.startswith(f"127.0.0.1:{server.port}: TLS certificate not trusted "
                              "(self-signed certificate)"), message


def via_proxy(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    """Requests to https URLs go through a proxy on 127.0.0.1:``port``."""
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


def test_proxy_down(closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    via_proxy(monkeypatch, closed_port)
    assert fail("https://api.exec.test/rest/v1") == (
        f"proxy 127.0.0.1:{closed_port} (on the way to api.exec.test:443): connection "
        "refused (nothing listens on that port)")


def test_proxy_refuses_the_tunnel(listener, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        conn.close()

    proxy = listener(refuse)
    via_proxy(monkeypatch, proxy.port)
    assert fail("https://api.exec.test/rest/v1") == (
        f"proxy 127.0.0.1:{proxy.port} (on the way to api.exec.test:443): the proxy refused "
        "the connection (403 Forbidden)")


def test_no_answer_is_a_timeout_naming_the_host(listener) -> None:
    silent = listener(lambda conn: conn.recv(4096))  # reads the request, never answers
    assert fail(f"http://127.0.0.1:{silent.port}", timeout=0.5) == (
        f"127.0.0.1:{silent.port}: no complete answer within 0.5s (timeout)")


# --- as a user meets it --------------------------------------------------------------


def test_the_landing_page_and_the_log_say_connection_refused(tmp_path: Path,
                                                             closed_port: int) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(f"http://127.0.0.1:{closed_port}/rest/v1", ["discovery-call"],
                                  extra="planner: {mode: summary}\n"))
    with Subprocess(["--config.file", str(config)], {"EXEC_API_KEY": make_key()},
                    tmp_path / "exporter.log") as proc:
        proc.wait_serving()
        expected = f"127.0.0.1:{closed_port}: connection refused (nothing listens on that port)"
        page = wait_until(lambda: expected in proc.get("/").text and proc.get("/").text,
                          what="the error on the landing page")
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        logs = proc.logs()
    assert expected in logs
    for word in INTERNALS:
        assert word not in page and word not in logs


def test_the_backfill_says_connection_refused(tmp_path: Path, closed_port: int) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(f"http://127.0.0.1:{closed_port}", ["discovery-call"],
                                  extra="planner: {mode: summary}\n"))
    log = tmp_path / "backfill.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "backfill", f"--config.file={config}",
             "--since=1d", f"--output={tmp_path / 'out.om'}"], cwd=ROOT, stdout=sink,
            stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                           "EXEC_API_KEY": make_key()})
        try:
            # Its retries take a while: the first failure's line is enough.
            wait_until(lambda: "(try 1 of" in log.read_text(), timeout=30,
                       what="the backfill's first failure")
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    text = log.read_text()
    assert f"127.0.0.1:{closed_port}: connection refused (nothing listens on that port)" in text
    for word in INTERNALS:
        assert word not in text


def test_tls_to_a_plain_http_port_says_so(listener) -> None:
    plain = listener(lambda conn: (conn.recv(4096), conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")))
    assert fail(f"https://127.0.0.1:{plain.port}") == (
        f"127.0.0.1:{plain.port}: TLS handshake failed (WRONG_VERSION_NUMBER): the server does "
        "not speak TLS on that port (an http:// address?)")


def test_a_server_that_hangs_up_without_answering(listener) -> None:
    rude = listener(lambda conn: (conn.recv(4096), conn.close()))
    assert fail(f"http://127.0.0.1:{rude.port}") == (
        f"127.0.0.1:{rude.port}: the server closed the connection without answering")
