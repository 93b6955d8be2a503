#!/usr/bin/env python3
"""Generate the chart's values.schema.json and the values table of its README from values.yaml.

values.yaml is the one place a value is described: each documented key has a comment block

    # -- What the value does (one or more lines).
    # @example key: an example
    # @schema {"minimum": 1}          (optional JSON merged into the key's schema)
    key: default

A key without a `# --` block must be a mapping of documented keys (a group, like `webhook:`);
groups become objects with `additionalProperties: false`, so a misspelt value fails the install.

    scripts/chart_docs.py           rewrite values.schema.json and README.md's table
    scripts/chart_docs.py --check   exit 1 if either is stale (the chart tests run this check)
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "throttle"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<rest>.*)$")
TABLE_START, TABLE_END = "<!-- values-table -->", "<!-- /values-table -->"


class ValuesDocError(ValueError):
    """values.yaml breaks the documentation convention; the message names the key."""


@dataclass
class Value:
    """One documented value."""

    path: tuple[str, ...]
    description: str
    example: str
    schema: dict[str, Any] = field(default_factory=dict)
    default: Any = None

    @property
    def name(self) -> str:
        return ".".join(self.path)


def parse(text: str) -> list[Value]:
    """Documented values in file order, with their defaults."""
    values: list[Value] = []
    stack: list[tuple[int, str]] = []
    comments: list[str] = []
    skip_deeper_than: int | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if skip_deeper_than is not None:
            if not stripped or indent > skip_deeper_than or stripped.startswith("- "):
                continue
            skip_deeper_than = None
        if not stripped:
            comments = []
            continue
        if stripped.startswith("#"):
            comments.append(stripped.lstrip("#").strip() if stripped != "#" else "")
            continue
        match = KEY_LINE.match(line)
        if not match:
            raise ValuesDocError(f"values.yaml line {number}: cannot read {line!r}")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        path = tuple(key for _, key in stack)
        block = _doc_block(comments)
        comments = []
        if block is None:
            if match["rest"].strip():
                raise ValuesDocError(f"{'.'.join(path)} has no `# --` description")
            continue
        description, example, schema = block
        if not example:
            raise ValuesDocError(f"{'.'.join(path)} has no `@example`")
        values.append(Value(path, description, example, schema))
        if not match["rest"].strip():
            skip_deeper_than = indent
    defaults = yaml.safe_load(text)
    for value in values:
        node = defaults
        for key in value.path:
            node = node[key]
        value.default = node
    _check_groups(defaults, values)
    return values


def _doc_block(comments: list[str]) -> tuple[str, str, dict[str, Any]] | None:
    start = next((i for i, c in enumerate(comments) if c.startswith("-- ")), None)
    if start is None:
        return None
    prose: list[str] = []
    example = ""
    schema: dict[str, Any] = {}
    for comment in comments[start:]:
        if comment.startswith("@example "):
            example = comment.removeprefix("@example ").strip()
        elif comment.startswith("@schema "):
            schema.update(json.loads(comment.removeprefix("@schema ")))
        elif not example and not schema:
            prose.append(comment.removeprefix("-- "))
    return " ".join(p for p in prose if p), example, schema


def _check_groups(defaults: Any, values: list[Value]) -> None:
    documented = {v.path for v in values}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        for key, child in node.items():
            here = (*path, key)
            if here in documented:
                continue
            if not isinstance(child, dict) or not child:
                raise ValuesDocError(f"{'.'.join(here)} has no `# --` description")
            walk(child, here)

    walk(defaults, ())


def _inferred(default: Any) -> dict[str, Any]:
    if isinstance(default, bool):
        return {"type": "boolean"}
    if isinstance(default, int):
        return {"type": "integer"}
    if isinstance(default, float):
        return {"type": "number"}
    if isinstance(default, str):
        return {"type": "string"}
    if isinstance(default, list):
        return {"type": "array"}
    if isinstance(default, dict):
        return {"type": "object"}
    raise ValuesDocError(f"cannot infer a type from {default!r}")


def schema(values: list[Value]) -> dict[str, Any]:
    """JSON schema of values.yaml: groups closed (additionalProperties false), leaves typed."""
    root: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft-07/schema#",
        "title": "Values of the throttle chart",
        "type": "object",
        "additionalProperties": False,
        "properties": {},
    }
    for value in values:
        node = root
        for key in value.path[:-1]:
            node = node["properties"].setdefault(
                key, {"type": "object", "additionalProperties": False, "properties": {}}
            )
        leaf = _inferred(value.default)
        if "enum" in value.schema:
            leaf.pop("type")
        leaf.update(value.schema)
        leaf["description"] = value.description
        node["properties"][value.path[-1]] = leaf
    return root


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(values: list[Value]) -> str:
    """The README's values table (markdown)."""
    rows = ["| value | default | description | example |", "| --- | --- | --- | --- |"]
    for value in values:
        default = json.dumps(value.default, separators=(",", ":"))
        rows.append(
            f"| `{value.name}` | `{_cell(default)}` | {_cell(value.description)} "
            f"| `{_cell(value.example)}` |"
        )
    return "\n".join(rows)


def render(chart: Path = CHART) -> dict[Path, str]:
    """The generated files' expected contents."""
    values = parse((chart / "values.yaml").read_text())
    readme = (chart / "README.md").read_text()
    if TABLE_START not in readme or TABLE_END not in readme:
        raise ValuesDocError(f"README.md lacks the {TABLE_START} / {TABLE_END} markers")
    head, rest = readme.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    return {
        chart / "values.schema.json": json.dumps(schema(values), indent=2) + "\n",
        chart / "README.md": f"{head}{TABLE_START}\n{table(values)}\n{TABLE_END}{tail}",
    }


def main(argv: list[str]) -> int:
    rendered = render()
    stale = [p for p, text in rendered.items() if not p.exists() or p.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"stale: {path} (run scripts/chart_docs.py)", file=sys.stderr)
        return 1 if stale else 0
    for path, text in rendered.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
