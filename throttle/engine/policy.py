"""The throttle policy: one validated type for the CRD spec, the config API body and Redis.

Pure data: validation with messages that name the field, the identity (`portal:name`), the
spec as the CRD and the config API hold it, and its content hash. What the policy means over
time lives beside it: `forecast` (projected waits, capacity), `calendars` (zones, windows),
`policy_encoding` (what the Lua scripts read), `durations` (ISO-8601).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from throttle.engine import keys
from throttle.engine.calendars import DAYS, check_zone, weekday_index
from throttle.engine.durations import Duration, format_duration

GLOBAL_PORTAL = 0
"""`portalId` of the global default policy, which applies to any portal without its own."""

DEFAULT_POLICY_NAME = "default"
"""A portal's default policy is its policy with this name (the global default too)."""

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")


class _Spec(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


_DURATION: TypeAdapter[timedelta] = TypeAdapter(Duration)


def _no_default(schema: dict[str, Any]) -> None:
    """The burst's default depends on the rate: a schema must not claim it is 0."""
    schema.pop("default", None)


JITTER_BURST_BELOW_S = 10.0
"""A rate whose releases are closer than this defaults to `burst: 1` (`Rate`)."""


class Rate(_Spec):
    """`limit` releases per `period`, plus `burst` extra allowed at once after an idle spell.

    No window of one `period` ever holds more than `limit + burst` releases. `burst` also
    absorbs dispatcher timing jitter: with `burst: 0` a release taken δ late moves the whole
    schedule by δ (the bound leaves no room to catch up), costing δ/(period/limit) of the rate:
    2.6% at 50/s even when the dispatcher wakes at the due time on quiet cores (bench/wake.py).
    So a rate that does not say its burst gets 1 when its releases are less than
    `JITTER_BURST_BELOW_S` apart, and 0 when they are slower, where a millisecond of lateness
    is lost in the noise and "10 a day" should mean at most 10 in any day.
    """

    limit: int = Field(ge=1, le=1_000_000)
    period: Duration = Field(default=timedelta(minutes=1))
    burst: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="Unset: 1 when releases are less than 10 s apart, else 0.",
        json_schema_extra=_no_default,
    )

    @model_validator(mode="before")
    @classmethod
    def _default_burst(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "burst" in data:
            return data
        try:
            limit = int(data["limit"])
            period = _DURATION.validate_python(data.get("period", timedelta(minutes=1)))
        except (KeyError, TypeError, ValueError):
            return data  # field validation names the problem
        if limit >= 1 and period.total_seconds() / limit < JITTER_BURST_BELOW_S:
            return {**data, "burst": 1}
        return data

    @field_validator("period")
    @classmethod
    def _period(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(days=31):
            raise ValueError("must be between 1 second and 31 days")
        return value

    @property
    def emission_interval(self) -> float:
        """Seconds between two releases at the steady rate (GCRA's T)."""
        return self.period.total_seconds() / self.limit


class DailyCap(_Spec):
    """At most `limit` releases per calendar day in `time_zone` (resets at local midnight)."""

    limit: int = Field(ge=1, le=100_000_000)
    time_zone: str = "UTC"

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_zone(value)


class Window(_Spec):
    """Release only on these weekdays between `start` and `end` (local wall clock, HH:MM)."""

    days: list[str] = Field(min_length=1)
    start: str
    end: str

    @field_validator("days")
    @classmethod
    def _days(cls, value: list[str]) -> list[str]:
        out = []
        for day in value:
            index = weekday_index(str(day))
            if index is None:
                raise ValueError(f"{day!r} is not a weekday (Mon, Tue, Wed, Thu, Fri, Sat, Sun)")
            if DAYS[index] not in out:
                out.append(DAYS[index])
        return out

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.match(value):
            raise ValueError(f"{value!r} is not a time of day HH:MM (00:00 to 24:00)")
        return value

    @model_validator(mode="after")
    def _order(self) -> Window:
        if self.end_minute <= self.start_minute:
            raise ValueError("end must be after start (split a window across midnight in two)")
        return self

    @property
    def start_minute(self) -> int:
        hours, minutes = self.start.split(":")
        return int(hours) * 60 + int(minutes)

    @property
    def end_minute(self) -> int:
        hours, minutes = self.end.split(":")
        return int(hours) * 60 + int(minutes)

    @property
    def weekdays(self) -> list[int]:
        return [DAYS.index(d) for d in self.days]


class Schedule(_Spec):
    """Release windows in one time zone; outside every window nothing is released."""

    time_zone: str = "UTC"
    windows: list[Window] = Field(min_length=1, max_length=50)

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_zone(value)


class InlineCeiling(_Spec):
    """What a portal's platform team allows the workflow editor's inline rates (engine/inline.py).

    Set on the portal's `default` policy (or on the global default, for every portal without
    its own): every inline queue of the portal runs at most at `max_rate` and releases at most
    `max_daily_total` a day (each queue on its own); `enabled: false` turns inline rates off for
    the portal, so executions that carry them are held by the portal's policies as before.
    """

    enabled: bool = True
    max_rate: Rate | None = None
    """None: the `INLINE_MAX_RATE` setting."""
    max_daily_total: int | None = Field(default=None, ge=1, le=100_000_000)
    time_zone: str = "UTC"
    """The clock an inline queue's release days are read on (HubSpot sends no portal zone)."""
    expiration: Duration = Field(default=timedelta(days=7))
    """How long HubSpot holds an execution of an inline queue (`hs_expiration_duration`)."""

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_zone(value)

    @field_validator("expiration")
    @classmethod
    def _expiration(cls, value: timedelta) -> timedelta:
        return _check_expiration(value)


def _check_expiration(value: timedelta) -> timedelta:
    if not timedelta(minutes=1) <= value <= timedelta(days=90):
        raise ValueError("must be between 1 minute (PT1M) and 90 days (P90D)")
    return value


class Policy(_Spec):
    """One throttle: which executions it holds and how fast it lets them go."""

    name: str = Field(min_length=1, max_length=63)
    portal_id: int = Field(ge=0, description="HubSpot portal (hub) id; 0 = global default.")
    action_id: int | None = Field(default=None, ge=1)
    rate: Rate
    daily_cap: DailyCap | None = None
    schedule: Schedule | None = None
    scope: Literal["Shared", "PerWorkflow"] = "Shared"
    """Shared: one queue (and one rate) for every workflow using the policy. PerWorkflow: each
    workflow gets its own queue with its own rate, daily cap and schedule."""
    expiration: Duration = Field(default=timedelta(days=7))
    overflow: Literal["Block", "Continue", "Fail"] = "Block"
    paused: bool = False
    inline: InlineCeiling | None = None
    """The ceiling of the portal's inline rates; read from the portal's (or the global)
    `default` policy only."""

    _revision: int = PrivateAttr(default=0)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                "must be lower-case letters, digits, '-' or '.', starting and ending with a "
                "letter or digit (a Kubernetes object name)"
            )
        return value

    @field_validator("expiration")
    @classmethod
    def _expiration(cls, value: timedelta) -> timedelta:
        return _check_expiration(value)

    # --- identity -------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """`portal:name`, the policy's identity in Redis."""
        return keys.policy_key(self.portal_id, self.name)

    @property
    def revision(self) -> int:
        """Registry revision of this copy (0 = unknown); an older one never overwrites newer."""
        return self._revision

    def with_revision(self, revision: int) -> Policy:
        copy = self.model_copy()
        copy._revision = revision
        return copy

    def for_portal(self, portal_id: int) -> Policy:
        """The global default, applied to one portal (its own queue and rate state)."""
        copy = self.model_copy(update={"portal_id": portal_id})
        copy._revision = self._revision
        return copy

    def spec(self) -> dict[str, Any]:
        """The camelCase spec (what a CRD or the config API holds)."""
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)

    @property
    def content_hash(self) -> str:
        text = json.dumps(self.spec(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def queue_id(self, workflow_id: int | None) -> str:
        """`shared`, or `wf<id>` when each workflow gets its own queue and rate."""
        if self.scope == "PerWorkflow" and workflow_id is not None:
            return f"wf{workflow_id}"
        return "shared"

    @property
    def expiration_iso(self) -> str:
        return format_duration(self.expiration)


def policy_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """(field path in camelCase, message) for each problem, for 4xx bodies and CLI messages."""
    out = []
    for error in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(p) for p in error["loc"]) or "spec"
        message = str(error["msg"]).removeprefix("Value error, ")
        out.append((path, message))
    return out
