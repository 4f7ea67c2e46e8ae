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
import errno
import hashlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest
import requests
from e2e_helpers import require_tool
from fakeapi import FakeExecAPI, summary_body
from harness import ROOT, InProcess, Subprocess, config_text, free_port, make_key, wait_until

from exporter import server as server_module
from exporter import webconfig
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
    ("tls_server_config:\n  cert_file: {d}/server.crt\n  key_file: {d}/server.key\n"
     "  max_version: [TLS13]\n", "max_version"),
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
  {LONG_USER}: {htpasswd_hash(LONG_PASSWORD)}
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


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\n" + b"".join(f"X-H{i}: v\r\n".encode() for i in range(200))
     + b"\r\n", 431),
    (b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 501),
], ids=["malformed", "too-many-headers", "http-2", "unknown-method"])
def test_headers_on_refused_requests_too(guarded: InProcess, head: bytes, status: int) -> None:
    """Requests refused before routing (malformed, oversized, unsupported) get the
    configured headers as every other answer does, and a closed connection."""
    reply = _raw(guarded.port, head)
    assert _status(reply) == status
    fields = reply.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
    for name, value in {**HEADERS, "Connection": "close"}.items():
        assert f"{name}: {value}" in fields, (status, fields)


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


def _count_bcrypt(monkeypatch: pytest.MonkeyPatch,
                  delay: float = 0.0) -> list[tuple[bytes, bytes]]:
    """Record every bcrypt check (password, hash), optionally made slower."""
    calls: list[tuple[bytes, bytes]] = []
    real = bcrypt.checkpw

    def checkpw(password: bytes, hashed: bytes) -> bool:
        calls.append((password, hashed))
        time.sleep(delay)
        return real(password, hashed)

    monkeypatch.setattr(webconfig.bcrypt, "checkpw", checkpw)
    return calls


LONG_USER, LONG_PASSWORD = "long", "L" * 72  # bcrypt's limit exactly
WRONG_PASSWORDS = ["", "x", "wrong", "a" * 72, "a" * 73, "a" * 500, PASSWORD + "x" * 60,
                   "é" * 40, LONG_PASSWORD + "x", LONG_PASSWORD + "y" * 300]


@pytest.mark.parametrize("user", [USER, LONG_USER, "nobody", "n\u00f6body" * 30])
def test_every_wrong_password_gets_401_whatever_its_length(guarded: InProcess,
                                                           user: str) -> None:
    """bcrypt 5 raises on passwords over 72 bytes and bcrypt 4 ignores the rest: either
    way a long wrong password, for a known user or not, is a plain 401 (an unknown
    user's used to drop the connection)."""
    for password in WRONG_PASSWORDS:
        response = guarded.get("/metrics", headers=basic(user, password))
        assert response.status_code == 401, (user, len(password))
        assert response.text == "Unauthorized\n"
    assert guarded.get("/metrics", headers=basic(LONG_USER, LONG_PASSWORD)).status_code == 200


def test_every_wrong_credential_costs_one_check_at_the_same_cost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Known or unknown user, short or long password: one bcrypt check each, against
    a hash of the configured cost, with at most 72 bytes, so neither the answer nor
    its cost tells them apart."""
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  {USER}: "
                    f"{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(5)).decode()}\n")
    config = load_web_config(path)
    calls = _count_bcrypt(monkeypatch)
    for user in (USER, "nobody"):
        for password in WRONG_PASSWORDS:
            before = len(calls)
            assert config.check_auth(basic(user, password)["Authorization"]) is False
            assert len(calls) == before + 1, (user, len(password))
    assert {hashed[:7] for _, hashed in calls} == {b"$2b$05$"}
    assert max(len(password) for password, _ in calls) == 72


def test_remembered_credentials_are_keyed_digests(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  {USER}: {htpasswd_hash(PASSWORD)}\n")
    config = load_web_config(path)
    assert config.check_auth(basic(USER, PASSWORD)["Authorization"])
    (token,) = config._verified
    assert PASSWORD.encode() not in token
    assert token != hashlib.sha256(f"{USER}:{PASSWORD}".encode()).digest()  # keyed


def test_bcrypt_checks_run_a_few_at_a_time(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  {USER}: {htpasswd_hash(PASSWORD)}\n")
    config = load_web_config(path)
    running, most = 0, 0
    lock = threading.Lock()
    real = bcrypt.checkpw

    def checkpw(password: bytes, hashed: bytes) -> bool:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return real(password, hashed)

    monkeypatch.setattr(webconfig.bcrypt, "checkpw", checkpw)
    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        results = list(pool.map(lambda i: config.check_auth(
            basic("nobody" if i % 2 else USER, f"wrong {i}")["Authorization"]), range(60)))
    assert results == [False] * 60
    assert 1 <= most <= webconfig.BCRYPT_CONCURRENCY


def test_a_check_that_cannot_start_in_time_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """While every bcrypt slot is taken for longer than BCRYPT_WAIT, even the right
    password gets a plain False (401) instead of queueing without end; cached
    credentials do not need a slot."""
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  {USER}: {htpasswd_hash(PASSWORD)}\n"
                    f"  other: {htpasswd_hash('other password')}\n")
    config = load_web_config(path)
    assert config.check_auth(basic(USER, PASSWORD)["Authorization"])  # now cached
    monkeypatch.setattr(webconfig, "BCRYPT_WAIT", 0.1)
    monkeypatch.setattr(webconfig, "_overload_logged", -1e9)
    for _ in range(webconfig.BCRYPT_CONCURRENCY):
        assert webconfig._BCRYPT_SLOTS.acquire(timeout=5)
    try:
        assert not config.check_auth(basic("other", "other password")["Authorization"])
        assert config.check_auth(basic(USER, PASSWORD)["Authorization"])
    finally:
        for _ in range(webconfig.BCRYPT_CONCURRENCY):
            webconfig._BCRYPT_SLOTS.release()
    assert config.check_auth(basic("other", "other password")["Authorization"])
    assert any("flood of wrong passwords" in r.getMessage() for r in caplog.records)


def test_a_flood_of_wrong_passwords_does_not_starve_the_authorised_scrape(
        tmp_path: Path, api: FakeExecAPI) -> None:
    """100 clients send wrong passwords at once (real bcrypt, cost 8); the authorised
    scrape, whose credentials succeeded before, gets its 200 while most of the flood
    is still waiting for its 401s. (Its latency is in the report of
    benchmarks/auth_flood.py, not asserted here.)"""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(8)).decode()
    with start(tmp_path, api, f"basic_auth_users:\n  {USER}: {hashed}\n") as exporter:
        assert exporter.get("/metrics", headers=basic(USER, PASSWORD)).status_code == 200
        flood = []
        for i in range(100):
            s = socket.create_connection(("127.0.0.1", exporter.port), timeout=60)
            creds = basic(USER if i % 2 else "nobody", f"wrong {i}" * (i % 20))
            s.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      f"Authorization: {creds['Authorization']}\r\n\r\n".encode())
            flood.append(s)
        try:
            response = exporter.get("/metrics", headers=basic(USER, PASSWORD), timeout=30)
            assert response.status_code == 200
            # The flood was not over yet: some wrong-password clients have no answer.
            pending = 0
            for s in flood:
                s.setblocking(False)
                try:
                    s.recv(1, socket.MSG_PEEK)
                except BlockingIOError:
                    pending += 1
            assert pending > 0
            for s in flood:
                s.setblocking(True)
                assert _status(_read_all(s)) == 401
        finally:
            _close(flood)


def test_a_right_password_is_checked_by_bcrypt_once(
        guarded: InProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials that succeeded are remembered: later scrapes skip bcrypt (whose
    cost is the point of it); wrong ones are checked every time."""
    config = guarded.exporter.server.web.web_config
    config._verified.clear()  # as if no scrape had succeeded yet
    calls = _count_bcrypt(monkeypatch)
    for _ in range(5):
        assert guarded.get("/metrics", headers=basic(USER, PASSWORD)).status_code == 200
    assert len(calls) == 1
    for _ in range(3):
        assert guarded.get("/metrics", headers=basic(USER, "wrong")).status_code == 401
    assert len(calls) == 4


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
    """After the stalled connections settle, ``times`` scrapes each answer (``get``
    bounds the wait; how fast they answer is measured in benchmarks/, not asserted)."""
    time.sleep(0.2)
    for _ in range(times):
        assert get().status_code == 200


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


def test_past_the_cap_a_stalled_connection_makes_room_after_tls_scrapes(
        tmp_path: Path, api: FakeExecAPI, certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TLS connection's handshake deadline ends with its handshake, so finished TLS
    connections leave nothing behind that the cap's eviction could pick instead of a
    stalled connection."""
    monkeypatch.setattr(server_module, "MAX_CONNECTIONS", 5)
    web = f"tls_server_config:\n  cert_file: {certs}/server.crt\n  key_file: {certs}/server.key\n"
    verify = str(certs / "ca.crt")
    with start(tmp_path, api, web) as exporter:
        for _ in range(3):
            assert exporter.get("/-/healthy", verify=verify).status_code == 200
        socks = _stall(exporter.port, 5)
        try:
            _scrapes_stay_fast(lambda: exporter.get("/metrics", verify=verify, timeout=2), 1)
        finally:
            _close(socks)


def test_a_stalled_tls_handshake_is_dropped_at_the_request_head_deadline(
        tmp_path: Path, api: FakeExecAPI, certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The head deadline covers the TLS handshake: a client that never completes it is
    hung up on at the deadline, long before its socket timeout."""
    monkeypatch.setattr(server_module, "SOCKET_TIMEOUT", 60.0)
    monkeypatch.setattr(server_module, "REQUEST_HEAD_TIMEOUT", 0.5)
    web = f"tls_server_config:\n  cert_file: {certs}/server.crt\n  key_file: {certs}/server.key\n"
    with start(tmp_path, api, web) as exporter:
        (silent,) = _stall(exporter.port, 1)
        silent.settimeout(10)  # far below the socket timeout: only the deadline closes it
        try:
            assert silent.recv(100) == b""
        finally:
            silent.close()


def test_many_concurrent_scrapes(plain: InProcess) -> None:
    def scrape(_: int) -> int:
        return plain.get("/metrics", headers={"Accept-Encoding": "gzip"},
                         timeout=10).status_code

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        assert set(pool.map(scrape, range(200))) == {200}


def test_stalled_connection_is_dropped_after_the_socket_timeout(
        tmp_path: Path, api: FakeExecAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module.Handler, "timeout", 0.5)
    with start(tmp_path, api, None) as exporter:
        (silent,) = _stall(exporter.port, 1)
        # Closed by the server within the wait, though the head deadline (10 s) is
        # further off: the socket timeout did it.
        silent.settimeout(5)
        assert silent.recv(100) == b""
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
        # Trickled to the end, the head would take ~50 s: only the deadline closes it
        # within the loop's 6 s.
        assert closed


def _read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return b"".join(chunks)


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # nothing more is coming
        return _read_all(s)


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


def test_chunked_post_body_gets_411_and_a_closed_connection(plain: InProcess) -> None:
    reply = _exchange(plain.port, b"POST /-/reload HTTP/1.1\r\nHost: x\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert _status(reply) == 411
    assert reply.count(b"HTTP/1.1 ") == 1  # the pipelined request was not served
    assert plain.value("exec_exporter_config_last_reload_successful") == 1


def test_garbage_does_not_hurt(plain: InProcess) -> None:
    for data in (b"\x16\x03\x01\x00\xff" + b"\x00" * 300, b"\r\n\r\n", b"GET\r\n\r\n",
                 b"BREW /pot HTTP/1.1\r\n\r\n", b"GET /metrics HTTP/9.9\r\n\r\n"):
        _raw(plain.port, data)
    assert plain.get("/metrics").status_code == 200


# --- malformed request heads ------------------------------------------------------------

VALID = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"


def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` with a valid request pipelined behind it, keep the sending side
    open, and read until the server closes: a server that answered and went on would
    answer the second request too (or leave the connection open: a timeout here)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data + VALID)
        reply = b""
        while chunk := s.recv(65536):  # TimeoutError if the server kept it open
            reply += chunk
        return reply


@pytest.mark.parametrize("head", [
    b"GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept\t: */*\r\n\r\n",
    b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\ncontent-length: 5\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YTpi\r\n"
    b"Authorization: Basic YzpkZA==\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET /metrics HTTP/1.1\nHost: x\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\nAccept: */*\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\n\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
    b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /metrics\r\n\r\n",
], ids=["space-before-colon", "tab-before-colon", "duplicate-content-length",
        "conflicting-content-length", "duplicate-authorization", "duplicate-host",
        "bare-lf-request-line", "bare-lf-header", "bare-lf-end", "folded-header", "nul",
        "length-and-chunked", "space-in-target", "http-0.9"])
def test_malformed_heads_get_400_and_a_closed_connection(plain: InProcess,
                                                         head: bytes) -> None:
    reply = _exchange(plain.port, head)
    assert _status(reply) == 400, reply[:200]
    assert reply.count(b"HTTP/1.1 ") == 1  # the pipelined request was not served
    assert plain.get("/-/healthy").status_code == 200


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    (b"GET /metrics HTTP/1.1\r\n" + b"".join(f"X-H{i}: v\r\n".encode() for i in range(200))
     + b"\r\n", 431),
    (b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n", 505),
], ids=["long-request-line", "long-header-line", "too-many-headers", "http-2"])
def test_oversized_heads_are_refused_and_closed(plain: InProcess, head: bytes,
                                                status: int) -> None:
    reply = _exchange(plain.port, head)
    assert _status(reply) == status
    assert reply.count(b"HTTP/1.1 ") == 1


def test_well_formed_heads_keep_the_connection(plain: InProcess) -> None:
    """The strict parser still reads what real clients send: optional whitespace,
    any header case, a body on POST, several requests on one connection."""
    heads = [b"GET /-/healthy HTTP/1.1\r\nhost:x\r\nACCEPT:\t*/*\t\r\n\r\n",
             b"GET //-/healthy?x=1 HTTP/1.1\r\nHost: x\r\nX-Empty:\r\n\r\n",
             b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
             b"GET /-/healthy HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"]
    with socket.create_connection(("127.0.0.1", plain.port), timeout=5) as s:
        s.sendall(b"".join(heads) + b"GET /-/healthy HTTP/1.1\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)]
    assert statuses == [200, 200, 405, 200, 200]


# --- content negotiation ----------------------------------------------------------------


@pytest.mark.parametrize(("accept_encoding", "gzipped"), [
    ("gzip", True), ("gzip;q=0", False), ("GZIP; Q=0.5", True), ("gzip;q=0.001", True),
    ("*", True), ("*;q=0", False), ("gzip;q=0, *", False), ("identity;q=0", False),
    ("identity;q=1, gzip;q=0.5", False), ("gzip, identity;q=0.5", True),
    ("deflate, br", False), ("", False), ("gzip;q=nonsense", False), ("x-gzip", True),
])
def test_accept_encoding_q_values(plain: InProcess, accept_encoding: str,
                                  gzipped: bool) -> None:
    response = plain.get("/metrics", headers={"Accept-Encoding": accept_encoding})
    assert response.status_code == 200
    assert (response.headers.get("Content-Encoding") == "gzip") is gzipped
    assert response.headers["Vary"] == "Accept-Encoding, Accept"
    assert "exec_exporter_" in response.text


@pytest.mark.parametrize(("accept", "openmetrics"), [
    ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", True),
    ("application/openmetrics-text;version=1.0.0;q=0", False),
    ("text/plain;q=1, application/openmetrics-text;q=0.5", False),
    ("text/plain", False), ("*/*", False),
])
def test_accept_q_values(plain: InProcess, accept: str, openmetrics: bool) -> None:
    response = plain.get("/metrics", headers={"Accept": accept, "Accept-Encoding": "gzip"})
    assert response.headers["Content-Type"].startswith(
        "application/openmetrics-text" if openmetrics else "text/plain")
    assert response.headers["Vary"] == "Accept-Encoding, Accept"


def test_vary_on_head_requests_too(plain: InProcess) -> None:
    response = requests.head(f"{plain.url}/metrics", timeout=5)
    assert response.headers["Vary"] == "Accept-Encoding, Accept"


# --- listen address ------------------------------------------------------------------


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _cli(tmp_path: Path, api: FakeExecAPI, port: int, listen: str) -> Subprocess:
    """The exporter as a process on ``port``, listening as ``listen`` says."""
    config = tmp_path / "config.yaml"
    config.write_text(config_text(api.base_url, ["discovery-call"], refresh="10m"))
    return Subprocess([f"--config.file={config}", f"--web.listen-address={listen}"],
                      {"EXEC_API_KEY": api.api_key}, tmp_path / "exporter.log", port=port)


def _run_cli(tmp_path: Path, api: FakeExecAPI, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(api.base_url, ["discovery-call"], refresh="10m"))
    env = {k: v for k, v in os.environ.items() if k != "EXEC_API_KEY"}
    env["EXEC_API_KEY"] = api.api_key
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "exporter", f"--config.file={config}",
                           "--log.level=warn", *args],
                          capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)


def test_port_alone_listens_on_ipv4_and_ipv6(tmp_path: Path, api: FakeExecAPI) -> None:
    port = free_port()
    with _cli(tmp_path, api, port, f":{port}") as proc:
        proc.wait_serving()  # over 127.0.0.1
        if not _has_ipv6_loopback():
            pytest.skip("this machine has no IPv6 loopback; IPv4 half passed")
        assert requests.get(f"http://[::1]:{port}/-/healthy", timeout=5).status_code == 200


def test_an_ipv6_address_in_brackets(tmp_path: Path, api: FakeExecAPI) -> None:
    if not _has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback")
    port = free_port()
    with _cli(tmp_path, api, port, f"[::1]:{port}") as proc:
        wait_until(lambda: requests.get(f"http://[::1]:{port}/-/healthy", timeout=1)
                   .status_code == 200, 15, what="the exporter on [::1]")
        assert proc.proc.poll() is None
        with pytest.raises(requests.ConnectionError):  # that address only
            requests.get(f"http://127.0.0.1:{port}/-/healthy", timeout=5)


def test_all_addresses_fall_back_to_ipv4_without_ipv6(
        plain: InProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    real = server_module.ExporterHTTPServer.server_bind

    def no_ipv6(self: server_module.ExporterHTTPServer) -> None:
        if self.address_family == socket.AF_INET6:
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        real(self)

    monkeypatch.setattr(server_module.ExporterHTTPServer, "server_bind", no_ipv6)
    server = server_module.serve(server_module.parse_listen_address(":0"),
                                 plain.exporter.server.web)
    try:
        assert server.address_family == socket.AF_INET
        port = server.server_address[1]
        assert requests.get(f"http://127.0.0.1:{port}/-/healthy", timeout=5).status_code == 200
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("address", "expected"), [
    (":10025", ("::", 10025)), ("0.0.0.0:1", ("0.0.0.0", 1)), ("[::1]:0", ("::1", 0)),
    ("localhost:65535", ("localhost", 65535)), ("[::]:10025", ("::", 10025)),
])
def test_listen_addresses_parse(address: str, expected: tuple[str, int]) -> None:
    assert server_module.parse_listen_address(address) == expected


@pytest.mark.parametrize(("address", "says"), [
    (":70000", "port 70000 is out of range (0-65535)"),
    ("127.0.0.1:http", "not a number"),
    ("10025", "no port"),
    ("::1:10025", "IPv6 address goes in brackets"),
    ("[]:10025", "empty brackets"),
])
def test_bad_listen_address_exits_2_naming_it(tmp_path: Path, api: FakeExecAPI, address: str,
                                              says: str) -> None:
    result = _run_cli(tmp_path, api, f"--web.listen-address={address}")
    assert result.returncode == 2
    assert says in result.stderr and repr(address) in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_listen_host_exits_2_naming_it(tmp_path: Path, api: FakeExecAPI) -> None:
    result = _run_cli(tmp_path, api, "--web.listen-address=no-such-host.invalid:10025")
    assert result.returncode == 2
    assert "--web.listen-address=no-such-host.invalid:10025" in result.stderr
    assert "unknown host 'no-such-host.invalid'" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_clear_line(tmp_path: Path, api: FakeExecAPI) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run_cli(tmp_path, api, f"--web.listen-address=127.0.0.1:{port}")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert f"127.0.0.1:{port}" in line and "already in use" in line
    assert "another exporter or the demo may be running" in line
    assert "choose another with --web.listen-address" in line


# --- response heads ---------------------------------------------------------------


def _stdlib_head(status: int, date: str, fields: list[tuple[str, str]]) -> bytes:
    """The head the standard library's send_response and send_header write."""
    reference = server_module.Handler.__new__(server_module.Handler)
    reference.request_version = "HTTP/1.1"
    reference.requestline = "GET / HTTP/1.1"
    reference.client_address = ("127.0.0.1", 0)
    reference.date_time_string = lambda timestamp=None: date  # type: ignore[method-assign]
    reference.send_response(status)
    for name, value in fields:
        reference.send_header(name, value)
    reference.end_headers = lambda: None  # type: ignore[method-assign]
    return b"".join(reference._headers_buffer) + b"\r\n"


@pytest.mark.parametrize(("path", "request_headers", "status", "fields"), [
    ("/metrics", {"Accept-Encoding": "gzip"}, 200,
     [("Content-Type", server_module.TEXT_CONTENT_TYPE),
      ("Vary", "Accept-Encoding, Accept"), ("Content-Encoding", "gzip")]),
    ("/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}, 200,
     [("Content-Type", server_module.OPENMETRICS_CONTENT_TYPE),
      ("Vary", "Accept-Encoding, Accept")]),
    ("/-/healthy", {}, 200, [("Content-Type", "text/plain; charset=utf-8")]),
    ("/nowhere", {}, 404, [("Content-Type", "text/plain; charset=utf-8")]),
    ("/metrics", {"Authorization": "Basic d3Jvbmc6d3Jvbmc="}, 401,
     [("Content-Type", "text/plain; charset=utf-8"),
      ("WWW-Authenticate", 'Basic realm="exec-exporter"')]),
], ids=["gzip", "openmetrics", "healthy", "404", "401"])
def test_response_heads_are_the_standard_librarys_bytes(
        guarded: InProcess, path: str, request_headers: dict[str, str], status: int,
        fields: list[tuple[str, str]]) -> None:
    """Heads rendered once and cached carry what send_response/send_header wrote,
    byte for byte, with the Date and Content-Length of this very response."""
    headers = {"Authorization": basic(USER, PASSWORD)["Authorization"], **request_headers}
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    for _ in range(2):  # the second answer comes from the cache
        reply = _raw(guarded.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n{lines}"
                                   "Connection: close\r\n\r\n".encode())
        head, _, body = reply.partition(b"\r\n\r\n")
        date = re.search(rb"\r\nDate: ([^\r]*)\r\n", head + b"\r\n")
        assert date is not None, head
        content_type, *rest = fields
        expected = _stdlib_head(status, date.group(1).decode(), [
            content_type, ("Content-Length", str(len(body))), *HEADERS.items(), *rest])
        assert head + b"\r\n\r\n" == expected


def test_edited_headers_apply_to_the_next_response(tmp_path: Path, api: FakeExecAPI) -> None:
    """The cached heads follow a web configuration edit (no restart)."""
    edited = "http_server_config:\n  headers:\n    X-Frame-Options: SAMEORIGIN\n"
    with start(tmp_path, api, "http_server_config:\n  headers:\n    X-Frame-Options: DENY\n"
               ) as exporter:
        for path in ("/metrics", "/-/healthy"):
            assert exporter.get(path).headers["X-Frame-Options"] == "DENY"
        (tmp_path / "web.yml").write_text(edited)
        wait_until(lambda: exporter.get("/metrics").headers.get("X-Frame-Options")
                   == "SAMEORIGIN", 5, what="the edited header served")
        assert exporter.get("/-/healthy").headers["X-Frame-Options"] == "SAMEORIGIN"
