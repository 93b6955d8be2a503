"""How the console shows figures to people (`static/console.js` shows the live ones the same
way): a wait as `3 min 20 s`, a count with thousands separators, a missing value as a dash."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from throttle.engine.queue_status import STATE_LABELS

DASH = "—"


def seconds(value: float | None) -> str:
    """A duration; None (never: paused, or beyond the forecast) as `never`."""
    if value is None or math.isinf(value):
        return "never"
    total = round(value)
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60} s"
    if total < 86400:
        return f"{total // 3600} h {total % 3600 // 60} min"
    return f"{total // 86400} d {total % 86400 // 3600} h"


def count(value: int | None) -> str:
    return DASH if value is None else f"{value:,}"


def state(value: str) -> str:
    return STATE_LABELS.get(value, value)


def when(value: datetime | None) -> str:
    return DASH if value is None else value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def raw(value: Any) -> str:
    """A cell's `data-value`: the value as `status --json` prints it; empty for null."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True)
class Cell:
    """One figure of a queue's row: `td[data-field]`, its raw `data-value`, the text shown."""

    field: str
    raw: str
    text: str
    numeric: bool


def cells(row: Mapping[str, Any], fields: Sequence[str]) -> list[Cell]:
    """A queue's row of figures, decided here rather than in the template: the overview shows
    a thousand of these, and template logic per cell costs several times this."""
    out = []
    for f in fields:
        value = row[f]
        if f == "state":
            text = state(value)
        elif f == "rate":
            text = str(value)
        elif f == "oldest_wait_s" and not row["queued"]:
            text = DASH
        elif f in ("oldest_wait_s", "drain_s"):
            text = seconds(value)
        else:
            text = count(value)
        out.append(Cell(f, raw(value), text, f not in ("rate", "state")))
    return out


FILTERS: dict[str, Callable[..., Any]] = {
    "cells": cells,
    "seconds": seconds,
    "count": count,
    "state": state,
    "when": when,
    "raw": raw,
}
