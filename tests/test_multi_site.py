"""Many sites, one control room (docs/multi-site.md): two site daemons, each on its own real
Mosquitto, bridged with the shipped bridge file (docs/mosquitto/site-bridge.conf) to a third,
the control room's broker, through a link the test cuts. The control room commands a site
through the bridge; a site whose link is down keeps ticking and answering its own broker;
requests sent to it meanwhile are delivered when the link is back, and refused if they
expired; the control room sees the link go down and come back; ``rigpilot fleet`` lists both
sites from the control room's retained topics."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from broker import USERS, Broker, Link, bridged_site
from conftest import SimFleet
from helpers import start
from mqtt_client import Collector, Msg, RunningDaemon, daemon_settings, start_daemon

from daemon.sites_cli import main as fleet_main

SITES = {"north": ("s19jpro", "m50s"), "south": ("s21", "m60s")}


@dataclass
class Site:
    name: str
    broker: Broker
    link: Link
    daemon: RunningDaemon | None = None


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("control"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
async def sites(control: Broker, sim: SimFleet, tmp_path: Path) -> AsyncIterator[dict[str, Site]]:
    out: dict[str, Site] = {}
    try:
        for name, keys in SITES.items():
            local, link = bridged_site(control, tmp_path / f"{name}-broker", name)
            out[name] = Site(name, local, link)
            local.start()
            rigs = {sim.address(k): "row-a" for k in keys}
            settings = daemon_settings(tmp_path / name, local, name, rigs)
            out[name].daemon = await start_daemon(settings)
        yield out
    finally:
        for site in out.values():
            if site.daemon is not None and not site.daemon.task.done():
                await site.daemon.close()
            site.broker.stop()
            site.link.close()


def payload_is(topic: str, payload: bytes | None) -> Callable[[Msg], bool]:
    """A message on ``topic`` with this payload (None: any)."""
    return lambda m: m.topic == topic and payload in (None, m.payload)


async def request(col: Collector, site: str, command: str, body: dict[str, Any]) -> None:
    assert col.client is not None
    await col.client.publish(f"rigpilot/{site}/request/{command}", json.dumps(body), qos=1)


async def fleet_view(
    control: Broker, tmp: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, dict[str, Any]], str]:
    """``rigpilot fleet --json`` against the control room's broker, as its viewer (in a thread:
    the command runs its own event loop; tests/test_fleet_view.py runs it through the console
    script's dispatcher)."""
    password = tmp / "viewer-password"
    password.write_text(USERS["viewer"] + "\n")
    argv = [
        *("--json", "--broker", f"127.0.0.1:{control.port}"),
        *("--ca-file", str(control.pki["ca"]), "--username", "viewer"),
        *("--password-file", str(password)),
    ]
    capsys.readouterr()
    status = await asyncio.to_thread(fleet_main, argv)
    out, err = capsys.readouterr()
    rows = {r["site"]: r for r in json.loads(out)["sites"]} if out else {}
    return status, rows, err


async def ticks(daemon: RunningDaemon, n: int, timeout: float = 30.0) -> None:
    """Until ``daemon`` has ticked ``n`` more times."""
    target = len(daemon.reports) + n
    deadline = time.monotonic() + timeout
    while len(daemon.reports) < target:
        assert time.monotonic() < deadline, f"fewer than {n} ticks within {timeout} s"
        await asyncio.sleep(0.1)


async def test_two_sites_bridged_to_one_control_room_survive_a_cut_link(  # noqa: C901, PLR0912  one scenario, step by step
    control: Broker, sites: dict[str, Site], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    north, south = sites["north"], sites["south"]
    assert north.daemon is not None and south.daemon is not None
    room_topics = [f"rigpilot/{s}/#" for s in SITES]
    async with Collector(control, "operator", room_topics, "control-room") as room:
        # Both sites announce themselves through their bridges: the link notice, the daemon's
        # availability and a fleet summary, retained on the control room's broker.
        for name in SITES:
            await room.wait_for(payload_is(f"rigpilot/{name}/link/state", b"1"))
            await room.wait_for(payload_is(f"rigpilot/{name}/bridge/state", b"online"))
            await room.wait_for(payload_is(f"rigpilot/{name}/fleet/state", None))

        # A request from the control room is answered through the bridge, by the right site.
        for name in SITES:
            await request(room, name, "status", {"transaction": f"room-{name}"})
        for name in SITES:
            answer = await room.final(f"room-{name}")
            assert (answer["status"], answer["site"]) == ("done", name), answer
            assert answer["result"]["site"] == name and answer["result"]["ticked"], answer

        status, rows, err = await fleet_view(control, tmp_path, capsys)
        assert status == 0, err
        assert sorted(rows) == ["north", "south"]
        for name in SITES:
            assert rows[name]["state"] == "online" and rows[name]["link"] is True, rows[name]
            assert rows[name]["rigs"] == 2 and rows[name]["online"] == 2, rows[name]
            assert rows[name]["hashrate_ths"] > 0 and rows[name]["power_kw"] > 0, rows[name]
            assert rows[name]["curtailed"] == 0 and rows[name]["curtailed_share"] == 0.0

        # The north's link drops: the control room's broker fires the bridge's will. The south
        # is not affected and answers at once.
        mark = len(room.messages)
        north.link.cut()
        await room.wait_for(payload_is("rigpilot/north/link/state", b"0"), after=mark)
        await request(room, "south", "status", {"transaction": "south-alone"})
        assert (await room.final("south-alone"))["status"] == "done"
        # Then the south's: both sites are on their own.
        south.link.cut()
        await room.wait_for(payload_is("rigpilot/south/link/state", b"0"), after=mark)
        # Requests sent to each meanwhile: one that expires before its link is back, one that
        # does not.
        expires_at = time.time() + 1.0
        for name in SITES:
            body = {"transaction": f"late-{name}", "expires_at": expires_at}
            await request(room, name, "status", body)
            await request(room, name, "status", {"transaction": f"queued-{name}"})

        # Each site keeps controlling on its own and answers its own broker's operator.
        for site in sites.values():
            assert site.daemon is not None
            topics = [f"rigpilot/{site.name}/#"]
            async with Collector(site.broker, "operator", topics, f"{site.name}-op") as local:
                await ticks(site.daemon, 3)
                await request(local, site.name, "status", {"transaction": f"local-{site.name}"})
                answer = await local.final(f"local-{site.name}")
                assert (answer["status"], answer["site"]) == ("done", site.name), answer
                # The site's broker knows its link to the control room is down too.
                await local.wait_for(payload_is(f"rigpilot/{site.name}/link/state", b"0"))
            assert site.daemon.reports[-1].observed == 2, "the site still reads its rigs"
        for name in SITES:
            assert not room.answers(f"late-{name}") and not room.answers(f"queued-{name}")

        status, rows, err = await fleet_view(control, tmp_path, capsys)
        assert status == 0, err
        for name in SITES:
            assert rows[name]["state"] == "link down" and rows[name]["link"] is False, rows
            assert rows[name]["availability"] == "online", "the site's last word before the cut"

        while time.time() <= expires_at:  # noqa: ASYNC110 - the request must have expired
            await asyncio.sleep(0.1)
        mark = len(room.messages)
        for site in sites.values():
            site.link.restore()
        for name in SITES:
            await room.wait_for(payload_is(f"rigpilot/{name}/link/state", b"1"), after=mark)
            late = await room.final(f"late-{name}")
            assert late["status"] == "rejected", late
            assert late["reason"].startswith("expired: expires_at "), late
            queued = await room.final(f"queued-{name}")
            assert (queued["status"], queued["site"]) == ("done", name), queued
            assert len(room.answers(f"late-{name}")) == len(room.answers(f"queued-{name}")) == 1

        status, rows, err = await fleet_view(control, tmp_path, capsys)
        assert status == 0, err
        for name in SITES:
            assert rows[name]["state"] == "online" and rows[name]["link"] is True, rows

        # A site whose daemon stops: its own availability says so through the bridge.
        mark = len(room.messages)
        assert await south.daemon.close() == 0
        await room.wait_for(payload_is("rigpilot/south/bridge/state", b"offline"), after=mark)
        status, rows, err = await fleet_view(control, tmp_path, capsys)
        assert rows["south"]["state"] == "offline" and rows["south"]["link"] is True

        # The south again, as a real `rigpilot run` with the same configuration, killed: its
        # last will crosses the bridge too.
        proc = start(tmp_path / "south" / "rigpilot.toml")
        try:
            mark = len(room.messages)
            online = payload_is("rigpilot/south/bridge/state", b"online")
            await room.wait_for(online, after=mark, timeout=60)
            mark = len(room.messages)
            proc.kill()
            await room.wait_for(payload_is("rigpilot/south/bridge/state", b"offline"), after=mark)
        finally:
            proc.kill()
            proc.wait(10)


async def test_the_acl_confines_a_widened_bridge_to_its_own_site(
    control: Broker, tmp_path: Path
) -> None:
    """A site broker whose bridge was widened to everything (``topic # both``) still writes only
    its own site's tree on the control room's broker and receives only its own requests: the
    bridge logs in as the site's user, and the ACL's patterns confine it as they do the
    daemon."""
    local, link = bridged_site(control, tmp_path / "rogue-broker", "rogue")
    with (local.folder / "mosquitto.conf").open("a") as conf:
        conf.write("topic # both 1\n")
    control.add_site("south")
    local.start()
    try:
        async with (
            Collector(control, "operator", ["#"], "room-all") as room,
            Collector(local, "operator", ["#"], "rogue-all") as site,
        ):
            await room.wait_for(payload_is("rigpilot/rogue/link/state", b"1"))
            # Out: another site's request and state are dropped, the own state crosses.
            assert site.client is not None
            await site.client.publish("rigpilot/south/request/curtail", b'{"all": true}', qos=1)
            await site.client.publish("rigpilot/south/fleet/state", b"{}", qos=1, retain=True)
            await site.client.publish("homeassistant/status", b"online", qos=1)
            await site.client.publish("rigpilot/rogue/request/status", b"{}", qos=1)
            await room.wait_for(payload_is("rigpilot/rogue/request/status", b"{}"))
            crossed = {m.topic for m in room.messages if not m.retain}  # not earlier tests'
            assert not {t for t in crossed if not t.startswith("rigpilot/rogue/")}, crossed
            # In: another site's request is not delivered to this site's broker; its own is.
            await request(room, "south", "status", {"transaction": "not-yours"})
            await request(room, "rogue", "status", {"transaction": "yours"})
            await site.wait_for(
                lambda m: m.topic == "rigpilot/rogue/request/status" and b"yours" in m.payload
            )
            assert not [m for m in site.messages if b"not-yours" in m.payload]
    finally:
        local.stop()
        link.close()
