"""Outlets from the control room and Home Assistant, end to end: a real Mosquitto (TLS, the
documented ACL), the daemon in-process with the simulated Raritan PDU (SNMP over UDP, outlet 1:
the S19 XP) and Shelly plug (HTTP, switch 0: the S21 Pro) in its configuration, and a stock
S19j Pro wired to nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from broker import Broker
from conftest import SimFleet
from hass_schema import assert_valid
from helpers import eventually
from mqtt_client import Collector, RunningDaemon, daemon_settings, start_daemon
from schema_check import problems

from daemon.mqtt import asyncapi
from daemon.mqtt.topics import Topics

PDU, PLUG = "127.2.0.2", "127.2.0.3"
SWITCHES = f"""
[[switches]]
name = "px3"
kind = "raritan"
address = "{PDU}"

[[switches]]
name = "plug"
kind = "shelly"
address = "{PLUG}"
"""


def settings_for(tmp: Path, broker: Broker, sim: SimFleet, site: str, **kw: Any) -> Any:
    outlets = {sim.address("s19xp"): "px3:1", sim.address("s21pro"): "plug:0"}
    rigs = {a: "row-a" for a in [*outlets, sim.address("s19jpro")]}
    return daemon_settings(
        tmp, broker, site, rigs, extra=SWITCHES, outlets={a: [o] for a, o in outlets.items()}, **kw
    )


def switched(sim: SimFleet, address: str, outlet: int) -> tuple[bool, int]:
    state = sim.control.switch(address)
    o = next(o for o in state["outlets"] if o["outlet"] == outlet)
    return bool(o["on"]), int(o["switched"])


async def ask(col: Collector, topics: Topics, command: str, body: dict[str, Any]) -> None:
    assert col.client is not None
    await col.client.publish(topics.request(command), json.dumps(body).encode(), qos=1)


async def rig_doc(col: Collector, topics: Topics, rig: str, after: int = 0) -> dict[str, Any]:
    """The rig's latest state document received since message ``after``."""
    docs: list[dict[str, Any]] = [
        m.json() for m in col.messages[after:] if m.topic == topics.rig_state(rig)
    ]
    assert docs, f"no state for {rig}"
    return docs[-1]


async def test_off_on_and_power_cycle_over_mqtt_with_home_assistant_entities(
    broker: Broker, sim: SimFleet, tmp_path: Path
) -> None:
    site = "outlets"
    topics = Topics("rigpilot", site)
    xp, pro, bare = sim.address("s19xp"), sim.address("s21pro"), sim.address("s19jpro")
    daemon = await start_daemon(settings_for(tmp_path, broker, sim, site, discovery=True))
    doc = asyncapi.document()
    schemas = doc["components"]["schemas"]
    try:
        async with (
            Collector(broker, "operator", [f"{topics.root}/#"], "pw-op") as op,
            Collector(broker, "homeassistant", ["homeassistant/#"], "pw-ha") as ha,
        ):
            # Home Assistant: the outlet entities under each wired rig's device, valid.
            await ha.wait_for(lambda m: "outlet_power/config" in m.topic, 30)
            await ha.wait_for(
                lambda m: "_mode/config" in m.topic and bare.replace(".", "_") in m.topic, 30
            )
            configs = {m.topic: m.json() for m in ha.messages if m.topic.endswith("/config")}
            for topic, payload in configs.items():
                assert_valid(topic, payload)
            outlet_switch = {
                json.loads(p["payload_off"])["rig"]: p
                for t, p in configs.items()
                if t.endswith("_outlet/config")
            }
            assert sorted(outlet_switch) == sorted([xp, pro])  # not the unwired S19j Pro
            sensors = [t for t in configs if t.endswith("_outlet_power/config")]
            assert len(sensors) == 2  # the Raritan and the Shelly both meter their outlets
            power = next(p for t, p in configs.items() if t.endswith("_outlet_power/config"))
            assert (power["device_class"], power["unit_of_measurement"]) == ("power", "W")
            assert power["state_class"] == "measurement"
            for rig, p in outlet_switch.items():
                mode = next(
                    q for t, q in configs.items()
                    if t.endswith("_mode/config") and q["device"] == p["device"]
                )  # fmt: skip
                assert mode["options"][:2] == ["auto", "off"], rig
            bare_mode = next(
                p for t, p in configs.items()
                if t.endswith("_mode/config") and bare.replace(".", "_") in t
            )  # fmt: skip
            assert "off" not in bare_mode["options"]
            buttons = {
                json.loads(p["payload_press"])["rig"]: p
                for t, p in configs.items()
                if t.startswith("homeassistant/button/")
            }
            assert sorted(buttons) == sorted([xp, pro])  # a power-cycle button per wired rig
            assert buttons[pro]["command_topic"] == topics.request("power_cycle")

            # The control room: set off, done once the plug reads off and the rig is gone.
            relays = (await asyncio.to_thread(switched, sim, PLUG, 0))[1]  # whole session's
            await ask(op, topics, "set", {"rig": pro, "mode": "off", "transaction": "off-1"})
            done = await op.final("off-1", 60)
            assert done["status"] == "done", done
            assert [a["status"] for a in op.answers("off-1")] == ["accepted", "done"]
            assert await asyncio.to_thread(switched, sim, PLUG, 0) == (False, relays + 1)
            state = await rig_doc(op, topics, pro)
            assert state["mode"] == "off" and state["outlets"]["on"] is False
            assert problems(state, schemas["RigState"], doc) == []

            # Home Assistant's outlet switch turned on: auto, the policies run it again.
            mark = len(op.messages)
            assert ha.client is not None
            on = outlet_switch[pro]
            await ha.client.publish(on["command_topic"], on["payload_on"].encode(), qos=1)

            async def hashing() -> bool:
                docs = [m.json() for m in op.messages[mark:] if m.topic == topics.rig_state(pro)]
                return bool(docs) and docs[-1]["mining"] is True and docs[-1]["outlets"]["on"]

            await eventually(hashing, 60, what="the S21 Pro back on and hashing")
            assert (await asyncio.to_thread(switched, sim, PLUG, 0))[0] is True

            # power_cycle: done once the S19 XP is back and hashing; the event published.
            before = (await asyncio.to_thread(switched, sim, PDU, 1))[1]
            await ask(op, topics, "power_cycle", {"rig": xp, "transaction": "pc-1"})
            done = await op.final("pc-1", 90)
            assert done["status"] == "done", done
            assert "(1 hashing again)" in done["reason"]
            assert (await asyncio.to_thread(switched, sim, PDU, 1)) == (True, before + 2)
            events = [m.json() for m in op.messages if m.topic == topics.event("power")]
            assert [(e["rig"], e["kind"], e["cause"]) for e in events] == [
                (xp, "power_cycle", "requested")
            ]
            assert problems(events[0], schemas["PowerEvent"], doc) == []

            # Home Assistant's power-cycle button, pressed for the S21 Pro on its plug: the
            # same cycle, published as asked by Home Assistant; the rig comes back.
            relays = (await asyncio.to_thread(switched, sim, PLUG, 0))[1]
            press = buttons[pro]
            await ha.client.publish(press["command_topic"], press["payload_press"].encode(), qos=1)

            async def cycled() -> bool:
                return (await asyncio.to_thread(switched, sim, PLUG, 0)) == (True, relays + 2)

            await eventually(cycled, 90, what="the S21 Pro's plug off and on again")
            events = [m.json() for m in op.messages if m.topic == topics.event("power")]
            assert [(e["rig"], e["kind"], e["cause"]) for e in events][-1] == (
                pro,
                "power_cycle",
                "requested",
            )

            # Refused at once, naming the rig and why: nothing feeds the S19j Pro.
            await ask(op, topics, "power_cycle", {"rig": bare, "transaction": "pc-2"})
            refused = await op.final("pc-2", 30)
            assert refused["status"] == "rejected"
            assert f"{bare}: no outlets feed it" in refused["reason"]
            await ask(op, topics, "set", {"rig": bare, "mode": "off", "transaction": "off-2"})
            refused = await op.final("off-2", 30)
            assert refused["status"] == "rejected"
            assert f"{bare} has no outlets" in refused["reason"]
    finally:
        assert await daemon.close() == 0


async def test_dry_run_off_and_power_cycle_switch_nothing(
    broker: Broker, sim: SimFleet, tmp_path: Path
) -> None:
    site = "outletsdry"
    topics = Topics("rigpilot", site)
    xp, pro = sim.address("s19xp"), sim.address("s21pro")
    before = [
        await asyncio.to_thread(sim.control.switch, PDU),
        await asyncio.to_thread(sim.control.switch, PLUG),
    ]
    daemon: RunningDaemon = await start_daemon(
        settings_for(tmp_path, broker, sim, site, dry_run=True)
    )
    try:
        async with Collector(broker, "operator", [f"{topics.root}/#"], "pwd-op") as op:
            await ask(op, topics, "set", {"rig": pro, "mode": "off", "transaction": "d-1"})
            await ask(op, topics, "power_cycle", {"rig": xp, "transaction": "d-2"})
            off, cycle = await op.final("d-1", 30), await op.final("d-2", 30)
            assert off["status"] == "done" and off["reason"].startswith("dry-run:"), off
            assert cycle["status"] == "done" and cycle["result"]["would"] == 1, cycle
            await daemon.ticks(2)
        after = [
            await asyncio.to_thread(sim.control.switch, PDU),
            await asyncio.to_thread(sim.control.switch, PLUG),
        ]
        assert [[o["switched"] for o in s["outlets"]] for s in after] == [
            [o["switched"] for o in s["outlets"]] for s in before
        ]  # no SNMP SET reached the PDU, no HTTP switch the plug
        assert all(o["on"] for s in after for o in s["outlets"])
        assert (await asyncio.to_thread(sim.control.rig, pro))["mode"] == "normal"
    finally:
        assert await daemon.close() == 0
