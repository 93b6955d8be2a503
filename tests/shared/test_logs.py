"""Secrets never reach the logs, even when a message or exception carries one by accident."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from throttle.logs import MASK, RedactingFilter, configure_logging

SECRET = "client-secret-7f3a9c1e"


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", secrets=[SECRET], stream=stream)
    yield stream
    logging.getLogger().handlers.clear()


@pytest.fixture
def logged(output: io.StringIO) -> logging.Logger:
    return logging.getLogger("throttle.test")


def read_lines(output: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.getvalue().splitlines() if line.strip()]


def test_logs_are_json_lines_with_level_and_logger(
    logged: logging.Logger, output: io.StringIO
) -> None:
    logged.info("released %d callbacks", 3, extra={"portal_id": 42})
    (line,) = read_lines(output)
    assert line["message"] == "released 3 callbacks"
    assert line["level"] == "INFO"
    assert line["logger"] == "throttle.test"
    assert line["portal_id"] == 42


def test_known_secrets_tokens_and_url_passwords_are_masked(
    logged: logging.Logger, output: io.StringIO
) -> None:
    logged.warning("signature check used %s", SECRET)
    logged.warning("calling with Authorization: Bearer CNb2kZ-abc.def_123456")
    logged.warning("token response {'access_token': 'CKa1-xyz-987654', 'expires_in': 1800}")
    logged.warning("connect failed: postgresql://throttle:hunter2pass@db:5432/throttle")
    logged.warning("oauth callback ?code=abc123-secret-code&state=xyz", extra={"url": SECRET})
    try:
        raise RuntimeError(f"refresh failed for refresh_token={SECRET}x")
    except RuntimeError:
        logged.exception("refresh failed")
    text = json.dumps(read_lines(output))
    for leaked in (SECRET, "CNb2kZ-abc", "CKa1-xyz", "hunter2pass", "abc123-secret-code"):
        assert leaked not in text
    assert text.count(MASK) >= 6


def test_filter_keeps_ordinary_messages_intact() -> None:
    flt = RedactingFilter([SECRET])
    assert flt.redact("queue enrichment released 100 at 10/s") == (
        "queue enrichment released 100 at 10/s"
    )
