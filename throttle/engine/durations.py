"""Durations as people write them in a policy, and as HubSpot wants them back.

A policy's `period` and `expiration` arrive as ISO-8601 (`PT1M`, `P7D`, what HubSpot and the CRD
use), as the short forms people type (`10s`, `1h30m`) or as plain seconds; they are answered to
HubSpot as ISO-8601 in the two forms its documentation shows (`hs_expiration_duration`).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_ISO = re.compile(
    r"^P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_SHORT = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SHORT_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> timedelta:
    """Accept ISO-8601 (`PT1M`, `P7D`), short forms (`10s`, `1m`, `1h30m`) or seconds.

    A value beyond what a timedelta holds (`1e308`, `P99999999999D`) is a ValueError like any
    other bad duration: pydantic turns ValueError into a 400 naming the field, while the
    OverflowError timedelta raises would escape validation as a 500."""
    if isinstance(value, timedelta):
        return value
    try:
        return _parse(value)
    except OverflowError:
        raise ValueError("is too long (at most 999999999 days)") from None


def _parse(value: Any) -> timedelta:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a duration such as PT1M, P7D, 10s or 1m")
    text = value.strip()
    match = _ISO.match(text.upper())
    if match and text.upper() not in ("P", "PT") and not text.upper().endswith("T"):
        parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
        return timedelta(
            weeks=parts["w"],
            days=parts["d"],
            hours=parts["h"],
            minutes=parts["m"],
            seconds=parts["s"],
        )
    pieces = _SHORT.findall(text.lower())
    if pieces and "".join(n + u for n, u in pieces) == text.lower():
        return timedelta(seconds=sum(float(n) * _SHORT_UNITS[u] for n, u in pieces))
    raise ValueError(f"{text!r} is not a duration (use ISO-8601 like PT1M or P7D, or 10s, 1m, 2h)")


def format_duration(value: timedelta) -> str:
    """ISO-8601 in the forms HubSpot documents: `PnD` for whole days, else `PTnHnMnS`."""
    total = value.total_seconds()
    if total > 0 and total % 86400 == 0:
        return f"P{int(total // 86400)}D"
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    out = "PT"
    if hours:
        out += f"{int(hours)}H"
    if minutes:
        out += f"{int(minutes)}M"
    if seconds or out == "PT":
        out += f"{seconds:g}S"
    return out


Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
"""A model field that reads any of the forms above and writes ISO-8601 (the CRD's spelling)."""
