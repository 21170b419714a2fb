"""The package an operator installs: the wheel, installed without ``-e`` into a fresh venv.

An editable install reads the source tree, so it hides a subpackage or a data file left out of
the wheel; this test builds the wheel, installs it with the pinned dependencies into a new
virtual environment and, from a directory outside the checkout, imports every module, starts
every subcommand, runs one dry-run tick of ``rigpilot run`` against the simulator installed
with it, and a short ``rigpilot demo``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("backtest", "daemon", "drivers", "market", "policies", "simulator")
SUBCOMMANDS = ("sim", "scan", "observe", "market", "run", "demo", "status", "config", "backtest")

# One worker builds the wheel and its venv once (module fixtures) and runs every test of it.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel")]


def run(cmd: list[str], cwd: Path, timeout: float = 300, **kw: object) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, (
        f"{' '.join(cmd)} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy, so that setuptools' build/ and egg-info never land in the checkout.
    source = out / "source"
    skip = (".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache", "state", "out")
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*skip))
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(source), "-w", str(out)],
        cwd=out)  # fmt: skip
    (found,) = out.glob("rigpilot-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new venv with the wheel installed in it (not editable).

    The tests run in a private network namespace with no route to a package index, so the
    dependencies come from the test interpreter's own environment, added to the new venv as a
    plain path: its ``.pth`` files are not processed, so the source tree's editable hook is not
    loaded and every rigpilot module comes from the wheel. ``pip check`` then confirms that the
    wheel's declared dependencies are satisfied by the pinned versions.
    """
    root = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", "--without-pip", str(root)], cwd=root.parent)
    python = root / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               cwd=root.parent).strip()  # fmt: skip
    deps = sysconfig.get_paths()["purelib"]
    (Path(site) / "rigpilot-test-deps.pth").write_text(deps + "\n")
    run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        cwd=root.parent)  # fmt: skip
    run([str(python), "-m", "pip", "check"], cwd=root.parent)
    yield root


def source_modules() -> list[str]:
    """Every module of the source tree, as a dotted name."""
    names = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] != "__main__":  # runs the program: started below instead
                names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_the_wheel_holds_every_module_and_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [
        m for m in source_modules() if f"{m.replace('.', '/')}.py" not in names
        and f"{m.replace('.', '/')}/__init__.py" not in names
    ]  # fmt: skip
    assert missing == []
    for data in ("drivers/catalogue.toml", "daemon/rigpilot.example.toml", "daemon/py.typed"):
        assert data in names
    assert any(n.endswith("licenses/LICENSE") for n in names)


def test_every_module_imports_from_the_installed_package(venv: Path, tmp_path: Path) -> None:
    script = (
        "import importlib, json, sys\n"
        f"names = {source_modules()!r}\n"
        "bad = {}\n"
        "for n in names:\n"
        "    try:\n"
        "        m = importlib.import_module(n)\n"
        f"        assert not (m.__file__ or '').startswith({str(REPO)!r}), m.__file__\n"
        "    except BaseException as exc:\n"
        "        bad[n] = repr(exc)\n"
        "print(json.dumps(bad))\n"
    )
    out = run([str(venv / "bin" / "python"), "-c", script], cwd=tmp_path)
    assert json.loads(out) == {}


def test_every_subcommand_starts(venv: Path, tmp_path: Path) -> None:
    rigpilot = str(venv / "bin" / "rigpilot")
    assert "usage: rigpilot" in run([rigpilot, "--help"], cwd=tmp_path)
    for name in SUBCOMMANDS:
        assert "usage:" in run([rigpilot, name, "--help"], cwd=tmp_path), name


def test_the_shipped_example_configuration_is_valid(venv: Path, tmp_path: Path) -> None:
    rigpilot = str(venv / "bin" / "rigpilot")
    example = run([rigpilot, "config", "example"], cwd=tmp_path)
    tomllib.loads(example)
    path = tmp_path / "rigpilot.toml"
    path.write_text(example.replace('"/var/lib/rigpilot"', f'"{tmp_path / "state"}"'))
    run([rigpilot, "config", "check", str(path)], cwd=tmp_path)


# Run by the installed interpreter in a network namespace of its own: the test session's
# namespace already has the session's simulator on ports 4028, 80 and 4433.
IN_OWN_NETNS = (
    "import os, sys\n"
    "from simulator.netns import enter_private_netns\n"
    "enter_private_netns()\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)

ONE_TICK = """
import json, subprocess, sys
from pathlib import Path

rigpilot = str(Path(sys.executable).parent / "rigpilot")
tmp = Path(sys.argv[1])
sim = subprocess.Popen(
    [rigpilot, "sim", "--antminer", "s19jpro:1", "--whatsminer", "m30s+:1",
     "--json", "--netns", "current", "--control", str(tmp / "sim.sock")],
    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
)
try:
    rigs = json.loads(sim.stdout.readline())
    config = tmp / "rigpilot.toml"
    config.write_text(
        f'state_dir = "{tmp / "state"}"\\n[metrics]\\nenabled = true\\n'
        '[[market.hashprice]]\\ntype = "fixed"\\nvalue = 60.0\\n'
        '[[market.power]]\\ntype = "fixed"\\nvalue_per_kwh = 0.05\\n'
        + "".join(f'[[rigs]]\\naddress = "{r["address"]}"\\n' for r in rigs)
    )
    done = subprocess.run(
        [rigpilot, "run", "--config", str(config), "--dry-run", "--ticks", "1"],
        capture_output=True, text=True, timeout=120,
    )
    print(json.dumps({"rigs": rigs, "exit": done.returncode, "stderr": done.stderr[-3000:]}))
finally:
    sim.terminate()
    sim.wait(timeout=10)
"""


def in_own_netns(venv: Path, *argv: str) -> list[str]:
    python = str(venv / "bin" / "python")
    return [python, "-c", IN_OWN_NETNS, *argv]


def test_one_dry_run_tick_against_the_installed_simulator(venv: Path, tmp_path: Path) -> None:
    python = str(venv / "bin" / "python")
    out = run(in_own_netns(venv, python, "-c", ONE_TICK, str(tmp_path)), cwd=tmp_path, timeout=180)
    result = json.loads(out.splitlines()[-1])
    assert len(result["rigs"]) == 2
    assert result["exit"] == 0, result["stderr"]
    audit = (tmp_path / "state" / "audit.jsonl").read_text().splitlines()
    decided = {json.loads(line).get("rig") for line in audit}
    assert {r["address"] for r in result["rigs"]} <= decided


def test_the_demo_runs_without_a_source_checkout(venv: Path, tmp_path: Path) -> None:
    rigpilot = str(venv / "bin" / "rigpilot")
    out = run(in_own_netns(venv, rigpilot, "demo", "--ticks", "2", "--speed", "4"),
              cwd=tmp_path, timeout=180)  # fmt: skip
    assert "tick   1" in out
    assert "Simulator served" in out
