"""Fail when a block of six or more lines stands twice inside `throttle/`, the same lines or the
same shape with other names: pylint's `duplicate-code` finds copies across files that kept their
names, not a block copied within a file or copied and renamed.

Each line is reduced to its shape: identifiers become `_`, keywords, operators and literals stay
(two blocks that differ only in a message or a number are not the same block). Lines that hold
no logic are left out, as pylint leaves them out: imports, function signatures, docstrings,
comments, declarations (class-level fields, a constructor copying its arguments onto `self`)
and the lines of a long list or call that each name one item (`r.callback_id,`): their
repetition is the shape of a declaration or a listing, not a copied piece of logic.

Usage: python scripts/duplicate_shapes.py [--lines N] PATH...
"""

from __future__ import annotations

import argparse
import ast
import io
import keyword
import re
import sys
import tokenize
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

SKIPPED_TOKENS = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENDMARKER,
}

LISTED_ITEM = re.compile(r"(_ = )?(_ \. )*_( \( (_ \. )*_ \))? ,?")
"""The shape of a line that names one item of a list, a tuple or a call's arguments: a name, an
attribute or a call of one (`r.callback_id,`, `keys.due(shard),`), as a keyword argument too
(`prefix=keys.shard_prefix(shard),`)."""


def _span(node: ast.AST) -> range:
    end = getattr(node, "end_lineno", None) or node.lineno  # type: ignore[attr-defined]
    return range(node.lineno, end + 1)  # type: ignore[attr-defined]


def _is_copy(node: ast.AST) -> bool:
    """`self._x = x` and `x = y`: a binding of a name or a constant, no logic."""
    if not isinstance(node, ast.Assign | ast.AnnAssign):
        return False
    value = node.value
    return value is None or isinstance(value, ast.Name | ast.Constant | ast.Attribute)


def ignored_lines(tree: ast.Module) -> set[int]:
    """The lines that hold no logic: imports, signatures, docstrings, declarations."""
    ignored: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            ignored.update(_span(node))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            first_body_line = node.body[0].lineno
            ignored.update(range(node.lineno, first_body_line))
            for decorator in node.decorator_list:
                ignored.update(_span(decorator))
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ignored.update(_span(body[0]))
        if isinstance(node, ast.ClassDef):
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign | ast.Assign):
                    ignored.update(_span(statement))
                elif isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                    ignored.update(_span(statement))  # an attribute's docstring
        if _is_copy(node):
            ignored.update(_span(node))
    return ignored


def shaped_lines(source: str) -> list[tuple[int, str]]:
    """(line number, shape) of every line that holds logic."""
    ignored = ignored_lines(ast.parse(source))
    shapes: dict[int, list[str]] = defaultdict(list)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in SKIPPED_TOKENS or token.start[0] in ignored:
            continue
        is_identifier = token.type == tokenize.NAME and not keyword.iskeyword(token.string)
        shapes[token.start[0]].append("_" if is_identifier else token.string)
    shaped = ((line, " ".join(parts)) for line, parts in sorted(shapes.items()))
    return [(line, shape) for line, shape in shaped if not LISTED_ITEM.fullmatch(shape)]


def duplicates(paths: Iterable[Path], lines: int) -> Iterator[list[tuple[Path, int]]]:
    """Each block of `lines` lines that stands more than once, with the line it starts on."""
    seen: dict[tuple[str, ...], list[tuple[Path, int, int]]] = defaultdict(list)
    for path in paths:
        shaped = shaped_lines(path.read_text())
        for start in range(len(shaped) - lines + 1):
            window = shaped[start : start + lines]
            seen[tuple(shape for _, shape in window)].append((path, start, window[0][0]))
    covered: set[tuple[Path, int]] = set()
    for places in seen.values():
        starts = {(path, start) for path, start, _ in places}
        if len(places) > 1 and not covered.issuperset(starts):
            # a longer copy shows as overlapping windows: report the first window of each run
            covered.update((path, start + k) for path, start in starts for k in range(lines))
            yield [(path, line) for path, _, line in places]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=6, help="smallest block reported")
    parser.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    files = sorted(f for p in args.paths for f in ([p] if p.is_file() else p.rglob("*.py")))
    found = list(duplicates(files, args.lines))
    for places in found:
        where = ", ".join(f"{path}:{line}" for path, line in places)
        print(f"{args.lines}+ lines of the same shape stand {len(places)} times: {where}")
    if found:
        print(f"{len(found)} duplicated blocks: fold each into one function (see STYLE)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
