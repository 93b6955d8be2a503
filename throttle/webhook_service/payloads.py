"""The bodies HubSpot sends us, parsed straight from the raw bytes (pydantic-core's JSON parser).

Unknown fields are ignored (HubSpot adds fields over time; the contract says accept them). Errors
become a 400 naming the first offending field as a dotted path (`origin.portalId`).
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from throttle.webhook_service.errors import ApiError

MAX_JSON_DEPTH = 32
"""HubSpot's payloads nest 3 or 4 levels; anything far deeper is an attack on the parser."""

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")

M = TypeVar("M", bound=BaseModel)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class Origin(_Lenient):
    portal_id: int = Field(alias="portalId", ge=1)
    action_definition_id: int = Field(alias="actionDefinitionId", ge=0)
    action_definition_version: int | None = Field(None, alias="actionDefinitionVersion")


class Context(_Lenient):
    source: str | None = None
    workflow_id: int | None = Field(None, alias="workflowId")


class ActionObject(_Lenient):
    object_id: int | str = Field(alias="objectId")
    object_type: str = Field(alias="objectType", min_length=1)


class ActionRequest(_Lenient):
    """One workflow execution reaching the throttle step."""

    callback_id: str = Field(alias="callbackId", min_length=1, max_length=256)
    origin: Origin
    context: Context = Field(default_factory=lambda: Context.model_validate({}))
    object: ActionObject | None = None
    input_fields: dict[str, Any] = Field(default_factory=dict, alias="inputFields")

    @field_validator("callback_id")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable() or value.strip() != value:
            raise ValueError("must be printable without surrounding spaces")
        return value


class FetchOptions(_Lenient):
    q: str | None = None
    after: str | None = None


class OptionsOrigin(_Lenient):
    portal_id: int = Field(alias="portalId", ge=1)
    action_definition_id: int | None = Field(None, alias="actionDefinitionId")


class OptionsRequest(_Lenient):
    """HubSpot asking which values to offer in an input field's drop-down."""

    origin: OptionsOrigin
    input_field_name: str | None = Field(None, alias="inputFieldName")
    input_fields: dict[str, Any] = Field(default_factory=dict, alias="inputFields")
    fetch_options: FetchOptions = Field(
        default_factory=lambda: FetchOptions.model_validate({}), alias="fetchOptions"
    )


def check_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than `limit` before any parser recurses into it."""
    if body.count(b"{") + body.count(b"[") <= limit:
        return  # cannot be deeper than the number of openers: the common, free case
    depth = 0
    for match in _BRACKETS.finditer(_STRINGS.sub(b'""', body)):
        if match.group() in (b"{", b"["):
            depth += 1
            if depth > limit:
                raise ApiError(400, "invalid_json", f"JSON nested deeper than {limit} levels")
        else:
            depth -= 1


def field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def parse(model: type[M], body: bytes) -> M:
    """Parse and validate a request body; 400 naming the field on any problem."""
    check_depth(body)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        if error["type"] in ("json_invalid", "json_type"):
            raise ApiError(400, "invalid_json", f"body is not valid JSON: {error['msg']}") from None
        path = field_path(error["loc"])
        if error["type"] == "model_type" and not error["loc"]:
            raise ApiError(400, "invalid_payload", "body must be a JSON object", "body") from None
        raise ApiError(400, "invalid_payload", f"{path}: {error['msg']}", path) from None
