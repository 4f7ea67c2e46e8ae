"""``--web.config.file``: TLS, basic auth and headers in the Prometheus
exporter-toolkit format, applied to every HTTP path.

```yaml
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  min_version: TLS12
http_server_config:
  headers:
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  prometheus: $2y$10$...   # bcrypt hash
```
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import yaml

from .config import ConfigError

CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Headers exporter-toolkit lets users set; others are refused as it does.
ALLOWED_HEADERS = {
    "Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options",
    "X-XSS-Protection", "Content-Security-Policy",
}
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
            "max_version", "cipher_suites", "curve_preferences",
            "prefer_server_cipher_suites", "client_allowed_sans"}


@dataclass
class WebConfig:
    """The parsed web configuration."""

    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    _verified: set[bytes] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check_auth(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries valid basic-auth credentials
        (always True when no users are configured)."""
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        hashed = self.users.get(user)
        # bcrypt is slow on purpose; remember credentials already proven good, as
        # exporter-toolkit does, keyed by a digest so the password is not kept.
        token = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        with self._lock:
            if token in self._verified:
                return True
        if hashed is None:
            bcrypt.checkpw(password.encode(), _DUMMY_HASH)  # same cost for unknown users
            return False
        try:
            ok = bcrypt.checkpw(password.encode(), hashed)
        except ValueError:
            return False
        if ok:
            with self._lock:
                if len(self._verified) > 1024:
                    self._verified.clear()
                self._verified.add(token)
        return ok


_DUMMY_HASH = bcrypt.hashpw(b"dummy", bcrypt.gensalt(4))


def load_web_config(path: str | Path) -> WebConfig:
    """Read and validate a web configuration file; raise ConfigError naming each bad field."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except yaml.YAMLError:
        raise ConfigError([f"{path}: invalid YAML"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a mapping"])
    base = Path(path).parent
    problems: list[str] = []
    config = WebConfig()
    for key in raw:
        if key not in {"tls_server_config", "http_server_config", "basic_auth_users"}:
            problems.append(f"{key}: unknown key")

    users = raw.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        problems.append("basic_auth_users: expected a mapping of user to bcrypt hash")
    else:
        for user, hashed in users.items():
            if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
                problems.append(f"basic_auth_users.{user}: expected a bcrypt hash")
            else:
                # Python's bcrypt reads $2y$ (from htpasswd) as $2b$.
                config.users[str(user)] = ("$2b$" + hashed[4:]).encode()

    http = raw.get("http_server_config") or {}
    if not isinstance(http, dict):
        problems.append("http_server_config: expected a mapping")
    else:
        for key in http:
            if key not in {"headers", "http2"}:
                problems.append(f"http_server_config.{key}: unknown key")
        headers = http.get("headers") or {}
        if not isinstance(headers, dict):
            problems.append("http_server_config.headers: expected a mapping")
        else:
            for name, value in headers.items():
                if name not in ALLOWED_HEADERS:
                    problems.append(f"http_server_config.headers.{name}: header not allowed")
                elif not isinstance(value, str) or "\n" in value or "\r" in value:
                    problems.append(
                        f"http_server_config.headers.{name}: expected a one-line string")
                else:
                    config.headers[name] = value

    tls = raw.get("tls_server_config")
    if tls is not None:
        if not isinstance(tls, dict):
            problems.append("tls_server_config: expected a mapping")
        else:
            config.ssl_context = _tls_context(tls, base, problems)
    if problems:
        raise ConfigError([f"web config: {p}" for p in problems])
    return config


def _tls_context(tls: dict[str, object], base: Path, problems: list[str]) -> ssl.SSLContext | None:
    for name in tls:
        if name not in TLS_KEYS:
            problems.append(f"tls_server_config.{name}: unknown key")
    cert, key = tls.get("cert_file"), tls.get("key_file")
    if not cert or not key:
        problems.append("tls_server_config: cert_file and key_file are both required")
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for name, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        value = tls.get(name)
        if value is not None:
            if value not in TLS_VERSIONS:
                problems.append(f"tls_server_config.{name}: one of {', '.join(TLS_VERSIONS)}")
            else:
                setattr(context, attr, TLS_VERSIONS[str(value)])
    try:
        context.load_cert_chain(base / str(cert), base / str(key))
    except (OSError, ssl.SSLError) as exc:
        problems.append(f"tls_server_config.cert_file: cannot load certificate/key: {exc}")
    auth = str(tls.get("client_auth_type", "NoClientCert"))
    if auth not in CLIENT_AUTH:
        problems.append(f"tls_server_config.client_auth_type: one of {', '.join(CLIENT_AUTH)}")
        return context
    ca = tls.get("client_ca_file")
    if auth in {"RequireAndVerifyClientCert", "VerifyClientCertIfGiven"} and not ca:
        problems.append(f"tls_server_config.client_ca_file: required with {auth}")
    if ca:
        try:
            context.load_verify_locations(base / str(ca))
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"tls_server_config.client_ca_file: cannot load: {exc}")
    context.verify_mode = CLIENT_AUTH[str(auth)]
    if auth in {"RequestClientCert", "RequireAnyClientCert"} and not ca:
        # Python cannot accept an unverified client certificate; with no CA to verify
        # against, fall back to not asking for one rather than failing every handshake.
        context.verify_mode = ssl.CERT_NONE
    return context
