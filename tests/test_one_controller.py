"""One controller per site: a second ``rigpilot run`` on the same state directory refuses to
start (the real command, real processes, the lock on a real file), and a second instance of
the same site on the same broker is detected by both and never commands (a real Mosquitto)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from broker import Broker
from conftest import REPO, SimFleet
from helpers import KEYS, start, wait_log, write_config
from mqtt_client import Collector, Msg, daemon_settings, start_daemon
from test_mqtt_bridge import wait_rig

from daemon.admin_cli import main_status
from daemon.config import Settings, load_settings
from daemon.mqtt.topics import Topics
from daemon.reconciler import Outcome
from daemon.statelock import LOCK_NAME

pytestmark = pytest.mark.slow  # real daemons started, stopped and killed


def run_second(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run", "--config", str(config), "--ticks", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_second_daemon_on_the_same_state_refuses_to_start_naming_the_pid(
    sim: SimFleet, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "r.toml", sim, keys=KEYS[:2], top="dry_run = true")
    lock = tmp_path / "state" / LOCK_NAME
    first = start(config)
    try:
        await wait_log(config, "daemon.ready")
        second = run_second(config)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr  # one line, nothing logged before it
        assert lines[0].startswith("rigpilot run: state directory ")
        assert f"pid {first.pid}" in lines[0] and str(lock) in lines[0]
        assert lock.read_text().strip() == str(first.pid)
        assert first.poll() is None, "the running daemon is untouched"
        await wait_log(config, "fleet.tick", count=3)  # and keeps ticking
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
    assert lock.read_text() == "", "a clean stop leaves no PID behind"

    # SIGKILL: the kernel drops the lock with the process; the next start is not blocked.
    killed = start(config)
    try:
        await wait_log(config, "daemon.ready", count=2)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
    assert lock.read_text().strip() == str(killed.pid)  # a stale PID, but no lock
    again = run_second(config)
    assert again.returncode == 0, again.stderr


def instance_settings(
    tmp: Path,
    broker: Broker,
    rigs: list[str],
    *,
    dry_run: bool,
    client_id: str,
    site: str = "twin",
) -> Settings:
    """``site`` with a hashprice at which nothing pays: every rig should sleep."""
    daemon_settings(tmp, broker, site, dict.fromkeys(rigs, "row-a"), dry_run=dry_run)
    config = tmp / "rigpilot.toml"
    config.write_text(config.read_text().replace("value = 80.0", "value = 5.0"))
    settings = load_settings(config)
    return settings.model_copy(
        update={"mqtt": settings.mqtt.model_copy(update={"client_id": client_id})}
    )


async def announce(broker: Broker, topics: Topics, doc: dict[str, Any]) -> None:
    """Publish ``doc`` as another instance's retained info, and its availability, as its
    bridge would have left them."""
    async with Collector(broker, broker.add_site(topics.site), [], "announcer") as col:
        assert col.client is not None
        await col.client.publish(topics.info, json.dumps(doc), qos=1, retain=True)
        await col.client.publish(topics.availability, b"online", qos=1, retain=True)


async def test_two_daemons_of_one_site_on_one_broker_detect_each_other_and_one_commands(
    broker: Broker, sim: SimFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rigs = [sim.address("s19jpro"), sim.address("m50s")]
    # The first (dry-run by its configuration) commands the site; the second, started later
    # and configured live, must hold every command while the first is there.
    first_settings = instance_settings(
        tmp_path / "a", broker, rigs, dry_run=True, client_id="twin-a"
    )
    second_settings = instance_settings(
        tmp_path / "b", broker, rigs, dry_run=False, client_id="twin-b"
    )
    topics = Topics("rigpilot", "twin")
    async with Collector(broker, "viewer", [f"{topics.root}/#"], "twin-w") as col:
        first = await start_daemon(first_settings)
        second_stopped = False
        second = await start_daemon(second_settings)
        try:

            def instance_event(standby: bool) -> Callable[[Msg], bool]:
                return lambda m: (
                    m.topic == topics.event("instance") and m.json()["standby"] is standby
                )

            events = [
                (await col.wait_for(instance_event(standby), timeout=20)).json()
                for standby in (False, True)
            ]
            active, standby = events
            assert active["conflict"] and standby["conflict"], events
            assert active["instance"] != standby["instance"]
            while len(second.reports) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            held = [r for rep in second.reports for r in rep.results]
            assert held, "the second wanted to curtail (nothing pays at $5/PH/day)"
            assert {r.outcome for r in held} == {Outcome.DRY_RUN}
            assert all(r.detail.startswith("held: another instance") for r in held)
            for address in rigs:  # nothing was sent by either
                assert (await asyncio.to_thread(sim.control.rig, address))["mode"] == "normal"
            assert second.reports[-1].desired  # it still observes and decides
            # Both say so in their status.
            for settings in (first_settings, second_settings):
                main_status(["--state-dir", str(settings.state_dir)])
                out = capsys.readouterr().out
                assert "CONFLICT: another rigpilot announces site 'twin'" in out, out
                assert "DRY-RUN" in out
            # The first stops cleanly: the second takes over at once and commands.
            assert await first.close() == 0
            for address in rigs:
                await wait_rig(sim, address, "sleep", 30)
            over = await col.wait_for(
                lambda m: m.topic == topics.event("instance") and m.json()["conflict"] is None,
                timeout=5,
            )
            assert over.json()["instance"] == standby["instance"]
            sent = [r for rep in second.reports for r in rep.results if r.outcome is Outcome.SENT]
            assert {r.command.rig_id for r in sent} == set(rigs)
            assert await second.close() == 0
            second_stopped = True
        finally:
            if not first.task.done():
                await first.close()
            if not second_stopped:
                await second.close()


async def test_an_instance_that_died_without_a_word_is_waited_out_then_the_site_is_taken(
    broker: Broker, sim: SimFleet, tmp_path: Path
) -> None:
    """A retained info left by an instance of another machine that died with no will (its
    broker went down with it): held while it could be alive, taken over once it has missed
    three of its heartbeats. One left by a dead process of this machine is ignored at once."""
    rigs = [sim.address("s21")]
    topics = Topics("rigpilot", "ghost")
    now = time.time()
    ghost = {"instance": "f" * 32, "host": "elsewhere", "pid": 1, "heartbeat_s": 2.0, "at": now}
    ghost["started_at"] = now - 3600
    await announce(broker, topics, ghost)
    settings = instance_settings(
        tmp_path / "c", broker, rigs, dry_run=False, client_id="twin-c", site="ghost"
    )
    daemon = await start_daemon(settings)
    try:
        first = daemon.reports[0]
        assert first.results and all(r.detail.startswith("held: ") for r in first.results)
        assert (await asyncio.to_thread(sim.control.rig, rigs[0]))["mode"] == "normal"
        await wait_rig(sim, rigs[0], "sleep", 30)  # missed 3 beats of 2 s: taken over
        held_for = time.time() - now
        assert 6.0 <= held_for < 25.0, held_for
    finally:
        assert await daemon.close() == 0

    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()  # its PID no longer exists
    local = {
        **ghost,
        "host": socket.gethostname(),
        "pid": gone.pid,
        "at": time.time(),
        "heartbeat_s": 600.0,
    }
    await announce(broker, topics, local)
    await asyncio.to_thread(sim.control.reset, rigs[0])
    settings = instance_settings(
        tmp_path / "d", broker, rigs, dry_run=False, client_id="twin-d", site="ghost"
    )
    daemon = await start_daemon(settings)
    try:
        assert all(not r.detail.startswith("held: ") for r in daemon.reports[0].results)
        await wait_rig(sim, rigs[0], "sleep", 30)
    finally:
        assert await daemon.close() == 0
