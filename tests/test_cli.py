"""The ``rigpilot`` command line as a user meets it: global options anywhere, a quiet end when
stdout's reader goes away (``| head``), exit statuses that say whether anything answered, and
one line for a metrics port that is taken. Real processes, real pipes, real sockets."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from broker import free_port
from conftest import REPO, SimFleet

from daemon.cli import EXIT_BROKEN_PIPE, build_parser, main, split_global_options
from daemon.fleet_cli import main_observe, main_scan
from daemon.market_cli import main as main_market

FIXED_MARKET = """
[[market.hashprice]]
type = "fixed"
value = 40.0
[[market.power]]
type = "fixed"
value_per_kwh = 0.05
"""


def rigpilot(*args: str, stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        check=False,
        cwd=REPO,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )


def config(tmp_path: Path, body: str = FIXED_MARKET, rigs: list[str] | None = None) -> Path:
    path = tmp_path / "rigpilot.toml"
    rig_lines = "".join(f'[[rigs]]\naddress = "{a}"\n' for a in rigs or [])
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n{body}\n{rig_lines}')
    return path


# --- global options after the subcommand ------------------------------------------------------


@pytest.mark.slow
def test_global_options_are_accepted_after_the_subcommand(tmp_path: Path) -> None:
    """`rigpilot run ... --log-level warning` runs (it was refused: unrecognized arguments),
    and the level is applied: the info lines are gone."""
    path = config(tmp_path)
    done = rigpilot("run", "--config", str(path), "--ticks", "1", "--log-level", "warning")
    assert done.returncode == 0, done.stderr
    assert "daemon.started" not in done.stderr and "daemon.ready" not in done.stderr
    loud = rigpilot("run", "--config", str(path), "--ticks", "1", "--log-json")
    assert loud.returncode == 0 and '"event": "daemon.ready"' in loud.stderr


def test_the_config_files_log_section_applies_and_the_command_line_wins(tmp_path: Path) -> None:
    """`[log]` in the config file sets `rigpilot run`'s level and format (it was read, checked
    and then ignored); a global option given on the command line wins over it."""
    (tmp_path / "quiet").mkdir()
    (tmp_path / "text").mkdir()
    quiet = config(tmp_path / "quiet", FIXED_MARKET + '\n[log]\nlevel = "warning"\njson = true\n')
    done = rigpilot("run", "--config", str(quiet), "--ticks", "1")
    assert done.returncode == 0, done.stderr
    assert "daemon.started" not in done.stderr and "daemon.ready" not in done.stderr
    text = config(tmp_path / "text", FIXED_MARKET + '\n[log]\nlevel = "info"\njson = false\n')
    shown = rigpilot("run", "--config", str(text), "--ticks", "1")
    assert shown.returncode == 0, shown.stderr
    assert "daemon.ready" in shown.stderr and '"event": "daemon.ready"' not in shown.stderr
    loud = rigpilot("run", "--config", str(quiet), "--ticks", "1", "--log-level", "info")
    assert loud.returncode == 0, loud.stderr
    assert '"event": "daemon.ready"' in loud.stderr  # level from the command line, JSON from [log]


@pytest.mark.parametrize("command", ["config", "status", "market", "observe", "scan"])
def test_every_subcommand_takes_the_global_options_after_it(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path)
    argv = {
        "config": ["config", "check", str(path)],
        "status": ["status", "--config", str(path)],
        "market": ["market", "--config", str(path)],
        "observe": ["observe", "10.0.0.300"],  # refused for the address, not the options
        "scan": ["scan", "10.0.0.300"],
    }[command]
    status: int | str | None
    try:
        status = main([*argv, "--log-level", "error", "--no-log-json"])
    except SystemExit as exc:  # argparse's way of refusing
        status = exc.code
    err = capsys.readouterr().err
    assert "unrecognized arguments" not in err
    assert status == {"config": 0, "status": 5, "market": 0, "observe": 2, "scan": 2}[command]


def test_split_global_options() -> None:
    args, rest = build_parser().parse_known_args(["--log-level", "debug", "observe", "a"])
    args, rest = split_global_options(args, [*rest, "--log-level", "error", "--no-log-json"])
    assert (args.log_level, args.log_json, rest) == ("error", False, ["a"])
    before = argparse.Namespace(command="observe", log_level="debug", log_json=None)
    kept, rest = split_global_options(before, ["--log", "x", "--", "--log-level", "error"])
    assert kept.log_level == "debug"  # no abbreviations, nothing after "--"
    assert rest == ["--log", "x", "--", "--log-level", "error"]


# --- SIGPIPE ------------------------------------------------------------------------------------


def into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run rigpilot with stdout a pipe whose reader is already gone (as `| head` after it
    exits): every write fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    try:
        return rigpilot(*args, stdout=write)
    finally:
        os.close(write)


@pytest.mark.slow
def test_a_closed_stdout_ends_quietly_with_141(tmp_path: Path, sim: SimFleet) -> None:
    path = config(tmp_path)
    for argv in (
        ["config", "check", str(path)],
        ["market", "--config", str(path), "--json"],
        ["observe", sim.address("s19jpro"), "--json", "--timeout", "5"],
    ):
        done = into_closed_pipe(*argv)
        assert done.returncode == EXIT_BROKEN_PIPE, (argv, done.stderr)
        assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, argv


# --- exit statuses when nothing answers --------------------------------------------------------


def test_observe_exit_status_says_how_many_rigs_answered(
    sim: SimFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rig, dead = sim.address("s19jpro"), "127.1.9.9"
    common = ["--timeout", "2", "--state-dir", str(tmp_path)]
    assert main_observe([dead, *common]) == 1
    assert main_observe([rig, dead, *common]) == 3
    assert main_observe([rig, *common]) == 0
    capsys.readouterr()


def test_observe_refuses_an_address_that_is_no_address(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main_observe(["10.0.0.300"])
    assert exit_.value.code == 2
    assert "'10.0.0.300' is not a valid IPv4 address: Octet 300 (> 255)" in capsys.readouterr().err


def test_scan_exits_1_when_it_finds_no_rig(
    sim: SimFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main_scan(["127.1.9.9", "--timeout", "2"]) == 1
    assert main_scan([sim.address("m50s"), "--timeout", "5"]) == 0
    capsys.readouterr()


def test_market_exits_1_when_a_configured_price_cannot_be_had(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main_market(["--config", str(config(tmp_path))]) == 0
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    no_hashprice = config(
        tmp_path,
        f'[[market.hashprice]]\ntype = "mempool"\nbase_url = "{dead}"\n'
        '[[market.power]]\ntype = "fixed"\nvalue_per_kwh = 0.05\n',
    )
    assert main_market(["--config", str(no_hashprice)]) == 1
    out = capsys.readouterr().out
    assert "hashprice    unavailable" in out
    only_hashprice = config(tmp_path, '[[market.hashprice]]\ntype = "fixed"\nvalue = 40.0\n')
    assert main_market(["--config", str(only_hashprice)]) == 0  # no power source: not asked for


# --- metrics port -------------------------------------------------------------------------------


@pytest.mark.slow
def test_metrics_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    body = f'{FIXED_MARKET}\n[metrics]\nenabled = true\naddress = "127.0.0.1"\nport = {port}\n'
    try:
        done = rigpilot("run", "--config", str(config(tmp_path, body)), "--ticks", "1")
    finally:
        holder.close()
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"rigpilot run: [metrics] port {port} on address 127.0.0.1: already in")
    assert "RIGPILOT_METRICS__PORT" in last
