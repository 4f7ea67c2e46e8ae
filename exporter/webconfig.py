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

The file (and the certificate, key and CA files it names) is reread when it
changes, as exporter-toolkit does: renewed certificates and changed users apply
without a restart; a broken new version is logged and the last good one kept.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from .config import ConfigError

log = logging.getLogger(__name__)

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
# Go's cipher and curve names do not map onto OpenSSL's one to one; silently
# ignoring a restriction would widen what the user asked for, so they are refused.
UNSUPPORTED_TLS_KEYS = {"cipher_suites", "curve_preferences"}
_BCRYPT_COST = re.compile(r"^\$2[aby]\$(\d\d)\$")


@dataclass
class WebConfig:
    """The parsed web configuration."""

    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    allowed_sans: list[str] = field(default_factory=list)
    source: Path | None = None  # the file it came from, reread when it changes
    watched: dict[Path, tuple[int, int] | None] = field(default_factory=dict, repr=False)
    _dummy_hash: bytes | None = field(default=None, repr=False)
    # Credentials proven good, as keyed digests; reset with the configuration (a
    # reread file builds a new WebConfig), so a changed password is checked anew.
    _verified: set[bytes] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check_auth(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries valid basic-auth credentials
        (always True when no users are configured).

        Every wrong credential costs one bcrypt check against a hash of the same
        cost, whether the user exists or not and whatever the password's length, so
        neither the answer nor its time tells users apart. At most
        ``BCRYPT_CONCURRENCY`` checks run at once, and one that cannot start within
        ``BCRYPT_WAIT`` seconds fails; credentials that succeeded are remembered (by an
        HMAC under a per-process random key, never in clear), so an authorised scrape
        skips bcrypt and is not queued behind a flood of wrong passwords."""
        if not self.users:
            return True
        scheme, _, encoded = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except binascii.Error:
            return False
        raw_user, sep, password = decoded.partition(b":")
        if not sep:
            return False
        try:
            hashed = self.users.get(raw_user.decode("utf-8"))
        except UnicodeDecodeError:
            hashed = None  # no such user, and costs the same bcrypt check as one
        token = hmac.new(_CACHE_KEY, len(raw_user).to_bytes(4, "big") + decoded,
                         hashlib.sha256).digest()
        with self._lock:
            if token in self._verified:
                return True
        ok = _bcrypt_check(password, hashed, self._dummy_hash or _DUMMY_HASH)
        if ok:
            with self._lock:
                if len(self._verified) >= VERIFIED_CACHE_SIZE:
                    self._verified.clear()
                self._verified.add(token)
        return ok

    def client_allowed(self, cert: dict[str, Any] | None) -> bool:
        """Whether a verified client certificate carries one of ``client_allowed_sans``
        (always True when none are configured)."""
        if not self.allowed_sans:
            return True
        sans = {_canonical(str(value)) for _, value in (cert or {}).get("subjectAltName", ())}
        return any(_canonical(value) in sans for value in self.allowed_sans)


_DUMMY_HASH = bcrypt.hashpw(b"dummy", bcrypt.gensalt(4))
# bcrypt reads at most this many bytes of a password: bcrypt 4 silently ignores the
# rest, bcrypt 5 raises ValueError. Either way no longer password can be checked
# honestly, so it is refused (as Go's bcrypt, and so exporter-toolkit, does).
BCRYPT_MAX_PASSWORD = 72
# bcrypt checks running at once: enough for a few honest clients whose credentials
# are not cached yet, few enough that a flood of wrong passwords leaves CPU for
# scrapes (and cached credentials do not queue here at all).
BCRYPT_CONCURRENCY = 2
_BCRYPT_SLOTS = threading.BoundedSemaphore(BCRYPT_CONCURRENCY)
# A check that cannot start within this long counts as failed (the same 401): under a
# flood, waiting requests (and their threads and connection slots) cannot pile up.
# Credentials not yet cached may be refused then; Prometheus retries next scrape.
BCRYPT_WAIT = 2.0
_overload_logged = 0.0
VERIFIED_CACHE_SIZE = 1024
_CACHE_KEY = secrets.token_bytes(32)  # per process: a cache entry is useless elsewhere


def _bcrypt_check(password: bytes, hashed: bytes | None, dummy: bytes) -> bool:
    """One bcrypt check, the same work whatever the user or password length: an
    unknown user is checked against ``dummy`` (same cost as the real hashes), an
    over-long password by its first 72 bytes, and both then count as wrong."""
    global _overload_logged
    fits = len(password) <= BCRYPT_MAX_PASSWORD
    if not _BCRYPT_SLOTS.acquire(timeout=BCRYPT_WAIT):
        now = time.monotonic()
        if now - _overload_logged > 60:
            _overload_logged = now
            log.warning("basic auth: password checks are queueing for over %ss (a flood of "
                        "wrong passwords?); refusing the ones that wait longer", BCRYPT_WAIT)
        return False
    try:
        ok = bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], hashed or dummy)
    except ValueError:  # a password bcrypt refuses (e.g. a NUL byte) or a bad hash
        ok = False
    finally:
        _BCRYPT_SLOTS.release()
    return ok and fits and hashed is not None


def _canonical(value: str) -> str:
    # IP addresses compare in one form whatever way they are written.
    value = value.strip()
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(value))
    return value


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class LiveWebConfig:
    """The current web configuration: rereads its file, and the files it names, when
    they change (checked at most every ``check_every`` seconds, on use)."""

    def __init__(self, config: WebConfig, check_every: float = 1.0) -> None:
        self._config = config
        self.check_every = check_every
        self._next_check = time.monotonic() + check_every
        self._lock = threading.Lock()

    def get(self) -> WebConfig:
        """The configuration to apply to the next request or connection."""
        config = self._config
        if config.source is None or time.monotonic() < self._next_check:
            return config
        with self._lock:
            if time.monotonic() < self._next_check:
                return self._config
            self._next_check = time.monotonic() + self.check_every
            stamps = {path: _stamp(path) for path in config.watched}
            if stamps == config.watched:
                return config
            try:
                fresh = load_web_config(config.source)
            except ConfigError as exc:
                # Remember what was seen, so one bad edit is one warning, not one per second.
                config.watched = stamps
                log.warning("web config %s changed but cannot be used, keeping the last good "
                            "one: %s", config.source, "; ".join(exc.problems))
                return config
            log.info("web config %s reloaded", config.source)
            self._config = fresh
            return fresh


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
    # Stamps taken before reading, so a change made while loading is seen next time.
    config = WebConfig(source=Path(path), watched={Path(path): _stamp(Path(path))})
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
        costs = [int(m.group(1)) for h in config.users.values()
                 if (m := _BCRYPT_COST.match(h.decode()))]
        if costs and 4 <= max(costs) <= 31:
            config._dummy_hash = bcrypt.hashpw(b"dummy", bcrypt.gensalt(max(costs)))

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
            for name in ("cert_file", "key_file", "client_ca_file"):
                if tls.get(name):
                    file = base / str(tls[name])
                    config.watched[file] = _stamp(file)
            config.ssl_context = _tls_context(tls, base, problems)
            sans = tls.get("client_allowed_sans") or []
            if not isinstance(sans, list) or not all(isinstance(x, str) for x in sans):
                problems.append("tls_server_config.client_allowed_sans: expected a list of "
                                "strings")
            elif sans and tls.get("client_auth_type") != "RequireAndVerifyClientCert":
                problems.append("tls_server_config.client_allowed_sans: needs client_auth_type "
                                "RequireAndVerifyClientCert")
            else:
                config.allowed_sans = list(sans)
    if problems:
        raise ConfigError([f"web config: {p}" for p in problems])
    return config


def _tls_context(tls: dict[str, object], base: Path, problems: list[str]) -> ssl.SSLContext | None:
    for name in tls:
        if name not in TLS_KEYS:
            problems.append(f"tls_server_config.{name}: unknown key")
        elif name in UNSUPPORTED_TLS_KEYS:
            problems.append(f"tls_server_config.{name}: not supported by this exporter (it "
                            "uses Python's TLS defaults); remove it")
    cert, key = tls.get("cert_file"), tls.get("key_file")
    if not cert or not key:
        problems.append("tls_server_config: cert_file and key_file are both required")
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.get("prefer_server_cipher_suites", True):
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
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
    if auth == "RequireAnyClientCert" and not ca:
        # Python cannot accept a client certificate it does not verify; quietly not
        # requiring one would be weaker than asked, so this needs a CA to verify against.
        problems.append("tls_server_config.client_ca_file: required with RequireAnyClientCert "
                        "here (client certificates are always verified)")
    elif auth == "RequestClientCert" and not ca:
        # Optional and unverified: with no CA, not asking is the nearest equivalent.
        context.verify_mode = ssl.CERT_NONE
    return context
