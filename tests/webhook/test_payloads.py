"""The action endpoint's two parsers agree: `parse_execution` (msgspec, pydantic when msgspec
refuses) accepts exactly the bodies `parse(ActionRequest, ...)` accepts, with the same values, and
refuses the others with the same 400 (status, error code, detail and field)."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from throttle.webhook_service import payloads
from throttle.webhook_service.errors import ErrorAnswer
from throttle.webhook_service.payloads import (
    MAX_JSON_DEPTH,
    ActionRequest,
    ExecutionPayload,
    check_depth,
    parse,
    parse_execution,
)

# --- a small JSON writer that can say what json.dumps cannot: duplicate keys, raw number tokens


@dataclass(frozen=True)
class Obj:
    """A JSON object as written: its members in order, duplicates allowed."""

    members: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Raw:
    """A JSON token written as it is (a number such as `1.0e2` or `-0`)."""

    text: str


def write(value: Any, ascii_only: bool, sep: str) -> str:
    if isinstance(value, Obj):
        inner = f",{sep}".join(
            f"{json.dumps(key, ensure_ascii=ascii_only)}:{sep}{write(item, ascii_only, sep)}"
            for key, item in value.members
        )
        return "{" + sep + inner + sep + "}"
    if isinstance(value, list):
        return "[" + f",{sep}".join(write(item, ascii_only, sep) for item in value) + "]"
    if isinstance(value, Raw):
        return value.text
    return json.dumps(value, ensure_ascii=ascii_only)  # NaN/Infinity too: pydantic reads them


# --- values around the ActionRequest shape --------------------------------------------------

INT64 = 2**63

EDGE_INTS = [0, 1, -1, 2, 5, 904, INT64 - 1, INT64, -INT64, -INT64 - 1, 2**64, 2**64 - 1, 10**30]
NUMBER_TOKENS = st.from_regex(r"\A-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,3})?\Z")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(EDGE_INTS),
    st.floats(),  # NaN and infinities included
    st.text(max_size=8),
    NUMBER_TOKENS.map(Raw),
)


def members(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Obj]:
    pairs = st.lists(st.tuples(st.text(max_size=6), values), max_size=4)
    return pairs.map(lambda items: Obj(tuple(items)))


any_json = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), members(inner)), max_leaves=8
)

ints = st.one_of(
    st.sampled_from(EDGE_INTS),
    st.integers(min_value=-(10**3), max_value=10**12),
    st.integers(),
)

int_like = st.one_of(
    ints,
    ints.map(str),  # pydantic coerces "123"
    ints.map(lambda n: f" {n} "),
    st.sampled_from([5.0, 5.5, -0.0, 1e2, 1e20, True, False, None, "", "abc", "1.0", "1e3"]),
    st.floats(),
    NUMBER_TOKENS.map(Raw),
    any_json,
)

odd_ids = [
    "",
    " ",
    " a",
    "a ",
    "\ta",
    "a\n",
    "a\x00b",
    "a\x7f",
    "\u200bx",
    "x\u00a0",
    "\u2028",
    "ap-1-2-3-0",
    "é",
    "x" * 255,
    "x" * 256,
    "x" * 257,
    "é" * 256,
    "é" * 257,
    "😀" * 256,
    "😀" * 257,
    "\ud800",  # a lone surrogate: escaped, or invalid UTF-8 when written raw
]

strings = st.one_of(
    st.sampled_from(odd_ids),
    st.text(max_size=12),
    st.text(st.characters(codec="ascii"), min_size=250, max_size=260),
)

printable_ids = st.text(
    st.characters(codec="utf-8", categories=["L", "N", "P", "S"]), min_size=1, max_size=40
)
int64s = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 10**6))


@dataclass(frozen=True)
class Field:
    """One member of a body: its alias, its Python name, a valid value and any value at all."""

    alias: str
    name: str
    valid: st.SearchStrategy[Any]
    wild: st.SearchStrategy[Any]


# Each field is written by its alias, by its Python name (pydantic's `populate_by_name`), by
# both, or left out.
NAMINGS = ["alias"] * 10 + ["name", "alias+name", "name+alias", "missing"]


@st.composite
def objects(draw: st.DrawFn, fields: list[Field], wildness: int) -> Obj:
    """An object of `fields`, each wild with a chance of `wildness` in 10 (else valid), plus
    unknown members and maybe a duplicate key, in any order."""
    written: list[tuple[str, Any]] = []
    for field in fields:
        how = draw(st.sampled_from(NAMINGS))
        keys = {"alias": [field.alias], "name": [field.name], "missing": []}.get(how) or (
            [field.alias, field.name] if how == "alias+name" else [field.name, field.alias]
        )
        if field.alias == field.name and keys:
            keys = [field.alias]
        for key in keys:
            wild = draw(st.integers(0, 9)) < wildness
            written.append((key, draw(field.wild if wild else field.valid)))
    written.extend(draw(st.lists(st.tuples(st.text(max_size=8), any_json), max_size=2)))
    if written and draw(st.integers(0, 9)) < wildness:
        key, _ = draw(st.sampled_from(written))  # a duplicate key, the later one wins
        written.append((key, draw(any_json)))
    return Obj(tuple(draw(st.permutations(written))))


@st.composite
def body_values(draw: st.DrawFn) -> Any:
    wildness = draw(st.sampled_from([0, 1, 3, 10]))
    if wildness == 10 and draw(st.booleans()):
        return draw(any_json)  # mostly not an object at all

    def obj(fields: list[Field]) -> st.SearchStrategy[Obj]:
        return objects(fields, wildness)

    origin = obj(
        [
            Field("portalId", "portal_id", st.integers(1, 2**63 - 1), int_like),
            Field(
                "actionDefinitionId", "action_definition_id", st.integers(0, 2**63 - 1), int_like
            ),
            Field(
                "actionDefinitionVersion",
                "action_definition_version",
                st.one_of(st.none(), int64s),
                int_like,
            ),
        ]
    )
    context = obj(
        [
            Field("source", "source", st.one_of(st.none(), strings), any_json),
            Field("workflowId", "workflow_id", st.one_of(st.none(), int64s), int_like),
        ]
    )
    action_object = obj(
        [
            Field("objectId", "object_id", st.one_of(int64s, strings), int_like),
            Field("objectType", "object_type", st.text(min_size=1, max_size=10), strings),
        ]
    )
    return draw(
        obj(
            [
                Field("callbackId", "callback_id", printable_ids, st.one_of(strings, any_json)),
                Field("origin", "origin", origin, any_json),
                Field("context", "context", context, any_json),
                Field("object", "object", st.one_of(st.none(), action_object), any_json),
                Field("inputFields", "input_fields", members(any_json), any_json),
            ]
        )
    )


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    value = draw(body_values())
    text = write(value, ascii_only=draw(st.booleans()), sep=draw(st.sampled_from(["", " ", "\n"])))
    body = text.encode("utf-8", "surrogatepass")
    damage = draw(st.sampled_from(["none"] * 8 + ["cut", "insert", "replace"]))
    if damage != "none" and body:
        at = draw(st.integers(0, len(body) - 1))
        byte = bytes([draw(st.integers(0, 255))])
        body = {
            "cut": body[:at],
            "insert": body[:at] + byte + body[at:],
            "replace": body[:at] + byte + body[at + 1 :],
        }[damage]
    return body


# --- the verdicts -----------------------------------------------------------------------------


def verdict(parser: Any, body: bytes) -> Any:
    try:
        return parser(body)
    except ErrorAnswer as exc:
        return exc


def error_of(exc: ErrorAnswer) -> tuple[int, str, str, str | None]:
    return (exc.status, exc.error, exc.detail, exc.field)


def same_json(left: Any, right: Any) -> bool:
    """Equal JSON values of the same types: 1, 1.0 and True differ; NaN equals NaN; -0.0 is not
    0.0; dicts compare regardless of order."""
    if type(left) is not type(right):
        return False
    if isinstance(left, float):
        if math.isnan(left) or math.isnan(right):
            return math.isnan(left) and math.isnan(right)
        return left == right and math.copysign(1, left) == math.copysign(1, right)
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same_json(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(same_json, left, right))
    return bool(left == right)


def assert_agree(body: bytes) -> ExecutionPayload | None:
    expected = verdict(lambda b: parse(ActionRequest, b), body)
    got = verdict(parse_execution, body)
    if isinstance(expected, ErrorAnswer):
        assert isinstance(got, ErrorAnswer), f"pydantic refuses ({expected.detail}), msgspec: {got}"
        assert error_of(got) == error_of(expected)
        return None
    assert isinstance(got, ExecutionPayload), f"pydantic accepts, parse_execution: {error_of(got)}"
    dumped = expected.model_dump(by_alias=True)
    built = msgspec.to_builtins(got)
    # Both spell every field by its alias (msgspec's rename="camel" is HubSpot's camelCase).
    assert built.keys() == dumped.keys()
    for key in dumped:
        assert same_json(built[key], dumped[key]), (key, built[key], dumped[key])
    return got


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
@example(
    b'{"callbackId":"a","origin":{"portalId":1,"actionDefinitionId":0},"input_fields":{"x":1}}'
)
@example(
    b'{"callbackId":"a","origin":{"portalId":1,"actionDefinitionId":0,'
    b'"action_definition_version":"x"}}'
)
@example(
    b'{"callbackId":"a","origin":{"portalId":1,"actionDefinitionId":0},"inputFields":{"x":NaN}}'
)
@example(b'{"\x80":0,"callbackId":"a","origin":{"portalId":1,"actionDefinitionId":0}}')
def test_both_parsers_agree_on_any_body(body: bytes) -> None:
    assert_agree(body)


# --- explicit cases -------------------------------------------------------------------------


def hubspot_body(**changes: Any) -> dict[str, Any]:
    """What HubSpot sends (the shape bench/ingest.py signs)."""
    body: dict[str, Any] = {
        "callbackId": "ap-1a2b3c4d-17",
        "origin": {"portalId": 102670506, "actionDefinitionId": 77, "actionDefinitionVersion": 1},
        "context": {"source": "WORKFLOWS", "workflowId": 5017},
        "object": {"objectId": 17, "objectType": "CONTACT", "properties": {"email": "a@b.c"}},
        "inputFields": {"policy": ""},
    }
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = body
        for part in parents:
            target = target[part]
        target[leaf] = value
    return body


def encode(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def no_pydantic(*_: Any) -> Any:
    raise AssertionError("the fast path fell back to pydantic")


def test_a_hubspot_body_takes_the_msgspec_path(monkeypatch: pytest.MonkeyPatch) -> None:
    body = encode(hubspot_body())
    expected = assert_agree(body)
    assert expected is not None
    assert expected.origin.portal_id == 102670506
    assert expected.object is not None
    assert expected.object.object_id == 17
    monkeypatch.setattr(payloads, "parse", no_pydantic)
    assert parse_execution(body) == expected


def test_a_string_portal_id_is_coerced_as_pydantic_always_did() -> None:
    execution = assert_agree(encode(hubspot_body(origin__portalId="123")))
    assert execution is not None
    assert execution.origin.portal_id == 123
    assert type(execution.origin.portal_id) is int


def test_a_string_object_id_stays_a_string() -> None:
    execution = assert_agree(encode(hubspot_body(object__objectId="123")))
    assert execution is not None
    assert execution.object is not None
    assert execution.object.object_id == "123"


def refusal(body: bytes) -> ErrorAnswer:
    assert_agree(body)
    with pytest.raises(ErrorAnswer) as caught:
        parse_execution(body)
    assert caught.value.status == 400
    return caught.value


def test_a_portal_id_beyond_64_bits_is_refused_naming_it() -> None:
    error = refusal(encode(hubspot_body(origin__portalId=2**63)))
    assert error.error == "invalid_payload"
    assert error.field == "origin.portalId"


def test_an_object_id_beyond_64_bits_is_refused_naming_it() -> None:
    error = refusal(encode(hubspot_body(object__objectId=2**64)))
    assert error.error == "invalid_payload"
    assert error.field == "object.objectId"


def test_a_callback_id_with_a_leading_space_is_refused_naming_it() -> None:
    error = refusal(encode(hubspot_body(callbackId=" ap-1")))
    assert error.error == "invalid_payload"
    assert error.field == "callbackId"
    assert payloads.CALLBACK_ID_RULE in error.detail


@pytest.mark.parametrize(
    ("parent", "alias", "name", "value", "read"),
    [
        ("", "inputFields", "input_fields", {"policy": "p"}, lambda e: e.input_fields),
        (
            "origin",
            "actionDefinitionVersion",
            "action_definition_version",
            3,
            lambda e: e.origin.action_definition_version,
        ),
        ("context", "workflowId", "workflow_id", 9, lambda e: e.context.workflow_id),
    ],
)
def test_an_optional_field_named_by_its_python_name_is_read_as_pydantic_reads_it(
    parent: str, alias: str, name: str, value: Any, read: Any
) -> None:
    """pydantic's `populate_by_name` reads `"input_fields"` when `"inputFields"` is absent;
    msgspec alone would drop it as an unknown field."""
    body = hubspot_body()
    target = body[parent] if parent else body
    del target[alias]
    target[name] = value
    execution = assert_agree(encode(body))
    assert execution is not None
    assert read(execution) == value


@pytest.mark.parametrize("raw", [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe9t\xe9"])
def test_invalid_utf8_in_a_member_msgspec_skips_is_refused_as_pydantic_refuses_it(
    raw: bytes,
) -> None:
    """`object.properties` is in every HubSpot body and in neither model: msgspec skips it."""
    body = encode(hubspot_body(object__properties={"firstname": "PLACEHOLDER"}))
    error = refusal(body.replace(b"PLACEHOLDER", raw))
    assert error.error == "invalid_json"


def test_valid_utf8_beyond_ascii_takes_the_msgspec_path(monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps(hubspot_body(object__properties={"firstname": "Zoë 😀"}), ensure_ascii=False)
    expected = assert_agree(body.encode())
    assert expected is not None
    monkeypatch.setattr(payloads, "parse", no_pydantic)
    assert parse_execution(body.encode()) == expected


def _check_depth_seconds(body: bytes) -> float:
    """The fastest of a few runs of check_depth on `body` (refusal or not)."""
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        with contextlib.suppress(ErrorAnswer):
            check_depth(body)
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize("closed", [False, True], ids=["unterminated", "terminated"])
def test_the_depth_check_is_linear_on_a_body_of_escaped_quotes(closed: bool) -> None:
    """Deep enough to need the scan, then one string of `\\"` pairs: every quote used to start a
    scan to the end of the body (8x the body took 64x the time; 20,000 pairs took 19 s)."""

    def body(pairs: int) -> bytes:
        return b"[" * (MAX_JSON_DEPTH + 1) + b'"' + b'\\"' * pairs + (b'"' if closed else b"")

    small, large = _check_depth_seconds(body(2_000)), _check_depth_seconds(body(16_000))
    assert large < 0.5, f"{large:.3f} s for 16,000 escaped quotes"
    assert large / max(small, 1e-5) < 24, (small, large)
    with pytest.raises(ErrorAnswer, match="nested deeper"):
        check_depth(body(500_000))  # a 1 MB body: still refused for its depth, at once


@pytest.mark.parametrize(
    ("body", "deep"),
    [
        (b"[" * 32 + b'"[[[]"' + b"]" * 32, False),  # brackets inside a string
        (b"[" * 33 + b'"\\\\"' + b"[" * 40, True),  # an escaped backslash closes nothing
        (b'["\\"' + b"[" * 40 + b'"]', False),  # an escaped quote does not close the string
        (b'["' + b"[" * 40 + b"x\\", False),  # unterminated, a lone backslash at the end
    ],
)
def test_the_depth_check_reads_strings_as_json_does(body: bytes, deep: bool) -> None:
    if deep:
        with pytest.raises(ErrorAnswer, match="nested deeper"):
            check_depth(body)
    else:
        check_depth(body)
