"""Every Lua script opens the same way: a header listing each KEYS[i], ARGV[i] and the return
value, then its inputs bound to named locals; and the loader knows every script file."""

from __future__ import annotations

import re
from importlib.resources import files

import pytest

from throttle.engine.scripts import ENGINE_SCRIPTS

LUA = files("throttle.engine").joinpath("lua")
SCRIPT_FILES = sorted(
    p.name.removesuffix(".lua")
    for p in LUA.iterdir()
    if p.name.endswith(".lua") and p.name != "_lib.lua"
)
_INPUT = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")


def test_the_loader_knows_every_script_file() -> None:
    assert sorted(ENGINE_SCRIPTS) == SCRIPT_FILES


@pytest.mark.parametrize("name", SCRIPT_FILES)
def test_header_lists_inputs_and_body_binds_them_first(name: str) -> None:
    lines = LUA.joinpath(f"{name}.lua").read_text(encoding="utf-8").splitlines()
    header = [line for line in lines[: _first_code(lines)] if line.startswith("--")]
    assert header[0].startswith(f"-- {name}.lua: "), "opens with its name and what it does"
    listed = {
        (m[1], int(m[2])) for line in header if (m := re.match(r"-- (KEYS|ARGV)\[(\d+)\]", line))
    }
    assert any(line.startswith("-- Returns") for line in header)

    code = lines[_first_code(lines) :]
    bound: set[tuple[str, int]] = set()
    reading_inputs = True
    for line in code:
        found = {(kind, int(i)) for kind, i in _INPUT.findall(line)}
        if reading_inputs and line.startswith("local ") and found:
            bound |= found
            continue
        if line.strip():
            reading_inputs = reading_inputs and line.startswith("local ")
        assert not {k for k in found if k[0] == "KEYS"}, f"KEYS read past the top: {line!r}"
        # ARGV may be read past the top only as the variadic tail (pairs, triples, fields)
        for kind, index in found:
            assert (kind, index) not in listed, f"{kind}[{index}] read past the top: {line!r}"
    assert bound == listed, "each listed input is bound to a named local, and only those"


def _first_code(lines: list[str]) -> int:
    return next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("--"))
