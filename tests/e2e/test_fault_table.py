"""The fault table's verdicts and the Markdown section `make chaos` rewrites."""

from __future__ import annotations

from pathlib import Path

from throttle_dev.chaos.harness import FaultRow
from throttle_dev.chaos.table import END, START, markdown, write_section


def good(**overrides: object) -> FaultRow:
    row = FaultRow("restart Redis", sent=100, blocked=100, completed=100, max_window=20, allowed=25)
    for name, value in overrides.items():
        setattr(row, name, value)
    return row


def test_a_row_fails_on_loss_duplicates_rate_unexpected_failures_and_leaked_secrets() -> None:
    assert good().ok
    assert not good(lost=1).ok
    assert not good(duplicates=1).ok
    assert not good(max_window=26).ok
    assert not good(failed=3, failure_reasons={"x": 3}).ok
    assert good(failed=3, failure_reasons={"revoked": 3}, expect_failures=True).ok
    assert not good(gave_up=1).ok
    assert not good(secrets_in_logs=["THROTTLE_API_TOKEN"]).ok
    assert not good(blocked=0, completed=0).ok, "a scenario that blocked nothing proved nothing"


def test_the_section_between_the_markers_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    doc = tmp_path / "reliability.md"
    doc.write_text(f"# Reliability\n\nprose before\n\n{START}\nold table\n{END}\n\nprose after\n")
    write_section(doc, [good(), good(fault="revoked", lost=2)], "make chaos")
    text = doc.read_text()
    assert "old table" not in text
    assert text.startswith("# Reliability\n\nprose before")
    assert text.rstrip().endswith("prose after")
    assert text.count(START) == 1
    assert "| restart Redis | 100 | 100 | 100 | 0 | 0 | 0 | 20 / 25 | ok |" in text
    assert "FAIL: 2 blocked executions" in text
    assert "`make chaos` on" in text
    assert markdown([good()]) in text
