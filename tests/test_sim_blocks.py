"""Several simulator processes, one per address block, sharing the rig ports (``--block``,
``simulator.launch.start_blocks``): each connection reaches the process of its address's
block, and the control API of all of them acts as one (``FleetControl``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.launch import split_groups

REPO = Path(__file__).resolve().parents[1]


def test_two_simulator_processes_serve_their_own_address_blocks() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "tests" / "sim_blocks_probe.py")],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    # 3 + 3 rigs split 2 + 2 per process; block 0 from 127.1.0.1, block 1 from 127.2.0.1
    assert facts["addresses"] == [
        "127.1.0.1",
        "127.1.0.2",
        "127.1.0.3",
        "127.1.0.4",
        "127.2.0.1",
        "127.2.0.2",
    ]
    assert facts["block_rigs"] == [4, 2] and facts["rigs"] == 6
    assert len(set(facts["pids"])) == 2
    assert facts["identify_failures"] == 0
    assert facts["models"] == {
        "127.1.0.1": "S19j Pro",
        "127.1.0.2": "S19j Pro",
        "127.1.0.3": "M30S+ V40",
        "127.1.0.4": "M30S+ V40",
        "127.2.0.1": "S19j Pro",
        "127.2.0.2": "M30S+ V40",
    }
    assert facts["first_ok"] == facts["addresses"]
    victim = facts["victim"]
    assert victim == "127.2.0.1"
    assert facts["faulted"][victim] == "unreachable"  # the fault set through FleetControl
    assert all(kind == "ok" for a, kind in facts["faulted"].items() if a != victim)
    assert facts["sent"] is True
    assert facts["writes"][1] == facts["writes"][0] + 1  # the write reached block 1's process
    assert facts["stray"] == "unreachable"  # no block serves 127.3.x.y


def test_groups_are_split_among_the_processes() -> None:
    args = [
        "--antminer",
        "s19jpro:5",
        "--whatsminer",
        "m60s@20251209.16.Rel2:2",
        "--time-scale",
        "30",
    ]
    assert split_groups(args, 2) == [
        [
            "--antminer",
            "s19jpro:3",
            "--whatsminer",
            "m60s@20251209.16.Rel2:1",
            "--time-scale",
            "30",
        ],
        [
            "--antminer",
            "s19jpro:2",
            "--whatsminer",
            "m60s@20251209.16.Rel2:1",
            "--time-scale",
            "30",
        ],
    ]
    assert split_groups(["--luxos", "s19jpro:1"], 3) == [["--luxos", "s19jpro:1"], [], []]


@pytest.mark.parametrize(
    "flag", ["--antminer", "--whatsminer", "--luxos", "--braiins", "--epic", "--vnish"]
)
def test_every_makes_groups_are_split_not_repeated(flag: str) -> None:
    """A group of any make is split (each block once serving a group of every make given on
    the command line would multiply the fleet by the number of processes)."""
    model = "m30s+" if flag == "--whatsminer" else "s19jpro"
    assert split_groups([flag, f"{model}:5", "--time-scale", "1"], 2) == [
        [flag, f"{model}:3", "--time-scale", "1"],
        [flag, f"{model}:2", "--time-scale", "1"],
    ]


@pytest.mark.parametrize("flag", ["--fleet", "--base-address", "--fault", "--block"])
def test_options_that_name_addresses_are_refused_for_blocks(flag: str) -> None:
    with pytest.raises(ValueError, match=f"{flag} cannot be given"):
        split_groups(["--antminer", "s19jpro:2", flag, "x"], 2)


def test_a_block_too_large_is_refused(tmp_path: Path) -> None:
    from simulator.cli import main

    assert main(["--antminer", "s19jpro:65025", "--block", "0", "--netns", "current"]) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--block", "0", "--base-address", "127.5.0.1"], "--block sets the base address"),
        (["--block", "254"], "block must be 0..253, got 254"),
        (
            ["--block", "0", "--pdu", "apc:8", "--switch-base", "127.2.0.1"],
            "--switch-base 127.2.0.1 is outside block 0 (127.1.0.0/16)",
        ),
    ],
)
def test_block_options_that_cannot_work_are_named(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulator.cli import main

    assert main(["--antminer", "s19jpro:1", *extra, "--netns", "current"]) == 2
    assert message in capsys.readouterr().err


def test_switches_default_into_their_own_block() -> None:
    from simulator.cli import default_switch_base

    assert default_switch_base(None) == "127.2.0.1"
    assert default_switch_base(0) == "127.1.254.1"  # not 127.2.0.1: block 1's process
    assert default_switch_base(3) == "127.4.254.1"


def test_fleet_control_names_an_address_in_no_block() -> None:
    from simulator.client import ControlError, FleetControl, SimControl

    control = FleetControl([SimControl("/nonexistent-0"), SimControl("/nonexistent-1")])
    assert control.block_of("127.2.0.9") is control.controls[1]
    with pytest.raises(ControlError, match=r"127\.3\.0\.1 \(no such address block\)"):
        control.block_of("127.3.0.1")
    with pytest.raises(ControlError, match="no simulated rig at rig-7"):
        control.block_of("rig-7")
