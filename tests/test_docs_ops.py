"""What the operator docs say about the watchdog, the platforms and `make setup` is what the
unit, the code and the Makefile do."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

from conftest import REPO
from test_systemd_unit import DROPIN, UNIT, parse_unit, seconds

from daemon.control_config import ControlSettings

SERVICE_MD = REPO / "docs" / "service.md"
SYSTEMD_README = REPO / "systemd" / "README.md"
# The python3 of each distribution release (the one `python3 -m venv` uses).
DISTRIBUTION_PYTHON = {
    "Debian 11": (3, 9),
    "Debian 12": (3, 11),
    "Debian 13": (3, 13),
    "Ubuntu 20.04": (3, 8),
    "Ubuntu 22.04": (3, 10),
    "Ubuntu 24.04": (3, 12),
}


def test_the_watchdog_advice_agrees_with_the_unit_and_the_code() -> None:
    watchdog_s = seconds(parse_unit(UNIT.read_text())["Service"]["WatchdogSec"][-1])
    wedged_s = ControlSettings().wedged_after()
    service, readme = SERVICE_MD.read_text(), SYSTEMD_README.read_text()
    assert f"`WatchdogSec` ({watchdog_s:g} s in the unit)" in service
    assert f"`WatchdogSec={watchdog_s:g}s`" in readme
    for text in (service, readme):
        assert f"{wedged_s:g} s at" in text  # the default wedged_after_s, as computed
    # Pings come from a timer while ticks complete (tests/test_service.py keeps pinging through
    # ticks longer than WatchdogSec), so no doc may tie WatchdogSec to tick_s or wedged_after_s.
    for path in (SERVICE_MD, SYSTEMD_README, UNIT, DROPIN):
        flat = " ".join(path.read_text().split())
        for wrong in ("above `wedged_after_s`", "3 to 4 ticks", "if tick_s is raised"):
            assert wrong not in flat, f"{path.name}: {wrong!r}"


def test_every_platform_named_has_a_new_enough_python() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = tuple(int(p) for p in pyproject["project"]["requires-python"][2:].split("."))
    for path in (SYSTEMD_README, REPO / "README.md"):
        for sentence in re.split(r"(?<=[.:;])\s", " ".join(path.read_text().split())):
            for name, python in DISTRIBUTION_PYTHON.items():
                if name in sentence and python < needed:
                    assert "too old" in sentence, f"{path.name} offers {name}: {sentence!r}"


def test_make_setup_says_what_it_is_doing(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    dry = subprocess.run(
        ["make", "-n", "setup", f"VENV={venv}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()

    def first(pattern: str) -> int:
        return next(i for i, line in enumerate(dry) if re.search(pattern, line))

    assert first(r"^echo .*creating the virtual environment") < first(r" -m venv ")
    assert first(r"^echo .*installing rigpilot") < first(r"/pip install")
    assert first(r"^echo .*a minute or two") < first(r"/pip install")
