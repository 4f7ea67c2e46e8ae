"""Log lines: logfmt and JSON carry the same fields; a secret never reaches either."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from exporter.logs import JsonFormatter, LogfmtFormatter, SecretFilter


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    entry = logging.LogRecord("exporter.scheduler", logging.WARNING, __file__, 1, message, args,
                              exc_info)
    entry.created = 1_800_000_000.25
    return entry


def test_logfmt_quotes_only_what_needs_it() -> None:
    line = LogfmtFormatter().format(record("sent %d requests to %s", 3, "a b"))
    assert line == ('ts=2027-01-15T08:00:00.250Z level=warn caller=scheduler '
                    'msg="sent 3 requests to a b"')
    assert LogfmtFormatter().format(record("")).endswith(' msg=""')


@pytest.mark.parametrize("formatter", [LogfmtFormatter(), JsonFormatter()])
def test_both_formats_carry_the_traceback_as_err(formatter: logging.Formatter) -> None:
    line = formatter.format(record("failed", exc=True))
    if isinstance(formatter, LogfmtFormatter):
        assert ' msg=failed err="Traceback (most recent call last):\\n' in line
        assert line.endswith('ValueError: boom"')
    else:
        entry = json.loads(line)
        assert list(entry) == ["ts", "level", "caller", "msg", "err"]
        assert entry["level"] == "warn" and entry["err"].endswith("ValueError: boom")


def test_a_secret_is_scrubbed_from_message_and_traceback() -> None:
    secrets = SecretFilter()
    secrets.secrets.append("s3cr3t")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter())
    handler.addFilter(secrets)
    logger = logging.getLogger("exporter.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("key %s refused", "s3cr3t")
        try:
            raise ValueError("echoed s3cr3t")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "s3cr3t" not in text
    assert 'msg="key <redacted> refused"' in text
    assert "ValueError: echoed <redacted>" in text and " err=" not in text
