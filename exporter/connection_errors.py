"""Connection failures in a user's words (connection refused, name not found, TLS
certificate not trusted, proxy refused...) with the host and port they were for: the
HTTP library's own text names its internal classes and buries the cause."""

from __future__ import annotations

import errno
import http.client
import socket
import ssl
from urllib.parse import urlsplit

import requests
import urllib3


def endpoint(url: str) -> str:
    """``host:port`` of a URL, the port filled in from the scheme."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port or (443 if parts.scheme == 'https' else 80)}"


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps (urllib3 keeps the cause in ``reason``)."""
    chain: list[BaseException] = []
    todo: list[object] = [exc]
    while todo and len(chain) < 20:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or any(item is seen for seen in chain):
            continue
        chain.append(item)
        todo += [getattr(item, "reason", None), item.__cause__, item.__context__,
                 *(arg for arg in item.args if isinstance(arg, BaseException))]
    return chain


def describe_connection_error(exc: BaseException, url: str) -> str:
    """A failed connection (any ``requests`` exception) in a user's words, with the
    host and port of ``url``, or of the proxy on the way to it."""
    where = endpoint(url)
    chain = _causes(exc)
    proxy = _proxy_for(url) if any(isinstance(e, (requests.exceptions.ProxyError,
                                                   urllib3.exceptions.ProxyError))
                                   for e in chain) else None
    cause = _cause_in_words(chain)
    if proxy is not None:
        return f"proxy {proxy} (on the way to {where}): {cause}"
    return f"{where}: {cause}"


def _cause_in_words(chain: list[BaseException]) -> str:
    for error in chain:
        if isinstance(error, ssl.SSLCertVerificationError):
            detail = error.verify_message or "verification failed"
            return (f"TLS certificate not trusted ({detail}); install the issuing CA or point "
                    "REQUESTS_CA_BUNDLE at it")
        if isinstance(error, (socket.gaierror, urllib3.exceptions.NameResolutionError)):
            return "name not found (DNS lookup failed)"
    for error in chain:
        first = str(error.args[0]) if error.args else ""
        if first.startswith("Tunnel connection failed: "):  # CONNECT got an error status
            return f"the proxy refused the connection ({first.partition(': ')[2]})"
        if isinstance(error, http.client.RemoteDisconnected):  # a reset without an errno
            return "the server closed the connection without answering"
        if isinstance(error, ssl.SSLError):
            hint = (": the server does not speak TLS on that port (an http:// address?)"
                    if error.reason == "WRONG_VERSION_NUMBER" else "")
            return f"TLS handshake failed ({error.reason or 'unknown reason'}){hint}"
        if isinstance(error, OSError) and error.errno in _ERRNO_WORDS:
            return _ERRNO_WORDS[error.errno]
        if isinstance(error, TimeoutError):
            return "timed out"
    for error in chain:
        if isinstance(error, urllib3.exceptions.ProtocolError | http.client.HTTPException):
            return "the connection broke off before the answer was complete"
    for error in chain:
        if isinstance(error, OSError) and error.strerror:
            return error.strerror.lower()
    return "connection failed"


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused (nothing listens on that port)",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "no route to host",
    errno.ECONNRESET: "connection reset by the other side",
    errno.ECONNABORTED: "connection aborted",
    errno.ETIMEDOUT: "timed out",
}


def _proxy_for(url: str) -> str | None:
    """``host:port`` of the proxy requests would use for ``url`` (from the environment)."""
    proxy = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))
    return endpoint(proxy if "://" in proxy else f"http://{proxy}") if proxy else None
