"""The wheel, and so the image built from it, holds the runtime package and its data only: the
simulator, the demo, the fault suite and the local stack stay out of production."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_the_runtime_package_only(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "--wheel-dir", str(tmp_path), str(REPO)],
        check=True,
        cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("throttle-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {
        "throttle",
        wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info",
    }
    assert not [n for n in names if "simulator" in n or "throttle_dev" in n or "demo" in n]
    # The data the runtime loads by package: Lua scripts, migrations, the action definition.
    for needed in (
        "throttle/engine/lua/enqueue.lua",
        "throttle/history/migrations/0010_hubspot_portals_tokens.sql",
        "throttle/hubspot/action_definition.json",
        "throttle/py.typed",
    ):
        assert needed in names
    assert "throttle/cli/main.py" in names
