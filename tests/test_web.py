"""The hardened web endpoint: ``--web.config.file`` (TLS with client certificates,
bcrypt basic auth, headers) on every path, and a server that stalled, slow or
oversized clients cannot block.

Certificates are made at test time with the ``openssl`` command (a CA, a server
certificate for 127.0.0.1, a client certificate, and a second CA whose client
certificate must be refused).
"""

from __future__ import annotations

import base64
import concurrent.futures
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest
import requests
from e2e_helpers import require_tool
from fakeapi import FakeExecAPI, summary_body
from harness import InProcess, config_text, make_key, wait_until

from exporter import server as server_module
from exporter.config import ConfigError
from exporter.webconfig import load_web_config

PATHS = ["/metrics", "/", "/-/healthy", "/-/ready", "/nowhere"]
HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Strict-Transport-Security": "max-age=31536000"}
USER, PASSWORD = "prometheus", "correct horse battery staple"


# --- certificates --------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    # Skips without openssl, fails in CI (scripts/test.sh installs it).
    openssl = require_tool("openssl", "apt-get install openssl")
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
             "-subj", f"/CN={name}", cwd=d)


def _leaf(d: Path, name: str, ca: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext + "\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
             cwd=d)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    _leaf(d, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
          "extendedKeyUsage=serverAuth")
    _leaf(d, "client", "ca", "subjectAltName=DNS:prometheus.example\n"
          "extendedKeyUsage=clientAuth")
    _leaf(d, "intruder", "ca", "subjectAltName=DNS:intruder.example\n"
          "extendedKeyUsage=clientAuth")
    _leaf(d, "rogue-client", "rogue-ca", "extendedKeyUsage=clientAuth")
    _leaf(d, "renewed", "rogue-ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
          "extendedKeyUsage=serverAuth")
    return d


# --- the exporter ----------------------------------------------------------------


@pytest.fixture(scope="module")
def api() -> Iterator[FakeExecAPI]:
    fake = FakeExecAPI(make_key()).start()
    fake.set_summary("discovery-call", summary_body())
    try:
        yield fake
    finally:
        fake.stop()


def start(tmp_path: Path, api: FakeExecAPI, web_yaml: str | None) -> InProcess:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(api.base_url, ["discovery-call"], refresh="10m"))
    web_config = None
    scheme = "http"
    if web_yaml is not None:
        path = tmp_path / "web.yml"
        path.write_text(web_yaml)
        web_config = load_web_config(path)
        scheme = "https" if "tls_server_config" in web_yaml else "http"
    return InProcess(config, api.api_key, web_config=web_config, scheme=scheme)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def htpasswd_hash(password: str) -> str:
    # htpasswd -B writes $2y$; exporter-toolkit configs usually carry that form.
    return "$2y$" + bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()[4:]


# --- TLS --------------------------------------------------------------------------


def test_tls_serves_every_path(tmp_path: Path, api: FakeExecAPI, certs: Path) -> None:
    web = f"""
tls_server_config:
  cert_file: {certs}/server.crt
  key_file: {certs}/server.key
"""
    with start(tmp_path, api, web) as exporter:
        for path in PATHS:
            response = exporter.get(path, verify=str(certs / "ca.crt"))
            assert response.status_code in (200, 404, 503), path
        # Plain HTTP to the TLS port gets nothing useful, and the server carries on.
        with pytest.raises(requests.RequestException):
            requests.get(f"http://127.0.0.1:{exporter.port}/metrics", timeout=3)
        assert exporter.get("/metrics", verify=str(certs / "ca.crt")).status_code == 200


def test_client_certificates_required_and_verified(tmp_path: Path, api: FakeExecAPI,
                                                   certs: Path) -> None:
    web = f"""
tls_server_config:
  cert_file: {certs}/server.crt
  key_file: {certs}/server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {certs}/ca.crt
"""
    verify = str(certs / "ca.crt")
    with start(tmp_path, api, web) as exporter:
        good = (str(certs / "client.crt"), str(certs / "client.key"))
        rogue = (str(certs / "rogue-client.crt"), str(certs / "rogue-client.key"))
        for path in PATHS:
            assert exporter.get(path, verify=verify, cert=good).status_code in (200, 404, 503)
        with pytest.raises(requests.RequestException):
            exporter.get("/metrics", verify=verify)  # no certificate
        with pytest.raises(requests.RequestException):
            exporter.get("/metrics", verify=verify, cert=rogue)  # not signed by the CA
        assert exporter.get("/metrics", verify=verify, cert=good).status_code == 200


def test_client_allowed_sans(tmp_path: Path, api: FakeExecAPI, certs: Path) -> None:
    web = f"""
tls_server_config:
  cert_file: {certs}/server.crt
  key_file: {certs}/server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {certs}/ca.crt
  client_allowed_sans: [prometheus.example]
"""
    verify = str(certs / "ca.crt")
    with start(tmp_path, api, web) as exporter:
        good = (str(certs / "client.crt"), str(certs / "client.key"))
        other = (str(certs / "intruder.crt"), str(certs / "intruder.key"))
        assert exporter.get("/metrics", verify=verify, cert=good).status_code == 200
        with pytest.raises(requests.RequestException):
            exporter.get("/metrics", verify=verify, cert=other)  # right CA, wrong name
        assert exporter.get("/metrics", verify=verify, cert=good).status_code == 200


def test_renewed_certificate_is_used_without_a_restart(tmp_path: Path, api: FakeExecAPI,
                                                       certs: Path) -> None:
    for name in ("server.crt", "server.key"):
        shutil.copy(certs / name, tmp_path / name)
    web = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    with start(tmp_path, api, web) as exporter:
        assert exporter.get("/-/healthy", verify=str(certs / "ca.crt")).status_code == 200
        # cert-manager (or a person) renews: the new pair is from another CA here.
        shutil.copy(certs / "renewed.key", tmp_path / "server.key")
        shutil.copy(certs / "renewed.crt", tmp_path / "server.crt")
        wait_until(lambda: exporter.get("/-/healthy", verify=str(certs / "rogue-ca.crt"),
                                        timeout=2).status_code == 200,
                   5, what="the renewed certificate served")


def test_web_config_edits_apply_live_and_a_bad_edit_keeps_the_last_good(
        tmp_path: Path, api: FakeExecAPI, caplog: pytest.LogCaptureFixture) -> None:
    web = f"basic_auth_users:\n  {USER}: {htpasswd_hash(PASSWORD)}\n"
    with start(tmp_path, api, web) as exporter:
        assert exporter.get("/metrics", headers=basic(USER, PASSWORD)).status_code == 200
        (tmp_path / "web.yml").write_text(
            f"basic_auth_users:\n  {USER}: {htpasswd_hash('new password')}\n")
        wait_until(lambda: exporter.get("/metrics", headers=basic(USER, "new password"))
                   .status_code == 200, 5, what="the new password accepted")
        assert exporter.get("/metrics", headers=basic(USER, PASSWORD)).status_code == 401
        (tmp_path / "web.yml").write_text("basic_auth_users: [oops\n")
        time.sleep(1.5)
        assert exporter.get("/metrics", headers=basic(USER, "new password")).status_code == 200
        assert exporter.get("/metrics").status_code == 401
        assert any("web config" in r.getMessage() and r.levelname == "WARNING"
                   for r in caplog.records)


def test_min_version_is_enforced(tmp_path: Path, api: FakeExecAPI, certs: Path) -> None:
    web = f"""
tls_server_config:
  cert_file: {certs}/server.crt
  key_file: {certs}/server.key
  min_version: TLS13
"""
    with start(tmp_path, api, web) as exporter:
        old = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, OSError)), socket.create_connection(
                ("127.0.0.1", exporter.port), timeout=3) as raw, old.wrap_socket(
                raw, server_hostname="127.0.0.1"):
            pass
        new = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        with socket.create_connection(("127.0.0.1", exporter.port), timeout=3) as raw, \
                new.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() == "TLSv1.3"


@pytest.mark.parametrize(("web", "problem"), [
    ("tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n",
     "tls_server_config.cert_file"),
    ("tls_server_config:\n  cert_file: {d}/server.crt\n  key_file: {d}/server.key\n"
     "  client_auth_type: RequireAndVerifyClientCert\n", "client_ca_file"),
    ("tls_server_config:\n  cert_file: {d}/server.crt\n  key_file: {d}/server.key\n"
     "  min_version: TLS99\n", "min_version"),
    ("basic_auth_users:\n  prometheus: plaintext\n", "basic_auth_users.prometheus"),
    ("http_server_config:\n  headers:\n    Set-Cookie: a=b\n", "Set-Cookie"),
    ("tls_config: {{}}\n", "tls_config"),
    ("tls_server_config:\n  cert_file: {d}/server.crt\n  key_file: {d}/server.key\n"
     "  client_auth_type: RequireAnyClientCert\n", "client_ca_file"),
    ("tls_server_config:\n  cert_file: {d}/server.crt\n  key_file: {d}/server.key\n"
     "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "cipher_suites"),
    ("tls_server_config:\n  cert_file: {d}/server.crt\n  key_file: {d}/server.key\n"
     "  client_allowed_sans: [prometheus.example]\n", "client_allowed_sans"),
])
def test_bad_web_config_is_refused_with_the_field(tmp_path: Path, certs: Path, web: str,
                                                  problem: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(web.format(d=certs))
    with pytest.raises(ConfigError) as info:
        load_web_config(path)
    assert any(problem in p for p in info.value.problems), info.value.problems


# --- basic auth and headers ------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, api: FakeExecAPI) -> Iterator[InProcess]:
    headers = "\n".join(f"    {k}: {v}" for k, v in HEADERS.items())
    web = f"""
basic_auth_users:
  {USER}: {htpasswd_hash(PASSWORD)}
  other: {htpasswd_hash("other password")}
http_server_config:
  headers:
{headers}
"""
    with start(tmp_path_factory.mktemp("guarded"), api, web) as exporter:
        yield exporter


@pytest.mark.parametrize("path", PATHS)
def test_basic_auth_on_every_path(guarded: InProcess, path: str) -> None:
    assert guarded.get(path, headers=basic(USER, PASSWORD)).status_code in (200, 404, 503)
    for headers in ({}, basic(USER, "wrong"), basic("nobody", PASSWORD),
                    basic("other", PASSWORD), {"Authorization": "Basic !!!notbase64"},
                    {"Authorization": "Bearer " + PASSWORD},
                    {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}):
        response = guarded.get(path, headers=headers)
        assert response.status_code == 401, headers


def test_401_gives_no_detail(guarded: InProcess) -> None:
    bodies = set()
    for headers in ({}, basic(USER, "wrong"), basic("nobody", "x")):
        response = guarded.get("/metrics", headers=headers)
        assert response.status_code == 401
        bodies.add(response.text)
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        assert "exec_" not in response.text
    assert len(bodies) == 1  # a wrong password and an unknown user look the same
    (body,) = bodies
    assert len(body) < 40 and "password" not in body.lower() and "user" not in body.lower()


def test_reload_is_guarded_too(guarded: InProcess) -> None:
    assert guarded.post("/-/reload").status_code == 401
    assert guarded.post("/-/reload", headers=basic(USER, "wrong")).status_code == 401


@pytest.mark.parametrize("path", PATHS)
def test_headers_on_every_path_and_status(guarded: InProcess, path: str) -> None:
    for headers in ({}, basic(USER, PASSWORD)):
        response = guarded.get(path, headers=headers)
        for name, value in HEADERS.items():
            assert response.headers.get(name) == value, (path, response.status_code, name)


def test_auth_scheme_is_case_insensitive(guarded: InProcess) -> None:
    token = basic(USER, PASSWORD)["Authorization"].split(" ", 1)[1]
    assert guarded.get("/metrics", headers={"Authorization": f"basic {token}"}).status_code == 200


def test_unknown_user_costs_as_much_bcrypt_as_a_known_one(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  {USER}: "
                    f"{bcrypt.hashpw(b'x', bcrypt.gensalt(10)).decode()}\n")
    config = load_web_config(path)
    assert config._dummy_hash is not None and config._dummy_hash.startswith(b"$2b$10$")


def test_right_password_stays_fast(guarded: InProcess) -> None:
    guarded.get("/metrics", headers=basic(USER, PASSWORD))
    started = time.monotonic()
    for _ in range(20):
        assert guarded.get("/metrics", headers=basic(USER, PASSWORD)).status_code == 200
    assert (time.monotonic() - started) / 20 < 0.1


# --- stalled, slow, many and oversized clients ---------------------------------------------


@pytest.fixture
def plain(tmp_path: Path, api: FakeExecAPI) -> Iterator[InProcess]:
    with start(tmp_path, api, None) as exporter:
        wait_until(lambda: exporter.get("/-/ready").status_code == 200, 5, what="ready")
        yield exporter


def _stall(port: int, count: int, send: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if send:
            s.sendall(send)
        socks.append(s)
    return socks


def _close(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def _scrapes_stay_fast(get: Callable[[], requests.Response], times: int) -> None:
    """After the stalled connections settle, ``times`` scrapes each answer within 1 s."""
    time.sleep(0.2)
    for _ in range(times):
        started = time.monotonic()
        assert get().status_code == 200
        assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("send", [b"", b"GET /metrics HTTP/1.1\r\nHost: x\r\n"],
                         ids=["silent", "half-request"])
def test_100_stalled_connections_do_not_block_metrics(plain: InProcess, send: bytes) -> None:
    socks = _stall(plain.port, 100, send)
    try:
        _scrapes_stay_fast(lambda: plain.get("/metrics", timeout=2), 5)
    finally:
        _close(socks)


def test_100_stalled_tls_handshakes_do_not_block_metrics(tmp_path: Path, api: FakeExecAPI,
                                                         certs: Path) -> None:
    web = f"tls_server_config:\n  cert_file: {certs}/server.crt\n  key_file: {certs}/server.key\n"
    with start(tmp_path, api, web) as exporter:
        socks = _stall(exporter.port, 100)
        try:
            _scrapes_stay_fast(
                lambda: exporter.get("/metrics", verify=str(certs / "ca.crt"), timeout=2), 1)
        finally:
            _close(socks)


def test_more_stalled_connections_than_the_cap_do_not_lock_out_a_scrape(
        tmp_path: Path, api: FakeExecAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the connection cap, the connection that has waited longest for its
    request is hung up on to make room, so a scrape always gets in."""
    monkeypatch.setattr(server_module, "MAX_CONNECTIONS", 20)
    with start(tmp_path, api, None) as exporter:
        socks = _stall(exporter.port, 60)
        try:
            _scrapes_stay_fast(lambda: exporter.get("/metrics", timeout=2), 3)
        finally:
            _close(socks)


def test_many_concurrent_scrapes(plain: InProcess) -> None:
    def scrape(_: int) -> float:
        started = time.monotonic()
        assert plain.get("/metrics", headers={"Accept-Encoding": "gzip"}).status_code == 200
        return time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        durations = list(pool.map(scrape, range(200)))
    assert max(durations) < 2.0


def test_stalled_connection_is_dropped_after_the_socket_timeout(
        tmp_path: Path, api: FakeExecAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module.Handler, "timeout", 0.5)
    with start(tmp_path, api, None) as exporter:
        (silent,) = _stall(exporter.port, 1)
        silent.settimeout(5)
        started = time.monotonic()
        assert silent.recv(100) == b""  # closed by the server
        assert time.monotonic() - started < 3
        silent.close()


def test_trickling_client_is_dropped_after_the_request_head_deadline(
        tmp_path: Path, api: FakeExecAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that sends one byte just inside every socket timeout must not hold
    its connection (and a thread) forever: the whole request head has a deadline."""
    monkeypatch.setattr(server_module.Handler, "timeout", 1.0)
    monkeypatch.setattr(server_module, "REQUEST_HEAD_TIMEOUT", 1.5, raising=True)
    with start(tmp_path, api, None) as exporter:
        (slow,) = _stall(exporter.port, 1)
        slow.settimeout(0.1)
        started = time.monotonic()
        closed = False
        for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            try:
                slow.sendall(bytes([byte]))
                if slow.recv(100) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except OSError:
                closed = True
                break
            time.sleep(0.4)
            if time.monotonic() - started > 6:
                break
        slow.close()
        assert closed
        assert time.monotonic() - started < 4


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # nothing more is coming
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


def test_oversized_requests_are_refused(plain: InProcess) -> None:
    port = plain.port
    long_line = b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _status(_raw(port, long_line)) == 414
    long_header = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    assert _status(_raw(port, long_header)) == 431
    many = b"GET /metrics HTTP/1.1\r\n" + b"".join(
        f"X-H{i}: v\r\n".encode() for i in range(200)) + b"\r\n"
    assert _status(_raw(port, many)) == 431
    assert plain.get("/metrics").status_code == 200


def test_large_post_body_is_refused_before_reload(plain: InProcess) -> None:
    response = plain.post("/-/reload", data=b"x" * 200_000)
    assert response.status_code == 413
    assert plain.value("exec_exporter_config_last_reload_successful") == 1


def test_garbage_does_not_hurt(plain: InProcess) -> None:
    for data in (b"\x16\x03\x01\x00\xff" + b"\x00" * 300, b"\r\n\r\n", b"GET\r\n\r\n",
                 b"BREW /pot HTTP/1.1\r\n\r\n", b"GET /metrics HTTP/9.9\r\n\r\n"):
        _raw(plain.port, data)
    assert plain.get("/metrics").status_code == 200
