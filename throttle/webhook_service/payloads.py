"""The bodies HubSpot sends us, parsed straight from the raw bytes.

Unknown fields are ignored (HubSpot adds fields over time; the contract says accept them). Errors
become a 400 naming the first offending field as a dotted path (`origin.portalId`).

The pydantic models are the definition: they validate, name the field in an error and give the
OpenAPI schema. The action endpoint, which runs for every workflow execution, first tries
`ExecutionPayload`, a msgspec mirror of `ActionRequest` that decodes a well-formed body in well
under a microsecond (pydantic: 3-5 µs, a tenth of the webhook's own work). Whatever msgspec refuses
(an error, a value pydantic accepts by coercion, such as `"123"` for an integer, a field named by
its Python name) or would pass unchecked (bytes that are not UTF-8 in a member it skips) goes to
pydantic, so both paths accept the same bodies with the same values and fail with the same
message; `tests/webhook/test_payloads.py` checks that they agree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from throttle.engine.inline import FIELDS as INLINE_FIELDS
from throttle.engine.priority import FIELD as PRIORITY_FIELD
from throttle.engine.priority import NOT_GIVEN, Priority, parse_priority
from throttle.webhook_service.errors import ErrorAnswer

MAX_JSON_DEPTH = 32
"""HubSpot's payloads nest 3 or 4 levels; anything far deeper is an attack on the parser."""

_STRINGS = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
"""A JSON string, or an unterminated one running to the end of the body. Possessive (`*+`) and
never failing once a quote opened, so each byte is looked at once: with a plain `*` and a
mandatory closing quote, a body of `\\"` pairs made every quote start a scan to the end (quadratic:
20,000 pairs took 19 s). An unterminated string is invalid JSON; the parser says so after."""
_BRACKETS = re.compile(rb"[\[\]{}]")

M = TypeVar("M", bound=BaseModel)

INT64_MAX = 2**63 - 1
"""Identifiers are 64-bit in HubSpot and in PostgreSQL (bigint): a larger number is refused here
rather than failing on its way to history."""
INT64_MIN = -(2**63)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


class Origin(_Lenient):
    portal_id: int = Field(alias="portalId", ge=1, le=INT64_MAX)
    action_definition_id: int = Field(alias="actionDefinitionId", ge=0, le=INT64_MAX)
    action_definition_version: Int64 | None = Field(None, alias="actionDefinitionVersion")


class Context(_Lenient):
    source: str | None = None
    workflow_id: Int64 | None = Field(None, alias="workflowId")


class ActionObject(_Lenient):
    object_id: int | str = Field(alias="objectId")
    object_type: str = Field(alias="objectType", min_length=1)

    @field_validator("object_id")
    @classmethod
    def _int64(cls, value: int | str) -> int | str:
        # A validator rather than a bounded type in the union, whose member tag would end up in
        # the error's field path (`object.objectId.constrained-int`).
        if not _fits_object_id(value):
            raise ValueError(OBJECT_ID_RULE)
        return value


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
        if not _printable_id(value):
            raise ValueError(CALLBACK_ID_RULE)
        return value


CALLBACK_ID_RULE = "must be printable without surrounding spaces"
OBJECT_ID_RULE = "must be a string or a 64-bit integer"


def _fits_object_id(value: int | str) -> bool:
    return isinstance(value, str) or INT64_MIN <= value <= INT64_MAX


def _printable_id(value: str) -> bool:
    return value.isprintable() and value.strip() == value


# --- the action endpoint's fast path: ActionRequest again, as msgspec structs ------------------
_ExecInt = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]

# `populate_by_name` lets pydantic read an optional field by its Python name when the alias is
# absent (`"input_fields"` for `inputFields`); msgspec knows one name per field and would drop it
# as unknown. The `_by_name` fields catch those keys (whatever their value) so that such a body,
# which HubSpot never sends, goes to pydantic. A required field named only by its Python name
# already fails msgspec (its alias is missing), and beside its alias pydantic ignores it too.


class ExecutionOrigin(msgspec.Struct, frozen=True, rename="camel"):
    portal_id: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]
    action_definition_id: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
    action_definition_version: _ExecInt | None = None
    _version_by_name: Any = msgspec.field(default=msgspec.UNSET, name="action_definition_version")


class ExecutionContext(msgspec.Struct, frozen=True, rename="camel"):
    source: str | None = None
    workflow_id: _ExecInt | None = None
    _workflow_by_name: Any = msgspec.field(default=msgspec.UNSET, name="workflow_id")


class ExecutionObject(msgspec.Struct, frozen=True, rename="camel"):
    object_id: int | str
    object_type: Annotated[str, msgspec.Meta(min_length=1)]

    def __post_init__(self) -> None:
        if not _fits_object_id(self.object_id):
            raise ValueError(OBJECT_ID_RULE)


class ExecutionPayload(msgspec.Struct, frozen=True, rename="camel"):
    """One workflow execution reaching the throttle step (`ActionRequest`, as the handler
    uses it)."""

    callback_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    origin: ExecutionOrigin
    context: ExecutionContext = msgspec.field(default_factory=ExecutionContext)
    object: ExecutionObject | None = None
    input_fields: dict[str, Any] = msgspec.field(default_factory=dict)
    _inputs_by_name: Any = msgspec.field(default=msgspec.UNSET, name="input_fields")

    def __post_init__(self) -> None:
        if not _printable_id(self.callback_id):
            raise ValueError(CALLBACK_ID_RULE)
        if (
            self._inputs_by_name is not msgspec.UNSET
            or self.origin._version_by_name is not msgspec.UNSET
            or self.context._workflow_by_name is not msgspec.UNSET
        ):
            raise ValueError("a field named by its Python name: pydantic decides")


_EXECUTION = msgspec.json.Decoder(ExecutionPayload)


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
                raise ErrorAnswer(400, "invalid_json", f"JSON nested deeper than {limit} levels")
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
            raise ErrorAnswer(
                400, "invalid_json", f"body is not valid JSON: {error['msg']}"
            ) from None
        path = field_path(error["loc"])
        if error["type"] == "model_type" and not error["loc"]:
            raise ErrorAnswer(
                400, "invalid_payload", "body must be a JSON object", "body"
            ) from None
        raise ErrorAnswer(400, "invalid_payload", f"{path}: {error['msg']}", path) from None


def _is_utf8(body: bytes) -> bool:
    """msgspec checks the UTF-8 of the strings it decodes but not of the members it skips
    (`object.properties`, unknown fields), which pydantic refuses as invalid JSON."""
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


def parse_execution(body: bytes) -> ExecutionPayload:
    """`parse(ActionRequest, body)`, as an `ExecutionPayload`: msgspec when it accepts the body
    as it is, pydantic for everything else (see the module docstring)."""
    check_depth(body)
    if body.isascii() or _is_utf8(body):
        try:
            return _EXECUTION.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            pass
    model = parse(ActionRequest, body)  # names the field, or accepts by coercion
    try:
        return msgspec.convert(model.model_dump(by_alias=True), ExecutionPayload)
    except msgspec.ValidationError as exc:  # pragma: no cover - the models agree (tested)
        raise ErrorAnswer(400, "invalid_payload", str(exc)) from None


def inline_fields(payload: ExecutionPayload) -> dict[str, str] | None:
    """The inline-rate fields the execution carries (engine/inline.py) as text, empty ones left
    out; None when it carries none, as every execution of a definition registered before they
    existed: then it is handled exactly as before."""
    found: dict[str, str] | None = None
    fields = payload.input_fields
    for name in INLINE_FIELDS:
        value = fields.get(name)
        if value is None:
            continue
        text = (value if isinstance(value, str) else json.dumps(value, sort_keys=True)).strip()
        if text:
            found = found if found is not None else {}
            found[name] = text
    return found


def execution_priority(inputs: Mapping[str, str]) -> Priority:
    """The execution's place in its queue, from its input fields as the webhook keeps them
    (what history stores, so `throttle recover` parses the same text). Any value is accepted:
    one that is not a priority is held as NONE and its completion says why, never a 4xx.
    Without the field (every action registered before it existed) nothing is parsed."""
    value = inputs.get(PRIORITY_FIELD)
    return NOT_GIVEN if value is None else parse_priority(value)
