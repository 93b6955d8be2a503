"""An execution's priority inside its queue: what the action's `priority` field may say, and
the rule the queue releases by.

The rule (docs/policies.md, "Priority"). Each queued execution has a score, its arrival time
minus its priority times `STEP_SECONDS`; a queue releases the lowest score first (ties: the
callback id's bytes, as Redis orders a sorted set). So a higher priority goes first, executions
of one priority go first-in-first-out, and an execution of priority p is overtaken only by
executions of priority q > p that arrived less than (q - p) x `STEP_SECONDS` after it: its wait
beyond plain FIFO is bounded, however many top-priority executions keep arriving, and nothing
starves until it expires.

Executions without the field (every action registered before it existed), with NONE or 0 stay
in the queue's plain list, exactly as before priorities existed; only priorities 1-9 go to the
queue's sorted set (keys.py, `queue_priority`), and `take.lua` merges the two by score.
"""

from __future__ import annotations

import re
from typing import NamedTuple

FIELD = "priority"
"""The action's input field (throttle/hubspot/action_definition.json)."""
OUTPUT_FIELD = "throttle_priority"
REASON_OUTPUT_FIELD = "throttle_priority_reason"

MAX_LEVEL = 9
STEP_SECONDS = 3600
"""Seconds of arrival one priority level is worth. `_lib.lua`'s `PRIORITY_STEP_US` is this in
microseconds (tests/engine/test_priority.py holds them equal): the lowest priority waits at most
9 hours of top-priority arrivals beyond its FIFO turn."""

NAMES = {"NONE": 0, "LOW": 3, "MEDIUM": 6, "HIGH": 9}
"""HubSpot's priority property values, as levels."""

UNREADABLE = (
    "the priority field's value is not 0-9 or HIGH, MEDIUM, LOW, NONE: held as NONE (0), "
    "behind every higher priority"
)

_LEVEL = re.compile(r"0*([0-9])(?:\.0*)?")
"""A level as text: one digit, maybe zero-padded or with a zero fraction ("07", "5.0")."""


class Priority(NamedTuple):
    """What an execution's priority field said."""

    level: int
    given: bool
    """The field had a value (False: absent or empty; the execution is handled as before
    priorities existed, and its completion carries no priority output field)."""
    readable: bool = True
    """False: a value that is not a priority; held as NONE, and the completion says why."""

    @property
    def tag(self) -> str:
        """How meta and the scripts carry it: "" (not given), "N", or "0!" (unreadable)."""
        if not self.given:
            return ""
        return f"{self.level}" if self.readable else f"{self.level}!"

    @classmethod
    def from_tag(cls, tag: str) -> Priority:
        if not tag:
            return NOT_GIVEN
        return cls(int(tag.rstrip("!")), given=True, readable=not tag.endswith("!"))

    def output_fields(self) -> dict[str, int | str]:
        """The completion's priority output fields: none when the field was not given, so an
        action registered before priorities existed completes exactly as it did."""
        if not self.given:
            return {}
        fields: dict[str, int | str] = {OUTPUT_FIELD: self.level}
        if not self.readable:
            fields[REASON_OUTPUT_FIELD] = UNREADABLE
        return fields


NOT_GIVEN = Priority(0, given=False)


def parse_priority(value: object) -> Priority:
    """The priority an input field's value asks for. A static value arrives as the option's
    value; an object property as whatever the record holds (a number, its text, HubSpot's
    HIGH/MEDIUM/LOW/NONE in any case, or nothing). The webhook and `throttle recover` both pass
    the field as the webhook keeps it (text; JSON for anything else), so a rebuilt queue holds
    an execution at the priority it had. Never raises: what is not a priority is held as NONE,
    flagged unreadable."""
    if value is None or isinstance(value, bool):
        return NOT_GIVEN if value is None else Priority(0, True, readable=False)
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    elif isinstance(value, str):
        text = value.strip()
    else:
        return Priority(0, True, readable=False)
    if not text or text == "null":  # an empty property; `null` as the webhook stores JSON null
        return NOT_GIVEN
    named = NAMES.get(text.upper())
    if named is not None:
        return Priority(named, True)
    level = _LEVEL.fullmatch(text)
    if level is not None:
        return Priority(int(level.group(1)), True)
    return Priority(0, True, readable=False)


def score_us(enqueued_us: int, level: int) -> int:
    """The release order key (lower first), as `_lib.lua`'s `priority_score` computes it."""
    return enqueued_us - level * STEP_SECONDS * 1_000_000
