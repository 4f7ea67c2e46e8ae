"""``--web.config.file``: TLS, basic auth and headers in the Prometheus
exporter-toolkit format, applied to every HTTP path (docs/operations.md). As in
exporter-toolkit, the file and the certificate, key and CA files it names are
reread when they change; a broken new version is logged and the last good one kept.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from .config import ConfigError

log = logging.getLogger(__name__)

CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "RequestClientCert": ssl.CERT_OPTIONAL,
               "RequireAnyClientCert": ssl.CERT_REQUIRED,
               "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# Headers exporter-toolkit lets users set; others are refused as it does.
ALLOWED_HEADERS = {"Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options",
                   "X-XSS-Protection", "Content-Security-Policy"}
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
            "max_version", "cipher_suites", "curve_preferences",
            "prefer_server_cipher_suites", "client_allowed_sans"}
# Go's cipher and curve names do not map onto OpenSSL's one to one; silently ignoring
# a restriction would widen what the user asked for, so they are refused.
UNSUPPORTED_TLS_KEYS = {"cipher_suites", "curve_preferences"}


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
    # Credentials proven good, as keyed digests; a reread file starts a new set.
    _verified: set[bytes] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check_auth(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries valid basic-auth credentials
        (always True when no users are configured). Credentials that succeeded are
        remembered as keyed digests, so an authorised scrape skips bcrypt and does not
        queue behind a flood of wrong passwords."""
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
# bcrypt reads at most this many bytes of a password (bcrypt 4 ignores the rest,
# bcrypt 5 raises): a longer one never matches, as in Go's bcrypt.
BCRYPT_MAX_PASSWORD = 72
# bcrypt checks at once: a few for honest clients not cached yet, few enough that a
# flood of wrong passwords leaves CPU for scrapes.
BCRYPT_CONCURRENCY = 2
_BCRYPT_SLOTS = threading.BoundedSemaphore(BCRYPT_CONCURRENCY)
# A check that cannot start within this long fails (the same 401), so a flood cannot
# pile up waiting threads; Prometheus retries at its next scrape.
BCRYPT_WAIT = 2.0
_overload_logged = 0.0
VERIFIED_CACHE_SIZE = 1024
_CACHE_KEY = secrets.token_bytes(32)  # per process: a cache entry is useless elsewhere


def _bcrypt_check(password: bytes, hashed: bytes | None, dummy: bytes) -> bool:
    """One bcrypt check whatever the user or password length (an unknown user against
    ``dummy``, of the same cost; an over-long password by its first 72 bytes)."""
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
        source = self._config.source
        # One thread checks the files; meanwhile the others go on with the one in force.
        if (source is None or time.monotonic() < self._next_check
                or not self._lock.acquire(blocking=False)):
            return self._config
        try:
            config, self._next_check = self._config, time.monotonic() + self.check_every
            stamps = {path: _stamp(path) for path in config.watched}
            if stamps != config.watched:
                self._config = load_web_config(source)
                log.info("web config %s reloaded", source)
        except ConfigError as exc:
            config.watched = stamps  # seen: one bad edit is one warning, not one a second
            log.warning("web config %s changed but cannot be used, keeping the last good "
                        "one: %s", source, "; ".join(exc.problems))
        finally:
            self._lock.release()
        return self._config


def _mapping(raw: object, where: str, known: Collection[str] | None, problems: list[str],
             unknown: str = "unknown key", kind: str = "a mapping") -> dict[Any, Any]:
    """``raw`` as a mapping (None: an empty one); adds a problem if it is not one, and
    one for each key outside ``known`` (None: any key)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected {kind}")
        return {}
    problems.extend(f"{where}.{key}".lstrip(".") + f": {unknown}" for key in raw
                    if known is not None and key not in known)
    return raw


def load_web_config(path: str | Path) -> WebConfig:
    """Read and validate a web configuration file; raise ConfigError naming each bad field."""
    path = Path(path)
    # Stamped before reading, so a change made while loading is seen next time.
    config = WebConfig(source=path, watched={path: _stamp(path)})
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except yaml.YAMLError:
        raise ConfigError([f"{path}: invalid YAML"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a mapping"])
    problems: list[str] = []
    _mapping(raw, "", {"tls_server_config", "http_server_config", "basic_auth_users"}, problems)
    users = _mapping(raw.get("basic_auth_users"), "basic_auth_users", None, problems,
                     kind="a mapping of user to bcrypt hash")
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            problems.append(f"basic_auth_users.{user}: expected a bcrypt hash")
        else:  # Python's bcrypt reads $2y$ (from htpasswd) as $2b$
            config.users[str(user)] = ("$2b$" + hashed[4:]).encode()
    costs = [int(hashed[4:6]) for hashed in config.users.values() if hashed[4:6].isdigit()]
    if costs and 4 <= max(costs) <= 31:
        config._dummy_hash = bcrypt.hashpw(b"dummy", bcrypt.gensalt(max(costs)))
    http = _mapping(raw.get("http_server_config"), "http_server_config", {"headers", "http2"},
                    problems)
    headers = _mapping(http.get("headers"), "http_server_config.headers", ALLOWED_HEADERS,
                       problems, "header not allowed")
    for name, value in headers.items():
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            problems.append(f"http_server_config.headers.{name}: expected a one-line string")
        config.headers[name] = value  # kept only when no problem was found
    tls = _mapping(raw.get("tls_server_config"), "tls_server_config", TLS_KEYS, problems)
    if isinstance(raw.get("tls_server_config"), dict):
        for name in ("cert_file", "key_file", "client_ca_file"):
            if tls.get(name):
                config.watched[path.parent / str(tls[name])] = _stamp(path.parent / str(tls[name]))
        config.ssl_context = _tls_context(tls, path.parent, problems)
        config.allowed_sans = tls.get("client_allowed_sans") or []
        if not isinstance(config.allowed_sans, list) or not all(
                isinstance(x, str) for x in config.allowed_sans):
            problems.append("tls_server_config.client_allowed_sans: expected a list of strings")
        elif config.allowed_sans and tls.get("client_auth_type") != "RequireAndVerifyClientCert":
            problems.append("tls_server_config.client_allowed_sans: needs client_auth_type "
                            "RequireAndVerifyClientCert")
    if problems:
        raise ConfigError([f"web config: {p}" for p in problems])
    return config


def _tls_context(tls: dict[str, Any], base: Path, problems: list[str]) -> ssl.SSLContext | None:
    problems.extend(f"tls_server_config.{name}: not supported by this exporter (it uses Python's "
                    "TLS defaults); remove it" for name in UNSUPPORTED_TLS_KEYS & tls.keys())
    cert, key, ca = (str(tls.get(name) or "") for name in ("cert_file", "key_file",
                                                            "client_ca_file"))
    if not cert or not key:
        problems.append("tls_server_config: cert_file and key_file are both required")
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.get("prefer_server_cipher_suites", True):
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    for name, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if tls.get(name) is None:
            continue
        if str(tls[name]) not in TLS_VERSIONS:
            problems.append(f"tls_server_config.{name}: one of {', '.join(TLS_VERSIONS)}")
        else:
            setattr(context, attr, TLS_VERSIONS[str(tls[name])])
    try:
        context.load_cert_chain(base / cert, base / key)
    except (OSError, ssl.SSLError) as exc:
        problems.append(f"tls_server_config.cert_file: cannot load certificate/key: {exc}")
    auth = str(tls.get("client_auth_type", "NoClientCert"))
    if auth not in CLIENT_AUTH:
        problems.append(f"tls_server_config.client_auth_type: one of {', '.join(CLIENT_AUTH)}")
        return context
    if ca:
        try:
            context.load_verify_locations(base / ca)
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"tls_server_config.client_ca_file: cannot load: {exc}")
    elif auth in {"RequireAndVerifyClientCert", "VerifyClientCertIfGiven"}:
        problems.append(f"tls_server_config.client_ca_file: required with {auth}")
    elif auth == "RequireAnyClientCert":
        # Python cannot accept a client certificate it does not verify; quietly not
        # requiring one would be weaker than asked, so this needs a CA to verify against.
        problems.append("tls_server_config.client_ca_file: required with RequireAnyClientCert "
                        "here (client certificates are always verified)")
    # Optional and unverified with no CA: not asking is the nearest equivalent.
    unverified = auth == "RequestClientCert" and not ca
    context.verify_mode = ssl.CERT_NONE if unverified else CLIENT_AUTH[auth]
    return context
