"""The firmware matrix: one rig of every firmware family, driven through the real daemon.

For each family (stock Antminer, Whatsminer API v2 and v3, LuxOS, Braiins OS, VNish, ePIC) a
daemon runs in-process over that one simulated rig of the session fleet, with a real Mosquitto
and Home Assistant discovery on, and an operator commands it over MQTT ``request/set``:

- detect: the daemon identifies the rig with the driver and capabilities written here by hand;
- Home Assistant's mode select offers exactly the modes the driver declares (``limit`` with
  the watts the select sends inside the declared range or presets), and the power limit
  number only where the limit is a continuous range;
- every declared mode (sleep, wake to normal, low/high, limit at a wattage the rig declares) is
  answered ``accepted`` then ``done``, once, and only once the rig is in it (the simulator's
  truth shows it when the answer arrives) and its published state shows it;
- every mode it does not declare, and a wattage it cannot take, is refused at once
  (``rejected``, never ``accepted``) naming the rig and what it can do;
- the audit log records each decision, command and confirmation.

Everything waits on events (answers, state documents); the simulator runs at the session
fleet's time scale (30x), so a family takes seconds.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from broker import Broker
from conftest import SimFleet
from hass_schema import assert_valid
from mqtt_client import Collector, Msg, daemon_settings, start_daemon

from daemon.mqtt.discovery import rig_configs
from daemon.mqtt.topics import Topics
from drivers.identify import driver_for, identify
from policies.values import Capabilities, Identity, Make, Mode

S, L, N, H, LIM = Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH, Mode.LIMIT
ORDER = (S, L, N, H, LIM)  # the select's order (daemon/mqtt/discovery.py)


@dataclass(frozen=True)
class Family:
    key: str  # the session fleet's model key (tests/conftest.py)
    driver: str
    modes: frozenset[Mode]
    limit_w: int | None  # a wattage the rig takes (inside its range, or one of its presets)
    bad_limit_w: int | None  # one it does not
    number: bool  # Home Assistant's power limit number (a continuous range)
    profiles: str  # how the simulator shows low/normal/high: "mode", or "freq" (a frequency step)
    normal_limit_w: int | None = None  # the power limit the rig shows in normal
    keeps_limit: bool = False  # a power mode set after a limit keeps the limit (the firmware's)


FAMILIES = [
    Family("s19jpro", "antminer-stock", frozenset({S, L, N}), None, None, False, "mode"),
    # Whatsminer: a limit is a setting on top of the power mode, and the power mode set after
    # it keeps it (rigpilot knows no documented way to lift it).
    Family(
        "m30s+",
        "whatsminer-v2",
        frozenset({S, L, N, H, LIM}),
        3000,
        6500,
        True,
        "mode",
        keeps_limit=True,
    ),
    Family(
        "m60s-v3",
        "whatsminer-v3",
        frozenset({S, N, LIM}),
        3000,
        400,
        True,
        "mode",
        keeps_limit=True,
    ),
    # LuxOS: low/high are profiles a frequency step below/above the default one.
    Family("s19jpro-luxos", "luxos", frozenset({S, L, N, H}), None, None, False, "freq"),
    # Braiins OS: limit is its power target, inside the range the rig tells at identification;
    # normal is its default target (3068 W on the simulated S19j Pro).
    Family(
        "s19jpro-braiins",
        "braiins-os",
        frozenset({S, N, LIM}),
        2600,
        9000,
        True,
        "mode",
        normal_limit_w=3068,
    ),
    # VNish: limit is one of the rig's autotune presets (watts), and nothing in between.
    Family("s19jpro-vnish", "vnish", frozenset({S, N, LIM}), None, 2999, False, "mode"),
    # ePIC: low/high are hashrate targets (a frequency below/above the default).
    Family("s19jpro-epic", "epic", frozenset({S, L, N, H}), None, None, False, "freq"),
]


def select_options(modes: frozenset[Mode]) -> list[str]:
    return ["auto", *(m.value for m in ORDER if m in modes)]


async def truth(sim: SimFleet, address: str) -> dict[str, Any]:
    state: dict[str, Any] = await asyncio.to_thread(sim.control.rig, address)
    return state


def in_mode(
    family: Family, state: dict[str, Any], mode: Mode, limit: int | None, kept: int | None
) -> bool:
    """The simulator's truth shows ``mode`` (a limit: the rig mining at that limit; ``kept``:
    the limit a Whatsminer keeps under a power mode)."""
    if mode is S:
        return not state["mining"]
    if not state["mining"]:
        return False
    if mode is LIM:
        return bool(state["power_limit_w"] == limit)
    want_limit = family.normal_limit_w if mode is N else None
    if family.keeps_limit and kept is not None:
        want_limit = kept
    if state["power_limit_w"] != want_limit:
        return False
    if family.profiles == "freq":
        step = int(state["freq_pct"])
        return state["mode"] == "normal" and {L: step < 0, N: step == 0, H: step > 0}[mode]
    return bool(state["mode"] == mode.value)


def rig_doc_in(m: Msg, rig: str, mode: Mode, limit: int | None) -> bool:
    """A published rig state document observing ``mode``."""
    if not m.topic.endswith(f"/rig/{rig}/state"):
        return False
    doc = m.json()
    if not doc["online"]:
        return False
    if mode is S:
        return doc["mode"] == "sleep" and not doc["mining"]
    if mode is LIM:
        return bool(doc["mining"]) and doc["power_limit_w"] == limit
    return doc["mode"] == mode.value and bool(doc["mining"])


async def capabilities(address: str) -> tuple[str, Capabilities]:
    driver = driver_for(await identify(address))
    return driver.name, driver.capabilities


@dataclass
class Operator:
    """Sends ``set`` requests for one rig over MQTT and waits for their final answers."""

    col: Collector
    topics: Topics
    address: str
    serial: int = 0

    async def ask(self, mode: Mode, limit: int | None = None) -> tuple[str, dict[str, Any]]:
        self.serial += 1
        tx = f"{self.topics.site}-{self.serial}-{mode.value}"
        body: dict[str, Any] = {
            "rig": self.address,
            "mode": mode.value,
            "for_s": 3600,
            "by": "matrix",
            "transaction": tx,
            "timeout_s": 120,
        }
        if limit is not None:
            body["power_limit_w"] = limit
        assert self.col.client is not None
        await self.col.client.publish(self.topics.request("set"), json.dumps(body), qos=1)
        return tx, await self.col.final(tx, 150)


def plan(family: Family, limit_w: int | None) -> list[tuple[Mode, int | None]]:
    """Sleep, wake, every other declared mode, and back to normal."""
    steps: list[tuple[Mode, int | None]] = [(S, None), (N, None)]
    steps += [(m, None) for m in (L, H) if m in family.modes]
    if LIM in family.modes:
        steps.append((LIM, limit_w))
    steps.append((N, None))
    return steps


async def check_refusals(op: Operator, family: Family) -> None:
    """Refused at once: every mode it does not declare, and a wattage it cannot take."""
    for mode in (L, N, H, LIM):
        if mode in family.modes:
            continue
        tx, answer = await op.ask(mode, 3000 if mode is LIM else None)
        assert answer["status"] == "rejected", answer
        assert [a["status"] for a in op.col.answers(tx)] == ["rejected"]
        assert f"cannot do {mode.value}" in answer["reason"], answer
        assert op.address in answer["reason"]
        supports = ", ".join(sorted(m.value for m in family.modes))
        assert f"it supports: {supports}" in answer["reason"]
    if family.bad_limit_w is not None:
        tx, answer = await op.ask(LIM, family.bad_limit_w)
        assert answer["status"] == "rejected", answer
        assert [a["status"] for a in op.col.answers(tx)] == ["rejected"]
        assert f"{family.bad_limit_w} W" in answer["reason"], answer


@pytest.mark.parametrize("family", FAMILIES, ids=[f.key for f in FAMILIES])
async def test_every_declared_mode_is_done_when_observed_and_no_other_is_taken(
    broker: Broker, sim: SimFleet, tmp_path: Path, family: Family
) -> None:
    address = sim.address(family.key)
    name, caps = await capabilities(address)
    # detect: the driver and what it declares, as written here by hand
    assert name == family.driver
    assert caps.modes == family.modes, sorted(m.value for m in caps.modes)
    limit_w = family.limit_w
    if LIM in family.modes and limit_w is None:  # VNish: one of the rig's own presets
        assert caps.power_limit_presets_w, "a VNish rig declares its presets"
        limit_w = caps.power_limit_presets_w[len(caps.power_limit_presets_w) // 2]
    steps = plan(family, limit_w)

    site = "mx-" + family.key.replace("+", "p")
    settings = daemon_settings(tmp_path, broker, site, {address: "row"}, discovery=True)
    topics = Topics("rigpilot", site)
    daemon = await start_daemon(settings)
    try:
        # Home Assistant's user: it reads discovery and state, and may write request/set only.
        async with Collector(
            broker, "homeassistant", ["homeassistant/#", f"{topics.root}/#"], site
        ) as col:
            select = await check_discovery(col, address, family, caps)
            op = Operator(col, topics, address)
            await check_refusals(op, family)

            # done once the observation shows it
            kept: int | None = None
            power_mode = N  # the power mode a limit sits on (Whatsminer)
            done_at: list[float] = []
            asked: list[str] = []
            sent: list[bool] = []  # whether the step needs a command
            for mode, limit in steps:
                # A Whatsminer under a limit that already runs the power mode asked is seen in
                # it at once: done without a command, its limit kept (docs/drivers.md).
                sent.append(not (family.keeps_limit and kept is not None and mode is power_mode))
                if mode in (L, N, H):
                    power_mode = mode
                mark = len(col.messages)
                tx, answer = await op.ask(mode, limit)
                assert answer["status"] == "done", answer
                done_at.append(answer["at"])
                asked.append(tx)
                state = await truth(sim, address)
                assert in_mode(family, state, mode, limit, kept), (mode, limit, state)
                if mode is LIM:
                    kept = limit
                assert [a["status"] for a in col.answers(tx)] == ["accepted", "done"]
                assert answer["result"]["confirmed"] == 1
                want = f"limit (power limit {limit} W)" if mode is LIM else mode.value
                assert answer["reason"] == f"1 rig(s) observed in {want}"
                await col.wait_for(
                    partial(rig_doc_in, rig=address, mode=mode, limit=limit), 30, mark
                )
            if LIM in family.modes:
                await check_select_limit(col, address, select, caps)
            # still one final answer each, many ticks later (never a second done)
            for tx in asked:
                assert [a["status"] for a in col.answers(tx)] == ["accepted", "done"], tx
            # no power limit number where the watts are not a range (checked last: by now every
            # discovery config has long been delivered)
            key = address.replace(".", "_")
            assert any(is_number(m, key) for m in col.messages) == family.number
    finally:
        await daemon.close()

    check_audit(settings.state_dir / "audit.jsonl", address, steps, done_at, sent)


async def check_select_limit(
    col: Collector, address: str, select: dict[str, Any], caps: Capabilities
) -> None:
    """Home Assistant's select at ``limit``: the top of the declared watts, observed."""
    mark = len(col.messages)
    payload = render(select["command_template"], "limit")
    top = json.loads(payload)["power_limit_w"]
    assert top == max(caps.power_limit_presets_w or caps.power_limit_range_w or ())
    assert col.client is not None
    await col.client.publish(select["command_topic"], payload, qos=1)
    await col.wait_for(partial(rig_doc_in, rig=address, mode=LIM, limit=top), 60, mark)


async def check_discovery(
    col: Collector, address: str, family: Family, caps: Capabilities
) -> dict[str, Any]:
    """The mode select offers exactly the declared modes; its ``limit`` asks for watts the rig
    takes; the power limit number exists only for a continuous range. Returns the select's
    config."""
    key = address.replace(".", "_")

    def select(m: Msg) -> bool:
        return m.topic.startswith("homeassistant/select/") and m.topic.endswith(
            f"{key}_mode/config"
        )

    config = (await col.wait_for(select, 30)).json()
    assert config["options"] == select_options(family.modes)
    if LIM in family.modes:
        template = config["command_template"]
        watts = json.loads(render(template, "limit"))["power_limit_w"]
        if caps.power_limit_presets_w:
            assert watts in caps.power_limit_presets_w
        else:
            assert caps.power_limit_range_w is not None
            assert caps.power_limit_range_w[0] <= watts <= caps.power_limit_range_w[1]
    if family.number:  # the power limit number, with the declared range
        assert caps.power_limit_range_w is not None
        number = (await col.wait_for(partial(is_number, key=key), 30)).json()
        assert (number["min"], number["max"]) == caps.power_limit_range_w
    return dict(config)


def render(template: str, value: str) -> str:
    """The select's command template for ``value`` ("limit"), as Home Assistant renders it."""
    assert value == "limit"
    chosen = template.replace("{{ value }}", value)
    return chosen.replace('{% if value == "limit" %}', "").replace("{% endif %}", "")


def is_number(m: Msg, key: str) -> bool:
    return m.topic.startswith("homeassistant/number/") and m.topic.endswith(
        f"{key}_power_limit/config"
    )


def check_audit(
    path: Path,
    address: str,
    steps: list[tuple[Mode, int | None]],
    done_at: list[float],
    sent: list[bool],
) -> None:
    """Each step's decision (the operator's pin), its command (sent) and its confirmation, the
    confirmation logged no later than the ``done`` answer (done only once observed)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    mine = [r for r in lines if r.get("rig") == address]
    after = 0.0
    for (mode, limit), at, needs_command in zip(steps, done_at, sent, strict=True):
        setting = {"mode": mode.value, "power_limit_w": limit}

        def matches(r: dict[str, Any], key: str, setting: dict[str, Any] = setting) -> bool:
            doc = r.get(key) or {}
            return all(doc.get(k) == v for k, v in setting.items())

        def first(
            kind: str, key: str, since: float, setting: dict[str, Any] = setting
        ) -> dict[str, Any]:
            found = [
                r
                for r in mine
                if r["kind"] == kind and matches(r, key, setting) and r["ts"] >= since
            ]
            assert found, (kind, setting, since)
            return dict(found[0])

        decision = first("decision", "desired", after)
        assert decision["policy"] == "override", decision  # the operator's pin
        if not needs_command:
            assert not [
                r for r in mine if r["kind"] == "command" and decision["ts"] <= r["ts"] <= at
            ]
            after = at
            continue
        command = first("command", "action", decision["ts"])
        assert command["result"] == "sent", command
        confirmed = first("confirmed", "observed", command["ts"])
        assert confirmed["ts"] <= at, (confirmed, at)
        after = at


@pytest.mark.parametrize(
    ("caps", "options", "top", "number"),
    [
        # presets (VNish): limit asks for the highest preset; no number between presets
        (
            Capabilities(
                frozenset({S, N, LIM}),
                power_limit=True,
                power_limit_range_w=(2140, 2950),
                power_limit_presets_w=(2140, 2580, 2950),
            ),
            ["auto", "sleep", "normal", "limit"],
            2950,
            None,
        ),
        # a range (Whatsminer): limit asks for its top; the number spans it
        (
            Capabilities(
                frozenset({S, L, N, H, LIM}), power_limit=True, power_limit_range_w=(500, 6000)
            ),
            ["auto", "sleep", "low", "normal", "high", "limit"],
            6000,
            (500, 6000),
        ),
        # limit with no watts known (pre-25.07 Braiins OS through pyasic): not offered
        (
            Capabilities(frozenset({S, N, LIM}), power_limit=True),
            ["auto", "sleep", "normal"],
            None,
            None,
        ),
    ],
)
def test_discovery_offers_the_declared_modes_with_the_declared_watts(
    caps: Capabilities, options: list[str], top: int | None, number: tuple[int, int] | None
) -> None:
    identity = Identity("10.0.0.9", Make.VNISH, "S19j Pro", "Vnish 1.2.6", "vnish")
    configs = dict(rig_configs(Topics("rigpilot", "home"), identity, caps, "test"))
    for topic, payload in configs.items():
        assert_valid(topic, payload)
    select = configs["homeassistant/select/rigpilot_home/10_0_0_9_mode/config"]
    assert select["options"] == options
    if top is not None:
        assert json.loads(render(select["command_template"], "limit"))["power_limit_w"] == top
    numbers = [p for t, p in configs.items() if "/number/" in t]
    assert [(p["min"], p["max"]) for p in numbers] == ([number] if number else [])
