"""README.md promises what the code does: its settings table is the code's, its links resolve."""

from __future__ import annotations

import re
from pathlib import Path

from throttle.cli.main import settings_markdown

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line]
    assert commands == ["make demo", "make test"]


def test_settings_table_matches_the_code() -> None:
    block = README.split("<!-- settings-table -->")[1].split("<!-- /settings-table -->")[0]
    assert block.strip() == settings_markdown().strip(), (
        "README's settings table is stale: paste `throttle settings --markdown` into it"
    )


def test_every_relative_link_exists() -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to missing {target}"
