"""Structured logging: JSON lines when stderr is not a terminal, and secrets masked everywhere.

The redacting filter is a second line of defence: code never logs a secret on purpose, but a URL
with a password or a token echoed in an exception message would otherwise reach the log.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import IO

from pythonjsonlogger.json import JsonFormatter

MASK = "[redacted]"
# Bearer tokens and HubSpot OAuth tokens look like this wherever they turn up in free text.
_TOKEN_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"(?i)((?:access|refresh)_token[\"']?\s*[:=]\s*[\"']?)[^\"'&\s,}]+"),
    re.compile(r"(?i)(client_secret[\"']?\s*[:=]\s*[\"']?)[^\"'&\s,}]+"),
    re.compile(r"(?i)(code=)[^&\s\"']+"),
    re.compile(r"(?i)(://[^:/@\s]+:)[^@/\s]+(@)"),
]


class RedactingFilter(logging.Filter):
    """Replaces known secret values and token-shaped text in every record before it is written."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        for pattern in _TOKEN_PATTERNS:
            text = pattern.sub(
                lambda m: m.group(1) + MASK + (m.group(2) if m.lastindex == 2 else ""), text
            )
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


class MalformedRequestFilter(logging.Filter):
    """aiohttp's server logs a request it cannot parse (a request line over 8 KiB, a bad header)
    as an ERROR with a traceback, though it answers 400 and nothing failed on our side: anyone
    could fill the log with tracebacks and page whoever watches for them. Such a record becomes
    one INFO line naming the problem (not the request bytes, which may carry a query's code)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__module__ == "aiohttp.http_exceptions":
            record.msg = "malformed HTTP request refused with %s: %s"
            record.args = (getattr(exc, "code", 400), type(exc).__name__)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def configure_logging(
    level: str = "INFO",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
) -> None:
    """Send every logger to stderr (or `stream`) in one format, with secrets masked."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    if use_json:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log is written by our own access logger (without query strings).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    server.filters = [f for f in server.filters if not isinstance(f, MalformedRequestFilter)]
    server.addFilter(MalformedRequestFilter())
