"""The production service: sd_notify on a real NOTIFY_SOCKET, SIGHUP/SIGTERM/SIGKILL against the
real daemon process, durable state in SQLite, `rigpilot status` and `rigpilot config check`."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from conftest import SimFleet
from helpers import KEYS, NotifySocket, log_events, start, wait_log, write_config
from prometheus_client.parser import text_string_to_metric_families
from test_control_loop import harness

from daemon.admin_cli import main_config, main_status
from daemon.config import ConfigError, load_settings
from daemon.loop import TickReport
from daemon.mqtt.desk import CommandDesk
from daemon.notify import Notifier
from daemon.operator_state import Envelope
from daemon.persist import Persistence
from daemon.store import DB_NAME, Store


@pytest.mark.slow
async def test_notify_ready_watchdog_status_reload_and_stop(
    sim: SimFleet, tmp_path: Path, notify: NotifySocket
) -> None:
    config = write_config(tmp_path / "rigpilot.toml", sim)
    proc = start(config, {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
    try:
        ready_status = await notify.wait("READY", 1, 90)
        assert ready_status == "1"
        status = await notify.wait("STATUS", 2)  # "identifying ...", then the fleet summary
        assert "rigs read" in status
        # WATCHDOG_USEC=1 s: the daemon pings every 0.5 s; three more pings come (their rate is
        # no test's business: a loaded machine may stretch it).
        first_watchdog = len(notify.fields("WATCHDOG"))
        await notify.wait("WATCHDOG", first_watchdog + 3, 30)

        # SIGHUP with a good configuration: RELOADING=1, then READY=1; the change applies.
        write_config(config, sim, top="dry_run = true")
        mark = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        await notify.wait("RELOADING", 1, 30, after=mark)
        await notify.wait("READY", 1, 30, after=mark)
        reloaded = await wait_log(config, "config.reloaded")
        assert "dry_run" in reloaded["changed"] and reloaded["dry_run"] is True

        # SIGHUP with a bad configuration: refused with the key named, the old one kept.
        config.write_text(config.read_text().replace("tick_s = 1", "tick_s = -4"))
        mark = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        await notify.wait("RELOADING", 1, 30, after=mark)
        # (a tick's own STATUS line may come first: the reload is handled between ticks)
        assert "rejected" in await notify.wait("STATUS", 1, 30, after=mark, containing="rejected")
        rejected = await wait_log(config, "config.reload_rejected")
        assert "control.tick_s" in rejected["error"]
        # still running after a bad reload: pings go on
        await notify.wait("WATCHDOG", 2, 30, after=time.monotonic())

        # SIGTERM: STOPPING=1, a clean exit, rigs left as they are.
        mark = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await notify.wait("STOPPING", 1, 10, after=mark)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        stopped = await wait_log(config, "daemon.stopped")
        assert stopped["note"] == "rigs left as they are"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
async def test_watchdog_goes_silent_while_the_loop_is_wedged(
    sim: SimFleet, tmp_path: Path, notify: NotifySocket
) -> None:
    from daemon.run import serve

    settings = load_settings(write_config(tmp_path / "rigpilot.toml", sim, keys=KEYS[:2]))
    notifier = Notifier({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "600000"})
    stop = asyncio.Event()
    wedged_at: list[float] = []

    def on_tick(report: TickReport) -> None:
        if len(wedged_at) == 0 and report.observed:
            wedged_at.append(time.monotonic())
            time.sleep(3.0)  # a plugin stuck in a loop: the event loop itself is blocked
        elif len(wedged_at) == 1:
            wedged_at.append(time.monotonic())
            stop.set()

    task = asyncio.create_task(serve(settings, True, on_tick=on_tick, stop=stop, notifier=notifier))
    assert await asyncio.wait_for(task, 60) == 0
    pings = [at for at, _ in notify.fields("WATCHDOG")]
    during = [at for at in pings if wedged_at[0] + 0.1 < at < wedged_at[0] + 2.9]
    assert during == [], "no WATCHDOG=1 while the loop is wedged"
    assert any(at < wedged_at[0] for at in pings), "pings before the wedge"


@pytest.mark.slow
async def test_hung_rigs_make_ticks_slow_but_never_silence_the_watchdog(
    sim: SimFleet, tmp_path: Path, notify: NotifySocket
) -> None:
    """Every rig hangs: each tick waits out the per-rig deadline (4 s). That is a slow, healthy
    loop: the watchdog keeps pinging (it goes silent only past tick + observation + command
    deadlines, which the configuration cannot set lower)."""
    from daemon.run import serve

    rigs = KEYS[:2]
    config = write_config(tmp_path / "rigpilot.toml", sim, keys=rigs)
    text = config.read_text().replace(
        "confirm_deadline_s = 20", "confirm_deadline_s = 20\nobserve_timeout_s = 4"
    )
    config.write_text(text)
    settings = load_settings(config)
    notifier = Notifier({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})
    stop = asyncio.Event()
    reports: list[TickReport] = []

    def on_tick(report: TickReport) -> None:
        reports.append(report)
        if len(reports) == 1:
            for k in rigs:
                sim.control.set_fault(sim.address(k), "hang")
        if len(reports) == 3:
            stop.set()

    assert (
        await asyncio.wait_for(
            serve(settings, True, on_tick=on_tick, stop=stop, notifier=notifier), 90
        )
        == 0
    )
    assert reports[-1].observed == 0 and reports[-1].duration_s >= 4.0  # slow ticks indeed
    pings = sorted(at for at, _ in notify.fields("WATCHDOG"))
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < 1.0, f"the watchdog went quiet during slow ticks: {max(gaps):.1f} s"


def test_a_watchdog_tighter_than_a_slow_tick_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "r.toml"
    config.write_text("[control]\ntick_s = 10\nwedged_after_s = 20\n")
    with pytest.raises(ConfigError, match=r"wedged_after_s \(20 s\) must be at least"):
        load_settings(config)


@pytest.mark.slow
async def test_sigkill_mid_curtailment_then_restart_converges_without_repeating_commands(
    sim: SimFleet, tmp_path: Path
) -> None:
    addresses = [sim.address(k) for k in KEYS]
    await asyncio.to_thread(sim.control.request, "POST", "/counters/reset")
    # Hashprice far below every rig's break-even: the whole fleet is to sleep.
    config = write_config(tmp_path / "rigpilot.toml", sim, hashprice=5.0)
    audit = tmp_path / "state" / "audit.jsonl"
    proc = start(config)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if audit.exists() and '"kind":"command"' in audit.read_text().replace(" ", ""):
            break
        await asyncio.sleep(0.02)
    proc.kill()  # SIGKILL: no chance to save anything
    proc.wait(10)
    ready_before = any(e.get("event") == "daemon.ready" for e in log_events(config))
    first_run = [json.loads(x) for x in audit.read_text().splitlines()]
    sent_first = {e["rig"] for e in first_run if e["kind"] == "command"}
    assert sent_first, "killed before any command was sent"

    proc = start(config)
    try:
        # The restart found the commands the first run had journaled as in flight.
        restored = await wait_log(config, "store.restored", count=2)
        assert restored["in_flight"] >= 1
        await wait_log(config, "daemon.ready", count=2 if ready_before else 1)
        deadline = time.monotonic() + 90
        modes: dict[str, str] = {}
        while time.monotonic() < deadline:
            modes = {a: (await asyncio.to_thread(sim.control.rig, a))["mode"] for a in addresses}
            if all(m == "sleep" for m in modes.values()):
                break
            await asyncio.sleep(0.5)
        assert all(m == "sleep" for m in modes.values()), modes
        ticks = sum(e.get("event") == "fleet.tick" for e in log_events(config))
        await wait_log(config, "fleet.tick", count=ticks + 2)  # two more ticks: nothing is sent
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    events = [json.loads(x) for x in audit.read_text().splitlines()]
    commands = [e for e in events if e["kind"] == "command"]
    per_rig = {a: [c for c in commands if c["rig"] == a] for a in addresses}
    for rig, cmds in per_rig.items():
        assert len(cmds) == 1, f"{rig} commanded {len(cmds)} times: {cmds}"
    for a in addresses:  # the rigs agree: one write each
        counters = (await asyncio.to_thread(sim.control.rig, a))["counters"]
        assert counters["writes"] == 1, (a, counters)


async def test_pins_command_ids_and_waits_survive_a_restart(sim: SimFleet, tmp_path: Path) -> None:
    h, addresses = await harness(sim, tmp_path, dry_run=False)
    store = Store(tmp_path / DB_NAME)
    desk = CommandDesk(loop=h.loop, site="s", configured=frozenset(addresses), clock=h.clock)
    persistence = Persistence(store, h.loop)
    desk.persist = persistence.save_commands
    pin = json.dumps({"rig": addresses[0], "mode": "sleep", "for_s": 3600, "transaction": "p1"})
    [answer] = desk.commit(desk.handle(Envelope("pin", pin.encode(), h.clock())))
    assert answer.body["status"] == "done"
    curtail = json.dumps({"rig": addresses[1], "transaction": "c1"}).encode()
    answers = desk.handle(Envelope("curtail", curtail, h.clock()))
    assert desk.commit(answers)[0].body["status"] == "accepted"  # stored, then answered
    store.close()  # as if killed: nothing else was saved

    h2, _ = await harness(sim, tmp_path / "second", dry_run=False)
    store2 = Store(tmp_path / DB_NAME)
    desk2 = CommandDesk(loop=h2.loop, site="s", configured=frozenset(addresses), clock=h.clock)
    counts = Persistence(store2, h2.loop).restore(h.clock())
    assert counts["pins"] == 2 and counts["waiting_commands"] == 1 and counts["command_ids"] == 2
    assert {o.mode.value for o in h2.loop.operator.overrides()} == {"sleep"}
    # A redelivery after the restart: not applied again, the stored final answer repeated.
    [again] = desk2.handle(Envelope("pin", pin.encode(), h.clock()))
    assert again.body == {**answer.body, "repeated": True}
    assert len(desk2.state.pins) == 2
    report = await h2.tick(hashprice=80.0)
    for _ in range(5):
        answers = desk2.after_tick(report)
        if answers:
            break
        report = await h2.tick(hashprice=80.0)
    assert [a.body["transaction"] for a in answers] == ["c1"]
    assert answers[0].body["status"] == "done"
    store2.close()


async def test_metrics_endpoint_of_a_running_daemon(sim: SimFleet, tmp_path: Path) -> None:
    from broker import free_port

    from daemon.run import serve

    port = free_port()
    extra = f'[metrics]\nenabled = true\naddress = "127.0.0.1"\nport = {port}\n'
    settings = load_settings(write_config(tmp_path / "r.toml", sim, keys=KEYS[:3], extra=extra))
    stop = asyncio.Event()
    reports: list[TickReport] = []
    text: list[str] = []

    async def scrape() -> None:
        async with httpx.AsyncClient() as client:
            while len(reports) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            text.append((await client.get(f"http://127.0.0.1:{port}/metrics")).text)
            stop.set()

    scraper = asyncio.create_task(scrape())
    await asyncio.wait_for(serve(settings, True, on_tick=reports.append, stop=stop), 60)
    await scraper
    families = {f.name: f for f in text_string_to_metric_families(text[0])}
    assert families, "nothing exposed"
    rig_series = [
        s
        for f in families.values()
        for s in f.samples
        if s.labels.get("rig") in {sim.address(k) for k in KEYS[:3]}
    ]
    assert rig_series


async def test_rigpilot_status_reads_the_running_daemons_summary(
    sim: SimFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.run import serve

    config = write_config(tmp_path / "r.toml", sim, keys=KEYS[:2])
    assert main_status(["--config", str(config)]) == 5  # nothing has run yet
    assert "no daemon has run" in capsys.readouterr().out
    settings = load_settings(config)
    stop = asyncio.Event()
    outs: list[tuple[int, str]] = []

    def on_tick(report: TickReport) -> None:
        if len(outs) < 2:
            outs.append((main_status(["--config", str(config)]), capsys.readouterr().out))
            outs.append((main_status(["--state-dir", str(settings.state_dir), "--json"]), ""))
            outs[-1] = (outs[-1][0], capsys.readouterr().out)
            stop.set()

    assert await serve(settings, True, on_tick=on_tick, stop=stop) == 0
    (code, out), (json_code, json_out) = outs
    assert code == 0 and "2/2 rigs read" in out and "DRY-RUN" in out, out
    doc = json.loads(json_out)
    assert json_code == 0 and doc["observed"] == 2 and doc["stale"] is False
    assert doc["state"] == "running"
    assert main_status(["--config", str(config)]) == 3  # stopped since
    assert "STOPPED" in capsys.readouterr().out


def test_config_check_prints_the_effective_configuration_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "r.toml"
    config.write_text(
        '[mqtt]\nusername = "rigpilot"\n[[rigs]]\naddress = "10.0.0.1"\ngroup = "a"\n'
    )
    monkeypatch.setenv("RIGPILOT_MQTT__PASSWORD", "hunter2")
    assert main_config(["check", str(config)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and 'password = "**********"' in out
    effective = tomllib.loads(out)
    assert effective["rigs"] == [
        {"address": "10.0.0.1", "group": "a", "outlets": [], "power_cycle": True}
    ]
    assert effective["mqtt"]["username"] == "rigpilot"
    assert effective["control"]["tick_s"] == 30.0


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("[control]\ntick_s = 0\n", "control.tick_s"),
        ("[mqtt]\nprot = 1\n", "did you mean 'mqtt.port'"),
        ('[control]\npolicies = ["brakeeven"]\n', "unknown policy 'brakeeven'"),
        ('[mqtt]\nenabled = true\npassword_file = "/nonexistent/pw"\n', "cannot be read"),
        ("not toml ==", "TOML"),
        (
            '[control]\npolicies = ["schedule"]\n[[control.policy_params.schedule]]\n'
            'start = "16:00"\nend = "17:30"\nmode = "sleep"\n',
            "control.policy_params (schedule): schedule window 1 ('window 1'): timezone must",
        ),
        (
            '[control]\npolicies = ["breakeven", "schedule"]\n'
            '[[control.policy_params.schedule]]\nstart = "16:00"\nend = "25:00"\n'
            'mode = "sleep"\ntimezone = "UTC"\n',
            "end",
        ),
    ],
)
def test_config_check_names_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expect: str
) -> None:
    config = tmp_path / "r.toml"
    config.write_text(text)
    assert main_config(["check", str(config)]) == 2
    assert expect in capsys.readouterr().err


def test_systemd_state_directory_is_used_unless_state_dir_is_configured(tmp_path: Path) -> None:
    from daemon.run import with_state_directory

    env = {"STATE_DIRECTORY": "/var/lib/rigpilot-a:/var/lib/other"}
    bare = tmp_path / "bare.toml"
    bare.write_text('[site]\nname = "x"\n')
    assert with_state_directory(load_settings(bare), env).state_dir == Path("/var/lib/rigpilot-a")
    explicit = tmp_path / "explicit.toml"
    explicit.write_text(f'state_dir = "{tmp_path}"\n')
    assert with_state_directory(load_settings(explicit), env).state_dir == tmp_path
    assert with_state_directory(load_settings(bare), {}).state_dir == Path("/var/lib/rigpilot")
