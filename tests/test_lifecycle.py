"""One validation for start-up, reload and `config check`; a reload that fails keeps the daemon
and its configuration running and says so (log, `rigpilot status`, MQTT `bridge/info`, metrics);
the watchdog follows a reloaded `tick_s`; `rigpilot status` tells a running daemon from a stopped,
killed or wedged one. The daemon runs as a real process (SIGHUP, SIGTERM, SIGKILL) or in-process
from a real config file, against the simulator, a real NOTIFY_SOCKET and a real broker."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from broker import Broker, free_port
from conftest import SimFleet
from helpers import KEYS, NotifySocket, log_events, start, wait_log, write_config
from mqtt_client import Collector, daemon_settings
from prometheus_client.parser import text_string_to_metric_families

from daemon.admin_cli import EXIT_NEVER_RAN, EXIT_STALE, EXIT_STOPPED, main_config, main_status
from daemon.config import load_settings
from daemon.lifecycle import is_running, process_start
from daemon.loop import TickReport
from daemon.mqtt.topics import Topics
from daemon.notify import Notifier
from daemon.store import DB_NAME, Store

FIXED_POWER = '[[market.power]]\ntype = "fixed"\nvalue_per_kwh = 0.05\n'
TOU = (
    '[[market.power]]\ntype = "tou"\ntz = "America/Chicago"\ndefault_per_kwh = 0.05\n'
    'windows = [{ days = "mon-fri", start = "14:00", end = "19:00", price_per_kwh = 0.12 }]\n'
)
# The three mistakes a time-of-use tariff's schema lets through: only building it finds them.
TOU_MISTAKES = [
    (
        TOU.replace("America/Chicago", "America/Chicgo"),
        "market.power[0] (tou): TOU schedule: unknown time zone 'America/Chicgo'",
    ),
    (
        TOU.replace('"mon-fri"', '"mon-fry"'),
        "market.power[0] (tou): windows[0]: TOU window mon-fry: unknown day 'mon-fry'",
    ),
    (
        TOU.replace('"19:00"', '"25:00"'),
        "market.power[0] (tou): windows[0]: TOU window (Mon,Tue,Wed,Thu,Fri 14:00-25:00): "
        "time '25:00' is not between 00:00 and 24:00",
    ),
]


def status_of(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main_status(["--config", str(config)])
    return code, capsys.readouterr().out


async def until_running(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    deadline = time.monotonic() + 10
    while True:
        code, out = status_of(config, capsys)
        if code == 0 and ": running" in out:
            return out
        assert time.monotonic() < deadline, out
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(("tou", "expect"), TOU_MISTAKES)
def test_config_check_builds_the_market_and_names_a_tou_mistake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tou: str, expect: str
) -> None:
    config = tmp_path / "r.toml"
    config.write_text(tou)
    assert main_config(["check", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"rigpilot config check: {expect}" in err
    config.write_text(TOU)
    assert main_config(["check", str(config)]) == 0  # the tariff without its mistake is fine


@pytest.mark.slow
async def test_a_reload_with_a_tou_mistake_keeps_the_daemon_and_its_configuration(
    sim: SimFleet, tmp_path: Path, notify: NotifySocket, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real daemon, SIGHUP after SIGHUP with each mistake: each is refused with the key
    named, the daemon keeps ticking on the configuration it had, `status` says the reload was
    rejected; a good reload then applies; SIGTERM stops it and `status` says stopped."""
    config = write_config(tmp_path / "rigpilot.toml", sim, keys=KEYS[:2])
    proc = start(config, {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
    try:
        await notify.wait("READY", 1, 90)
        await until_running(config, capsys)  # the first tick's status is stored just after
        for n, (tou, expect) in enumerate(TOU_MISTAKES, start=1):
            config.write_text(config.read_text().replace(FIXED_POWER, tou))
            mark = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            await notify.wait("STATUS", 1, 30, after=mark, containing="reload rejected")
            rejected = await wait_log(config, "config.reload_rejected", count=n)
            assert expect in rejected["error"]
            config.write_text(config.read_text().replace(tou, FIXED_POWER))
            ticks = len([e for e in log_events(config) if e.get("event") == "daemon.ready"])
            assert ticks == 1 and proc.poll() is None, "the daemon is still the first one"
            mark = time.monotonic()  # and it still ticks, on the power price it had
            await notify.wait("STATUS", 1, 30, after=mark, containing="rigs read")
            code, out = status_of(config, capsys)
            assert code == 0 and ": running" in out, out
            assert (
                "last reload" in out and "REJECTED" in out and expect in out.replace("\n    ", " ")
            )
            main_status(["--config", str(config), "--json"])
            doc = json.loads(capsys.readouterr().out)
            assert doc["power_price_usd_per_kwh"] == pytest.approx(0.05)
            assert doc["process"]["last_reload"]["ok"] is False
        # The tariff without its mistake: applied.
        config.write_text(config.read_text().replace(FIXED_POWER, TOU))
        mark = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        await notify.wait("STATUS", 1, 30, after=mark, containing="configuration reloaded")
        assert "market" in (await wait_log(config, "config.reloaded"))["changed"]
        code, out = status_of(config, capsys)
        assert code == 0 and "applied (market)" in out, out

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        code, out = status_of(config, capsys)
        assert code == EXIT_STOPPED and "a clean stop" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
async def test_status_reports_a_sigkilled_daemon_stopped_within_a_second(
    sim: SimFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "rigpilot.toml", sim, keys=KEYS[:2])
    assert status_of(config, capsys)[0] == EXIT_NEVER_RAN
    proc = start(config)
    try:
        await wait_log(config, "daemon.ready", timeout=90)
        assert f"pid {proc.pid} " in await until_running(config, capsys)
        proc.kill()  # SIGKILL: it writes nothing more; not reaped yet, it is a zombie
        killed = time.monotonic()
        while status_of(config, capsys)[0] != EXIT_STOPPED:
            assert time.monotonic() - killed < 1.0, "still reported running 1 s after SIGKILL"
            await asyncio.sleep(0.02)
        code, out = status_of(config, capsys)
        assert f"process {proc.pid} is gone" in out, out
    finally:
        proc.kill()
        proc.wait()
    code, out = status_of(config, capsys)  # reaped: the same
    assert code == EXIT_STOPPED and "is gone" in out


def test_a_process_is_told_apart_from_a_later_one_with_its_pid() -> None:
    me = os.getpid()
    mine = process_start(me)
    assert mine is not None
    assert is_running(me, mine)
    assert not is_running(me, mine + 1), "same PID, another start time: another process"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not is_running(child.pid, None)  # gone
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while is_running(zombie.pid, None) and time.monotonic() < deadline:
        time.sleep(0.01)  # exited but not reaped: a zombie is not running
    assert not is_running(zombie.pid, None)
    zombie.wait()


@pytest.mark.slow
async def test_status_running_stale_and_stopped_in_process(
    sim: SimFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.run import serve

    config = write_config(tmp_path / "r.toml", sim, keys=KEYS[:2])
    settings = load_settings(config)
    stop = asyncio.Event()
    seen: list[tuple[int, str]] = []

    def on_tick(report: TickReport) -> None:
        if len(seen) == 0:
            seen.append(status_of(config, capsys))
            db = Store(settings.state_dir / DB_NAME)  # started, then ticked, long ago
            process = db.get("process")
            assert process is not None
            db.put({"process": {**process, "started_at": process["started_at"] - 3600}})
            db.db.execute("UPDATE docs SET updated_at = updated_at - 3600 WHERE key='status'")
            db.close()
            seen.append(status_of(config, capsys))
            stop.set()

    assert await asyncio.wait_for(serve(settings, True, on_tick=on_tick, stop=stop), 60) == 0
    (code, out), (stale_code, stale_out) = seen
    assert code == 0 and "DRY-RUN" in out and "2/2 rigs read" in out, out
    assert stale_code == EXIT_STALE and "STALE" in stale_out, stale_out
    code, out = status_of(config, capsys)
    assert code == EXIT_STOPPED and "a clean stop" in out and "2/2 rigs read" in out, out
    assert "EXIT" not in out
    help_text = (
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "daemon.cli", "status", "--help"],
            capture_output=True,
            text=True,
            check=True,
        )
    ).stdout
    for line in ("0  running", "3  stopped", "4  stale", "5  never ran"):
        assert line in help_text


@pytest.mark.slow
async def test_the_watchdog_follows_a_reloaded_tick(
    sim: SimFleet, tmp_path: Path, notify: NotifySocket
) -> None:
    """tick_s 1 → 8 by reload (as 30 → 300 s, scaled down): the wedged deadline follows the
    new configuration, so the 8 s pause between ticks never silences the watchdog."""
    from daemon.run import serve

    config = write_config(tmp_path / "rigpilot.toml", sim, keys=KEYS[:2])
    first = config.read_text().replace(
        "confirm_deadline_s = 20",
        "confirm_deadline_s = 20\nobserve_timeout_s = 0.5\ncommand_timeout_s = 0.5\n"
        "wedged_after_s = 3",
    )
    config.write_text(first)
    settings = load_settings(config)
    notifier = Notifier({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})
    stop, reload = asyncio.Event(), asyncio.Event()
    reports: list[tuple[float, TickReport]] = []

    def on_tick(report: TickReport) -> None:
        reports.append((time.monotonic(), report))
        if len(reports) == 2:
            config.write_text(
                first.replace("tick_s = 1", "tick_s = 8").replace("wedged_after_s = 3", "")
            )
            reload.set()
        if len(reports) == 4:
            stop.set()

    task = serve(
        settings,
        True,
        on_tick=on_tick,
        stop=stop,
        config_path=config,
        reload=reload,
        notifier=notifier,
    )
    assert await asyncio.wait_for(task, 60) == 0
    assert reports[3][0] - reports[2][0] > 7.0, "the new tick applied"
    pings = sorted(at for at, _ in notify.fields("WATCHDOG") if at >= reports[2][0])
    gaps = [b - a for a, b in itertools.pairwise([reports[2][0], *pings, reports[3][0]])]
    assert max(gaps) < 1.0, f"the watchdog went silent for {max(gaps):.1f} s after the reload"


@pytest.mark.slow
async def test_a_rejected_reload_is_published_and_exported(
    broker: Broker, sim: SimFleet, tmp_path: Path
) -> None:
    """MQTT's retained bridge/info carries last_reload; the metrics say 0, then 1 again."""
    from daemon.run import serve

    port = free_port()
    metrics = f'[metrics]\nenabled = true\naddress = "127.0.0.1"\nport = {port}\n'
    settings = daemon_settings(
        tmp_path, broker, "reload", {sim.address("s19jpro"): ""}, extra=metrics
    )
    config = tmp_path / "rigpilot.toml"
    good = config.read_text()
    topics = Topics(settings.mqtt.base_topic, settings.site.name)
    stop, reload = asyncio.Event(), asyncio.Event()
    reports: list[TickReport] = []
    daemon = asyncio.create_task(
        serve(settings, True, on_tick=reports.append, stop=stop, config_path=config, reload=reload)
    )

    async def scrape() -> dict[str, float]:
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        return {
            s.name: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name.startswith("rigpilot_config_")
        }

    try:
        async with Collector(broker, "operator", [topics.info], "reload-watch") as col:
            info = await col.wait_for(lambda m: m.topic == topics.info, 30)
            assert info.json()["last_reload"] is None
            while not reports:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            before = await scrape()
            assert before["rigpilot_config_last_reload_successful"] == 1
            loaded_at = before["rigpilot_config_last_reload_success_timestamp_seconds"]
            assert abs(loaded_at - time.time()) < 60

            config.write_text(good.replace(FIXED_POWER, TOU_MISTAKES[0][0]))
            reload.set()
            bad = await col.wait_for(
                lambda m: m.topic == topics.info and m.json()["last_reload"] is not None, 30
            )
            last = bad.json()["last_reload"]
            assert last["ok"] is False and TOU_MISTAKES[0][1] in last["error"]
            after = await scrape()
            assert after["rigpilot_config_last_reload_successful"] == 0
            assert after["rigpilot_config_last_reload_success_timestamp_seconds"] == loaded_at

            config.write_text(good.replace(FIXED_POWER, TOU))
            reload.set()
            ok = await col.wait_for(
                lambda m: (
                    m.topic == topics.info and (m.json()["last_reload"] or {}).get("ok") is True
                ),
                30,
            )
            assert ok.json()["last_reload"]["changed"] == ["market"]
            again = await scrape()
            assert again["rigpilot_config_last_reload_successful"] == 1
            assert again["rigpilot_config_last_reload_success_timestamp_seconds"] > loaded_at
    finally:
        stop.set()
        assert await asyncio.wait_for(daemon, 30) == 0
