"""The metrics reference lists exactly the metrics the code exports, with types and labels.

`python tests/docs/test_metrics_reference.py` rewrites the table in docs/metrics.md from the code.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from throttle.metrics import Metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
BEGIN, END = "<!-- metrics-table -->", "<!-- /metrics-table -->"


def table_rows() -> list[str]:
    metrics = Metrics()
    labels: dict[str, tuple[str, ...]] = {}
    for obj in vars(metrics).values():
        name = getattr(obj, "_name", None)
        if name:
            labels[name] = tuple(getattr(obj, "_labelnames", ()))
    rows = []
    for metric in metrics.registry.collect():
        name = metric.name + ("_total" if metric.type == "counter" else "")
        names = labels.get(metric.name)
        if names is None:  # a collector read at scrape time: labels as its families declare
            names = tuple(getattr(metric, "_labelnames", ()))
        shown = ", ".join(f"`{n}`" for n in names) or "-"
        rows.append(f"| `{name}` | {metric.type} | {shown} | {metric.documentation} |")
    return rows


def test_metrics_reference_matches_the_code() -> None:
    documented = dict(re.findall(r"^\| `(throttle_[a-z_]+)` \| (\w+) \|", DOC.read_text(), re.M))
    exported = dict(
        re.findall(r"^\| `(throttle_[a-z_]+)` \| (\w+) \|", "\n".join(table_rows()), re.M)
    )
    assert documented == exported, (
        "run `python tests/docs/test_metrics_reference.py` to update docs/metrics.md"
    )


if __name__ == "__main__":
    text = DOC.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    header = "| metric | type | labels | meaning |\n| --- | --- | --- | --- |\n"
    DOC.write_text(f"{head}{BEGIN}\n{header}" + "\n".join(table_rows()) + f"\n{END}{tail}")
    sys.exit(0)
