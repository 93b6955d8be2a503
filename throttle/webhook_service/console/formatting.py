"""How the console shows figures to people (`static/console.js` shows the live ones the same
way): a wait as `3 min 20 s`, a count with thousands separators, a missing value as a dash.

A queue's table row is built here, escaped value by value, rather than by template logic: the
overview shows a thousand of them, and Jinja's per-cell macro machinery cost 100 ms of the page's
200 ms budget (bench/console_overview.py); this costs about a tenth of that.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from markupsafe import Markup

from throttle.engine.queue_status import STATE_LABELS

DASH = "—"
NUMERIC = ' class="num"'


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


def _cell(row: Mapping[str, Any], field: str) -> tuple[str, bool]:
    """The text shown for one figure, and whether it is a number (right-aligned)."""
    value = row[field]
    if field == "state":
        return state(value), False
    if field == "rate":
        return str(value), False
    if field == "oldest_wait_s" and not row["queued"]:
        return DASH, True
    if field in ("oldest_wait_s", "drain_s"):
        return seconds(value), True
    return count(value), True


def row_cells(row: Mapping[str, Any], fields: Sequence[str]) -> Markup:
    """The row's figures as `<td data-field data-value>` cells, every value escaped (`field` is
    one of ours)."""
    out = []
    for field in fields:
        text, numeric = _cell(row, field)
        align = NUMERIC if numeric else ""
        out.append(
            f'<td data-field="{field}" data-value="{html.escape(raw(row[field]))}"{align}>'
            f"{html.escape(text)}</td>"
        )
    return Markup("".join(out))  # every value escaped above  # noqa: S704  # nosec B704


def queue_row(row: Mapping[str, Any], fields: Sequence[str], queues_url: str) -> Markup:
    """The overview's `<tr>` of one queue: its name linking to its page, then its figures."""
    name = html.escape(str(row["name"]))
    href = html.escape(queues_url + quote(str(row["name"]), safe=""))
    tag = ' <span class="tag">inline</span>' if row["kind"] == "inline" else ""
    return Markup(  # every value escaped above  # noqa: S704  # nosec B704
        f'<tr data-queue="{name}" data-kind="{html.escape(str(row["kind"]))}">'
        f'<th scope="row"><a href="{href}">{name}</a>{tag}</th>{row_cells(row, fields)}</tr>'
    )


FILTERS: dict[str, Callable[..., Any]] = {
    "row_cells": row_cells,
    "queue_row": queue_row,
    "seconds": seconds,
    "count": count,
    "state": state,
    "when": when,
    "raw": raw,
}
