"""The metrics reference lists exactly the metrics the code exports, with their types."""

from __future__ import annotations

import re
from pathlib import Path

from throttle.metrics import Metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def test_metrics_reference_matches_the_code() -> None:
    rows = dict(re.findall(r"^\| `(throttle_[a-z_]+)` \| (\w+) \|", DOC.read_text(), re.M))
    exported = {
        metric.name + ("_total" if metric.type == "counter" else ""): metric.type
        for metric in Metrics().registry.collect()
    }
    assert rows == exported
