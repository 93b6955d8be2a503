"""`make lint` runs scripts/duplicate_shapes.py over `throttle/`: no block of six or more lines
may stand twice, the same lines or the same shape with other names. These tests hold the
checker to that meaning: a copy renamed is still a copy, and what is not logic (a listing, a
constructor's assignments, blocks that differ in their literals) is not reported."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "duplicate_shapes.py"

LOGIC = """
def {name}(items, limit):
    kept = []
    for item in items:
        if item.size > limit:
            continue
        kept.append(item.name.lower())
        if len(kept) >= 10:
            break
    return sorted(kept)
"""


@pytest.fixture(scope="module")
def checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("duplicate_shapes", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def found(checker: ModuleType, tmp_path: Path, *sources: str) -> list[list[tuple[Path, int]]]:
    files = []
    for n, source in enumerate(sources):
        path = tmp_path / f"m{n}.py"
        path.write_text(textwrap.dedent(source))
        files.append(path)
    return list(checker.duplicates(files, 6))


def test_a_copy_with_other_names_is_found_across_files_and_within_one(
    checker: ModuleType, tmp_path: Path
) -> None:
    renamed = (
        LOGIC.format(name="b")
        .replace("kept", "chosen")
        .replace("item", "entry")
        .replace("limit", "most")
    )
    assert len(found(checker, tmp_path, LOGIC.format(name="a"), renamed)) == 1
    assert len(found(checker, tmp_path, LOGIC.format(name="a") + LOGIC.format(name="c"))) == 1


def test_blocks_that_differ_in_a_literal_or_an_operator_are_not_copies(
    checker: ModuleType, tmp_path: Path
) -> None:
    other = LOGIC.format(name="b").replace(">= 10", ">= 20").replace("> limit", "< limit")
    assert found(checker, tmp_path, LOGIC.format(name="a"), other) == []


def test_declarations_and_listings_are_not_logic(checker: ModuleType, tmp_path: Path) -> None:
    declaration = """
    class {name}:
        def __init__(self, a, b, c, d, e, f):
            self._a = a
            self._b = b
            self._c = c
            self._d = d
            self._e = e
            self._f = f

        def row(self):
            return (
                self._a,
                self._b,
                self._c,
                self._d,
                self._e,
                self._f,
            )
    """
    assert (
        found(checker, tmp_path, declaration.format(name="A"), declaration.format(name="B")) == []
    )


def test_the_runtime_package_holds_no_block_twice(checker: ModuleType) -> None:
    package = SCRIPT.parents[1] / "throttle"
    blocks = list(checker.duplicates(sorted(package.rglob("*.py")), 6))
    assert blocks == [], "\n".join(
        ", ".join(f"{path.relative_to(package.parent)}:{line}" for path, line in places)
        for places in blocks
    )
