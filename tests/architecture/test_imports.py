"""docs/architecture.md's layer table is the import rule: this test reads the table and every
import in `throttle/` and `devtools/throttle_dev/`, and fails on an import the table forbids, on
an import cycle, and on an import inside a function that does not say why it is lazy."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"
SOURCES = {"throttle": REPO / "throttle", "throttle_dev": REPO / "devtools" / "throttle_dev"}
LAZY_REASON = re.compile(r"#\s*lazy:\s*\S")
"""An import inside a function body carries `# lazy: <why>` on its line (or the line above)."""


def layer_table() -> dict[str, set[str]]:
    """`| package | what it owns | may import |` rows of the document, as {package: allowed}."""
    rules: dict[str, set[str]] = {}
    section = DOC.read_text().split("<!-- layers -->")[1].split("<!-- /layers -->")[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        package = cells[0].strip("`")
        rules[package] = set(re.findall(r"`([\w.]+)`", cells[2]))
    return rules


def module_name(path: Path, package: str, root: Path) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> Iterator[tuple[str, Path]]:
    for package, root in SOURCES.items():
        for path in sorted(root.rglob("*.py")):
            yield module_name(path, package, root), path


def imports_of(path: Path) -> Iterator[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every first-party import."""
    tree = ast.parse(path.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    nested = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module]
            # `from throttle.engine import keys` imports the module throttle.engine.keys
            targets += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in SOURCES:
                yield target, node.lineno, id(node) in nested


def owner(module: str, rules: dict[str, set[str]]) -> str:
    """The most specific package (or module) of the table that holds `module`. The bare `throttle`
    row is the package's `__init__` alone, so a new top-level module must get a row of its own."""
    best = ""
    for package in rules:
        inside = module == package or (package != "throttle" and module.startswith(package + "."))
        if inside and len(package) > len(best):
            best = package
    if not best:
        raise AssertionError(f"{module} belongs to no row of docs/architecture.md's layer table")
    return best


KNOWN = {name for name, _ in modules()}


def existing(target: str) -> str | None:
    """The module an import names (`throttle.engine.keys`), or None for a name inside one."""
    return target if target in KNOWN else None


def test_every_import_is_allowed_by_the_layer_table() -> None:
    rules = layer_table()
    assert {"throttle.engine", "throttle.hubspot", "throttle.history"} <= set(rules)
    wrong = []
    for module, path in modules():
        mine = owner(module, rules)
        for target, line, _ in imports_of(path):
            target_module = existing(target)
            if target_module is None:
                continue
            theirs = owner(target_module, rules)
            if theirs != mine and theirs not in rules[mine]:
                wrong.append(f"{path.relative_to(REPO)}:{line}: {mine} may not import {theirs}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle() -> None:
    graph: dict[str, set[str]] = {name: set() for name in KNOWN}
    for module, path in modules():
        for target, _, _lazy in imports_of(path):
            target_module = existing(target)
            if target_module is not None and target_module != module:
                graph[module].add(target_module)
    # A package's __init__ importing its own modules is how packages work, not a cycle.
    for module in graph:
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)


def test_imports_inside_functions_say_why() -> None:
    unexplained = []
    for _module, path in modules():
        lines = path.read_text().splitlines()
        for _target, line, nested in imports_of(path):
            here = lines[line - 1]
            above = lines[line - 2] if line > 1 else ""
            if nested and not (LAZY_REASON.search(here) or LAZY_REASON.search(above)):
                unexplained.append(f"{path.relative_to(REPO)}:{line}: {here.strip()}")
    assert not unexplained, "imports inside functions without `# lazy: why`:\n" + "\n".join(
        unexplained
    )


@pytest.mark.parametrize("package", ["throttle.webhook_service", "throttle.dispatcher"])
def test_the_table_forbids_what_it_should(package: str) -> None:
    """The rule itself: a deployable never imports another deployable."""
    rules = layer_table()
    others = {"throttle.webhook_service", "throttle.dispatcher", "throttle.operator"} - {package}
    assert not (rules[package] & others)
