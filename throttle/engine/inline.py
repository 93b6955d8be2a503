"""Inline rates: a throttle set in the workflow editor, in the action's own input fields.

A builder who sets "release 20 every 1 minute" in the action gets an inline queue: a `Policy`
like any other (same model, same scripts, written by `registry.ensure_inline`, the one writer of
policy parameters), whose name is derived from where the execution comes from:

- `inline.w<workflow>.a<action>.<hash>` — this action in this workflow (the default). HubSpot's
  payload names no step, so two throttle steps of one workflow are told apart by `<hash>`, the
  first 8 hex digits of a SHA-256 of the fields' own values (`fields_hash`). Two steps with
  identical fields share a queue; a builder who wants them apart names a queue.
- `inline.q.<name>` — the builder-named queue, shared by every workflow (and step) of the portal
  that names it.

Editing the fields changes the rate from the next execution on: a step's new values make a new
queue (executions held before the edit finish at the rate they were held under), a named queue
takes the newest fields it is given (every workflow naming it shares one rate: the last one
written).

Every inline rate is held under the portal's ceiling (`InlineCeiling`, on the portal's `default`
policy, else the global default's, else the `INLINE_MAX_PER_MINUTE` setting): a faster rate is
clamped to it, a daily total above it is capped, and a bad value (zero, negative, text, an unknown
unit or day) is replaced by the ceiling's own value. Nothing an execution carries can make it pass
unthrottled; each such decision is a note (`InlineDecision.notes`) that the output fields and the
history carry, so the builder can act on it.

This module is pure: parsing, clamping and naming, no I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from throttle.engine.calendars import DAYS, weekday_index
from throttle.engine.policy import (
    DEFAULT_POLICY_NAME,
    GLOBAL_PORTAL,
    DailyCap,
    InlineCeiling,
    Policy,
    Rate,
    Schedule,
    Window,
)

PREFIX = "inline."
"""Every inline queue's policy name starts with it; a `ThrottlePolicy`'s must not."""
SHARED_PREFIX = PREFIX + "q."
"""A builder-named shared queue's policy name: this, then the name."""

COUNT_FIELD = "rate_count"
EVERY_FIELD = "rate_every"
UNIT_FIELD = "rate_unit"
QUEUE_FIELD = "queue_name"
DAYS_FIELD = "release_days"
FIRST_RELEASE_FIELD = "first_release_at"
FIELDS = (COUNT_FIELD, EVERY_FIELD, UNIT_FIELD, QUEUE_FIELD, DAYS_FIELD, FIRST_RELEASE_FIELD)
"""The action's inline input fields (throttle/hubspot/action_definition.json)."""

UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}
_UNIT_ALIASES = {u[:-1]: u for u in UNITS} | {
    "s": "seconds",
    "m": "minutes",
    "h": "hours",
    "d": "days",
}
_QUEUE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
MAX_VALUE_CHARS = 200
"""A field value longer than this is a bad value (and is not echoed whole in a note)."""


@dataclass(frozen=True)
class InlineDecision:
    """The inline queue an execution is held in, and what the builder should know about it."""

    policy: Policy
    notes: tuple[str, ...]
    """Why the queue's rate is not exactly what the fields say (clamped, a bad value, ...)."""
    not_before: float = 0.0
    """Epoch seconds of the first release (0 = none): nothing is released earlier."""
    ceiling_note: str = ""
    """Set when the fields give no usable rate, so the ceiling's is used. A shared queue that
    exists keeps its own rate instead (webhook_service/inline_rates.py): one workflow's empty
    or bad fields must not change the rate every other workflow sharing the queue set."""

    @property
    def note(self) -> str:
        return "; ".join([*self.notes, self.ceiling_note] if self.ceiling_note else self.notes)

    @property
    def shared(self) -> bool:
        return self.policy.name.startswith(SHARED_PREFIX)

    @property
    def entry(self) -> str:
        """The queue's entry in the shard's inline index (what `throttle status` and the
        dispatcher's output fields read): JSON of the spec, the note and the first release."""
        body = {"spec": self.policy.spec(), "note": self.note, "notBefore": self.not_before}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))


def is_inline(policy_name: str) -> bool:
    return policy_name.startswith(PREFIX)


def fields_hash(values: Mapping[str, str]) -> str:
    """What tells two throttle steps of one workflow apart: a hash of the fields' values."""
    text = json.dumps({k: values[k] for k in sorted(values)}, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def ceiling_for(get: Callable[[int, str], Policy | None], portal_id: int) -> InlineCeiling:
    """The portal's ceiling: its default policy's `inline`, else the global default's, else the
    settings' (`InlineCeiling()`, whose `max_rate` None means `INLINE_MAX_PER_MINUTE`).
    `get(portal, name)`: a policy by identity (`PolicyIndex.get`)."""
    for portal in (portal_id, GLOBAL_PORTAL):
        default = get(portal, DEFAULT_POLICY_NAME)
        if default is not None and default.inline is not None:
            return default.inline
    return InlineCeiling()


def decide(
    values: Mapping[str, str],
    *,
    portal_id: int,
    workflow_id: int | None,
    action_id: int,
    ceiling: InlineCeiling,
    default_max_per_minute: int,
    now: float,
) -> InlineDecision:
    """The inline queue for these field values under this ceiling. Never fails: a bad value
    is replaced by the ceiling's and noted."""
    notes: list[str] = []
    max_rate = ceiling.max_rate or Rate(limit=default_max_per_minute, period=timedelta(minutes=1))
    rate = _rate(values, notes)
    ceiling_note = ""
    if rate is None:
        rate = max_rate
        ceiling_note = f"held at the portal's ceiling of {describe_rate(max_rate)}"
    elif _per_second(rate) > _per_second(max_rate):
        ceiling_text = describe_rate(max_rate)
        notes.append(
            f"rate {describe_rate(rate)} clamped to the portal's ceiling of {ceiling_text}"
        )
        rate = max_rate
    daily_cap = None
    if ceiling.max_daily_total is not None:
        daily_cap = DailyCap(limit=max(ceiling.max_daily_total, 1), time_zone=ceiling.time_zone)
        if _per_second(rate) * 86400 > ceiling.max_daily_total:
            notes.append(f"at most {ceiling.max_daily_total} a day (the portal's ceiling)")
        if daily_cap.limit < rate.limit and rate.period <= timedelta(days=1):
            rate = Rate(limit=daily_cap.limit, period=rate.period)  # the CRD's rule
    days = _days(values.get(DAYS_FIELD), notes)
    schedule = None
    if days is not None and len(days) < 7:
        window = Window(days=days, start="00:00", end="24:00")
        schedule = Schedule(time_zone=ceiling.time_zone, windows=[window])
    not_before = _first_release(values.get(FIRST_RELEASE_FIELD), now, notes)
    name = _queue_name(values, workflow_id, action_id, notes)
    policy = Policy(
        name=name,
        portal_id=portal_id,
        rate=rate,
        daily_cap=daily_cap,
        schedule=schedule,
        expiration=ceiling.expiration,
    )
    return InlineDecision(policy, tuple(notes), not_before, ceiling_note)


def describe_rate(rate: Rate) -> str:
    seconds = rate.period.total_seconds()
    for unit, size in reversed(UNITS.items()):
        if seconds % size == 0:
            amount = int(seconds // size)
            return f"{rate.limit} per {amount} {unit if amount != 1 else unit[:-1]}"
    return f"{rate.limit} per {seconds:g} seconds"  # pragma: no cover - periods are whole seconds


def _per_second(rate: Rate) -> float:
    return rate.limit / rate.period.total_seconds()


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")


def _number(text: str | None) -> float | None:
    if text is None or len(text) > MAX_VALUE_CHARS:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _rate(values: Mapping[str, str], notes: list[str]) -> Rate | None:
    count_text, every_text = values.get(COUNT_FIELD), values.get(EVERY_FIELD, "1")
    count, every = _number(count_text), _number(every_text)
    bad = len(notes)
    if count_text is None:
        notes.append("no rate: 'Release how many' is empty")
    elif count is None or count != int(count) or not 1 <= count <= 1_000_000:
        notes.append(
            f"'Release how many' {_shown(count_text)} is not a whole number from 1 to 1000000"
        )
    if every is None or every <= 0:
        notes.append(f"'Every' {_shown(every_text)} is not a number above 0")
    unit_text = values.get(UNIT_FIELD, "minutes").lower()
    unit = unit_text if unit_text in UNITS else _UNIT_ALIASES.get(unit_text)
    if unit is None:
        notes.append(f"unit {_shown(values.get(UNIT_FIELD, ''))} is not one of {', '.join(UNITS)}")
    if len(notes) > bad or count is None or every is None or unit is None:
        return None
    seconds = every * UNITS[unit]
    if not 1 <= seconds <= 31 * 86400:
        notes.append("the period (every times unit) must be between 1 second and 31 days")
        return None
    return Rate(limit=int(count), period=timedelta(seconds=round(seconds)))


def _days(text: str | None, notes: list[str]) -> list[str] | None:
    if text is None:
        return None
    days: list[str] = []
    for part in re.split(r"[;,\s]+", text[:MAX_VALUE_CHARS]):
        if not part:
            continue
        index = weekday_index(part)
        if index is None:
            notes.append(f"release day {_shown(part)} is not a weekday; released on every day")
            return None
        if DAYS[index] not in days:
            days.append(DAYS[index])
    return days or None


def _first_release(text: str | None, now: float, notes: list[str]) -> float:
    if text is None:
        return 0.0
    at = _timestamp(text)
    if at is None:
        notes.append(f"first release {_shown(text)} is not a date-time; released from now")
        return 0.0
    if at <= now:
        notes.append("the first release time has passed; released from now")
        return 0.0
    return at


def _timestamp(text: str) -> float | None:
    """HubSpot sends a date-time field as epoch milliseconds; ISO-8601 is taken too."""
    number = _number(text)
    if number is not None:
        return number / 1000 if 0 < number < 1e15 else None
    if len(text) > MAX_VALUE_CHARS:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _queue_name(
    values: Mapping[str, str], workflow_id: int | None, action_id: int, notes: list[str]
) -> str:
    wanted = values.get(QUEUE_FIELD)
    if wanted is not None:
        name = re.sub(r"[\s_]+", "-", wanted.strip().lower())
        if _QUEUE_NAME.match(name):
            return SHARED_PREFIX + name
        notes.append(
            f"queue name {_shown(wanted)} must be 1-40 letters, digits and dashes; "
            "this step's own queue is used"
        )
    rate_values = {k: v for k, v in values.items() if k != QUEUE_FIELD}
    return f"{PREFIX}w{workflow_id or 0}.a{action_id}.{fields_hash(rate_values)}"
