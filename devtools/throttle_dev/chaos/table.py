"""The fault table: printed by `make chaos` and kept between markers in docs/reliability.md."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from throttle_dev.chaos.harness import FaultRow

START = "<!-- chaos-table:start -->"
END = "<!-- chaos-table:end -->"
HEADER = (
    "fault",
    "sent",
    "blocked",
    "completed",
    "failed (reason)",
    "lost",
    "duplicates",
    "max releases/window vs limit+burst",
    "verdict",
)


def _failed(row: FaultRow) -> str:
    if not row.failed:
        return "0"
    reasons = "; ".join(f"{n} x {reason}" for reason, n in sorted(row.failure_reasons.items()))
    return f"{row.failed} ({reasons})"


def cells(row: FaultRow) -> list[str]:
    return [
        row.fault,
        str(row.sent),
        str(row.blocked),
        str(row.completed),
        _failed(row),
        str(row.lost),
        str(row.duplicates),
        f"{row.max_window} / {row.allowed}",
        "ok" if row.ok else "FAIL: " + "; ".join(row.problems),
    ]


def markdown(rows: list[FaultRow]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in cells(r)) + " |" for r in rows]
    notes = [f"- {r.fault}: {'; '.join(r.notes)} ({r.elapsed_s:.0f} s)" for r in rows if r.notes]
    return "\n".join([*lines, *(["", *notes] if notes else [])]) + "\n"


def plain(rows: list[FaultRow]) -> str:
    table = [list(HEADER), *[cells(r) for r in rows]]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in table]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out) + "\n"


def stamp(command: str) -> str:
    return (
        f"`{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}.\n"
    )


def write_section(path: Path, rows: list[FaultRow], command: str, load: str | None = None) -> None:
    """Replace the text between the markers (or append the section) with the new tables."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Reliability\n"
    extra = f"\nOverload (the webhook at twice its sustainable rate):\n\n{load}" if load else ""
    section = f"{START}\n{stamp(command)}\n{markdown(rows)}{extra}{END}"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        _, after = rest.split(END, 1)
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")
