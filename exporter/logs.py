"""Logging in logfmt or JSON, with the API key scrubbed from every line."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import TextIO

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "error": logging.ERROR}
REDACTED = "<redacted>"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``caller``, ``msg`` and ``err``."""

    def fields(self, record: logging.LogRecord) -> dict[str, str]:
        """The line's fields, in the order they are written."""
        moment = dt.datetime.fromtimestamp(record.created, dt.UTC)
        level = record.levelname
        stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        entry = {"ts": stamp,
                 "level": {"WARNING": "warn", "CRITICAL": "error"}.get(level, level.lower()),
                 "caller": record.name.removeprefix("exporter."), "msg": record.getMessage()}
        if record.exc_info:
            entry["err"] = self.formatException(record.exc_info)
        return entry

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.fields(record))


class LogfmtFormatter(JsonFormatter):
    """``ts=... level=info caller=scheduler msg="..."``, as Prometheus' tools log."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{name}={_quote(value)}" for name, value in self.fields(record).items())


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' "=\n\t\\'):
        return value
    return json.dumps(value)


class SecretFilter(logging.Filter):
    """Defence in depth: replace any known secret in a record before it is written."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[str] = []

    def scrub(self, text: str) -> str:
        """``text`` with every known secret replaced."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        text = self.scrub(message)
        if record.exc_info:
            # Render the traceback now, scrubbed, so the formatter cannot print it raw.
            text += "\n" + self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
            record.exc_text = None
        if text != message or record.args:
            record.msg, record.args = text, None
        return True


SECRETS = SecretFilter()


def setup(level: str = "info", fmt: str = "logfmt", stream: TextIO | None = None) -> None:
    """Configure the root logger for the exporter."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    handler.addFilter(SECRETS)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    # urllib3 logs URLs at debug level; they never carry the key (it is a header),
    # but its chatter drowns the exporter's own debug lines.
    logging.getLogger("urllib3").setLevel(max(LEVELS[level], logging.INFO))


def add_secret(secret: str) -> None:
    """Scrub ``secret`` from every log line from now on, also escaped (``repr``) and,
    for a value with whitespace inside (two keys pasted into one file), each piece."""
    variants = {secret, secret.strip(), repr(secret)[1:-1]}
    variants.update(part for part in secret.split() if len(part) >= 8)
    for variant in variants:
        if variant and variant not in SECRETS.secrets:
            SECRETS.secrets.append(variant)
    # Longest first, so a piece never breaks up a longer form before it is replaced.
    SECRETS.secrets.sort(key=len, reverse=True)
