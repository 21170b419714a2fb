"""The MQTT control room end to end: a real Mosquitto (TLS, password file, the documented ACL)
started by the test, the daemon in-process, the simulated rigs, and the Mosquitto command-line
clients or aiomqtt on the other side."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from broker import Broker
from conftest import SimFleet
from hass_schema import assert_valid
from mqtt_client import Collector, daemon_settings, start_daemon
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.mqtt import commands as c
from daemon.mqtt.topics import Topics


def sub_process(broker: Broker, user: str, topic: str, count: int) -> subprocess.Popen[str]:
    """mosquitto_sub printing ``count`` messages as "topic payload" lines, then exiting."""
    return subprocess.Popen(
        [
            "mosquitto_sub",
            *broker.client_args(user, v5=False),
            *("-t", topic, "-C", str(count), "-v", "-W", "60"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _render(template: str, value: str) -> str:
    """Home Assistant's rendering of a command template, for the two constructs used."""
    out = template.replace("{{ value }}", value)
    cond = '{% if value == "limit" %}'
    if cond in out:
        head, rest = out.split(cond)
        inner, tail = rest.split("{% endif %}")
        out = head + (inner if value == "limit" else "") + tail
    return out


async def wait_rig(sim: SimFleet, address: str, mode: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await asyncio.to_thread(sim.control.rig, address))["mode"] == mode:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{address} not in {mode} within {timeout} s")


async def test_mosquitto_pub_command_changes_a_rig_and_the_answer_reaches_mosquitto_sub(
    broker: Broker, sim: SimFleet, tmp_path: Path
) -> None:
    rigs = {sim.address("s19jpro"): "row-a", sim.address("m50s"): "row-b"}
    settings = daemon_settings(tmp_path, broker, "pubsub", rigs)
    topics = Topics("rigpilot", "pubsub")
    daemon = await start_daemon(settings)
    try:
        watcher = sub_process(broker, "viewer", topics.response("curtail"), 2)
        await asyncio.sleep(0.5)  # mosquitto_sub subscribed
        target = sim.address("m50s")
        payload = json.dumps({"rig": target, "transaction": "cli-1", "by": "alice"})
        await asyncio.to_thread(broker.pub, "operator", topics.request("curtail"), payload)
        out, err = await asyncio.to_thread(watcher.communicate, timeout=60)
        lines = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines()]
        assert [x["status"] for x in lines] == ["accepted", "done"], (out, err)
        assert all(x["transaction"] == "cli-1" for x in lines)
        await wait_rig(sim, target, "sleep", 5)
        assert (await asyncio.to_thread(sim.control.rig, sim.address("s19jpro")))[
            "mode"
        ] == "normal"
    finally:
        await daemon.close()


async def test_a_client_without_command_rights_cannot_command(
    broker: Broker, sim: SimFleet, tmp_path: Path
) -> None:
    target = sim.address("s21")
    settings = daemon_settings(tmp_path, broker, "acl", {target: ""})
    topics = Topics("rigpilot", "acl")
    daemon = await start_daemon(settings)
    try:
        async with Collector(broker, "operator", [f"{topics.root}/response/#"], "acl-w") as col:
            body = json.dumps({"rig": target, "transaction": "viewer-1"})
            # The broker refuses the viewer's publish (ACL); mosquitto_pub may say so or not.
            await asyncio.to_thread(
                subprocess.run,
                [
                    "mosquitto_pub",
                    *broker.client_args("viewer", v5=False),
                    *("-q", "1", "-t", topics.request("curtail"), "-m", body),
                ],
                capture_output=True,
                timeout=10,
                check=False,
            )
            await asyncio.to_thread(
                broker.pub, "operator", topics.request("status"), '{"transaction": "op-1"}'
            )
            # The broker handled the viewer's publish before the operator's, and the daemon
            # answers every request as it takes it (an accepted first): had viewer-1 reached
            # the daemon, its answer would have come before op-1's.
            await col.final("op-1")
            assert col.answers("viewer-1") == []
            assert (await asyncio.to_thread(sim.control.rig, target))["mode"] == "normal"
            status = col.answers("op-1")[0]["result"]
            assert status["pins"] == []
    finally:
        await daemon.close()


async def test_mqtt5_request_response_with_correlation_data(
    broker: Broker, sim: SimFleet, tmp_path: Path
) -> None:
    target = sim.address("s19xp")
    settings = daemon_settings(tmp_path, broker, "rr", {target: "row-a"})
    topics = Topics("rigpilot", "rr")
    daemon = await start_daemon(settings)
    try:
        reply_to = topics.response_prefix + "console-7"
        async with Collector(
            broker, "operator", [reply_to, topics.response("set")], "rr-op"
        ) as col:
            assert col.client is not None
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = reply_to
            props.CorrelationData = b"req-42"
            body = {"group": "row-a", "mode": "low", "for_s": 600}
            await col.client.publish(
                topics.request("set"), json.dumps(body), qos=1, properties=props
            )
            done = await col.wait_for(
                lambda m: m.topic == reply_to and m.json()["status"] == "done", 30
            )
            assert done.correlation == b"req-42"
            assert [m.json()["status"] for m in col.on(reply_to)] == ["accepted", "done"]
            assert col.on(topics.response("set")) == []  # answered where it was asked
            await wait_rig(sim, target, "low", 5)
            # A response topic outside <root>/response/ is refused, on the default topic.
            bad = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            bad.ResponseTopic = topics.availability
            await col.client.publish(
                topics.request("set"),
                json.dumps({**body, "transaction": "hijack"}),
                qos=1,
                properties=bad,
            )
            refused = await col.final("hijack")
            assert col.on(topics.response("set"))[-1].json() == refused
            assert "response topic" in refused["reason"]
    finally:
        await daemon.close()


@pytest.mark.slow
async def test_broker_killed_and_restarted_loses_and_repeats_no_command(
    sim: SimFleet, tmp_path: Path
) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    a, b, c_rig = sim.address("s19jpro"), sim.address("m30s"), sim.address("m60s")
    settings = daemon_settings(tmp_path / "d", broker, "chaos", {a: "", b: "", c_rig: ""})
    topics = Topics("rigpilot", "chaos")
    daemon = await start_daemon(settings)
    col = Collector(broker, "operator", [f"{topics.root}/#"], "chaos-watch")
    try:
        await col.__aenter__()
        await col.wait_for(lambda m: m.topic == topics.availability and m.payload == b"online")
        await asyncio.to_thread(
            broker.pub,
            "operator",
            topics.request("curtail"),
            json.dumps({"rig": a, "transaction": "A"}),
        )
        assert (await col.final("A"))["status"] == "done"
        # Events (not retained) tell what was decided and sent, and why.
        decided = [m.json() for m in col.on(topics.event("decision")) if m.json()["rig"] == a]
        assert decided[-1]["mode"] == "sleep" and decided[-1]["by"] == "override"
        sent = [m.json() for m in col.on(topics.event("command")) if m.json()["rig"] == a]
        assert sent[-1]["mode"] == "sleep" and sent[-1]["result"] == "sent"
        assert not any(m.retain for m in col.on(topics.event("command")))

        broker.kill()
        await daemon.ticks(2)  # the loop keeps ticking without a broker
        broker.start()
        # Published before the daemon is back: the broker keeps it in the daemon's session.
        await asyncio.to_thread(
            broker.pub,
            "operator",
            topics.request("curtail"),
            json.dumps({"rig": b, "transaction": "B"}),
        )
        mark = len(col.messages)
        await col.wait_for(
            lambda m: m.topic == topics.fleet and m.json()["at"] > time.time() - 2, 60, after=mark
        )
        # A redelivery of A (same id) after the reconnect is recognised and not applied again.
        await asyncio.to_thread(
            broker.pub,
            "operator",
            topics.request("pin"),
            json.dumps({"rig": c_rig, "mode": "low", "for_s": 600, "transaction": "C"}),
        )
        await asyncio.to_thread(
            broker.pub,
            "operator",
            topics.request("curtail"),
            json.dumps({"rig": a, "transaction": "A"}),
        )
        assert (await col.final("B", 60))["status"] == "done"
        assert (await col.final("C"))["status"] == "done"
        await asyncio.to_thread(
            broker.pub, "operator", topics.request("status"), json.dumps({"transaction": "S"})
        )
        status = await col.final("S")
        finals = {
            tx: [
                x["status"]
                for x in col.answers(tx)
                if x["status"] != "accepted" and not x.get("repeated")
            ]
            for tx in "ABC"
        }
        assert finals == {"A": ["done"], "B": ["done"], "C": ["done"]}
        repeats = [x for x in col.answers("A") if x.get("repeated")]
        assert [x["status"] for x in repeats] == ["done"]  # A's redelivery: answer repeated
        pinned = sorted((p["mode"], p["rigs"]) for p in status["result"]["pins"])
        assert pinned == [("low", 1), ("sleep", 1), ("sleep", 1)]
        await wait_rig(sim, b, "sleep", 10)
        await wait_rig(sim, c_rig, "low", 10)
        # Republished after the restart: availability and every rig's retained state.
        after = col.messages[mark:]
        assert any(m.topic == topics.availability and m.payload == b"online" for m in after)
        assert {topics.rig_state(r) for r in (a, b, c_rig)} <= {m.topic for m in after}
    finally:
        code = await daemon.close()
        await col.__aexit__(None, None, None)
        broker.stop()
    assert code == 0


async def test_clean_stop_says_offline_and_a_crash_leaves_the_will(
    broker: Broker, sim: SimFleet, tmp_path: Path
) -> None:
    target = sim.address("m30s+")
    settings = daemon_settings(tmp_path, broker, "life", {target: ""})
    topics = Topics("rigpilot", "life")
    async with Collector(broker, "viewer", [topics.availability], "life-w") as col:
        daemon = await start_daemon(settings)
        await col.wait_for(lambda m: m.payload == b"online")
        assert await daemon.close() == 0
        await col.wait_for(lambda m: m.payload == b"offline", 10)
        # A crash: the daemon process dies without a goodbye; the broker sends the will.
        config = settings.state_dir.parent / "rigpilot.toml"
        proc = subprocess.Popen(  # noqa: ASYNC220 - starting it is instant
            [sys.executable, "-m", "daemon.cli", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        mark = len(col.messages)
        await col.wait_for(lambda m: m.payload == b"online", 60, after=mark)
        proc.kill()
        proc.wait(10)
        await col.wait_for(lambda m: m.payload == b"offline", 15, after=mark)


def hostile_payloads(rng: random.Random, rigs: list[str], n: int) -> list[tuple[str, bytes, str]]:
    """``n`` (command, payload, expected text in the rejection) that must all be refused."""
    junk = [
        b"",
        b"{",
        b"}",
        b"null",
        b"[]",
        b"0",
        b'"x"',
        b"\x00\x01\x02",
        b"\xff" * 50,
        b'{"rig": "' + b"\xc3\x28" + b'"}',
        b"{" * 300,
        b'{"a":' * 100,
        b'{"transaction": ' + b"9" * 400 + b"}",
    ]
    fields = [
        "rig",
        "rigs",
        "group",
        "all",
        "mode",
        "for_s",
        "until",
        "kw",
        "value",
        "input",
        "power_limit_w",
        "bypass_dwell",
        "timeout_s",
        "transaction",
        "expires_at",
        "by",
    ]
    values: list[Any] = [
        None,
        True,
        False,
        0,
        -1,
        1e308,
        -1e308,
        2**70,
        "",
        "x" * 300,
        [],
        {},
        [1, 2],
        {"$gt": ""},
        "sleep",
        "turbo",
        "' OR 1=1 --",
        "../../etc/passwd",
        "\u202e\u0000",
        "🚀" * 10,
        ["10.0.0.1"] * 3,
        3.5,
    ]
    cmds = [*c.COMMANDS, "REBOOT", "exec", "x" * 40]
    out: list[tuple[str, bytes, str]] = []
    while len(out) < n:
        kind = rng.random()
        cmd = rng.choice(cmds)
        if kind < 0.15:
            payload = rng.choice(junk) + bytes(rng.randrange(256) for _ in range(rng.randrange(4)))
        elif kind < 0.25:
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        elif kind < 0.3:
            payload = b'{"rig": "' + b"A" * (c.MAX_PAYLOAD_BYTES + 10) + b'"}'
        else:
            body = {rng.choice(fields): rng.choice(values) for _ in range(rng.randrange(1, 6))}
            if rng.random() < 0.3:
                body[f"zz{rng.randrange(1000)}"] = 1
            if rng.random() < 0.2:
                body["rig"] = f"10.99.{rng.randrange(255)}.{rng.randrange(255)}"
            body["transaction"] = f"fz-{len(out)}"
            payload = json.dumps(body).encode()
        try:
            request = c.parse(cmd, payload, time.time())
        except c.Rejected:
            out.append((cmd, payload, f"fz-{len(out)}"))
            continue
        # Well-formed by chance: keep it only if it names no real rig (it is then refused for
        # the unknown rig, or is harmless, like status); otherwise skip it.
        if isinstance(request, c.StatusCommand):
            continue
        names = [getattr(request, "rig", None), *(getattr(request, "rigs", None) or [])]
        if (
            any(x in rigs for x in names)
            or getattr(request, "all", None)
            or getattr(request, "group", None) is not None
        ):
            continue
        if isinstance(request, c.Targeted):
            out.append((cmd, payload, f"fz-{len(out)}"))
    return out


@pytest.mark.slow
async def test_fuzz_ten_thousand_hostile_payloads(
    broker: Broker, sim: SimFleet, tmp_path: Path
) -> None:
    rigs = [sim.address("s19jpro"), sim.address("m50s")]
    settings = daemon_settings(tmp_path, broker, "fuzz", dict.fromkeys(rigs, "g"))
    topics = Topics("rigpilot", "fuzz")
    cases = hostile_payloads(random.Random(20260226), rigs, 10_000)
    daemon = await start_daemon(settings)
    try:
        async with Collector(broker, "operator", [f"{topics.root}/response/#"], "fuzz-op") as col:
            assert col.client is not None
            ticks = len(daemon.reports)
            # 500 at a time, each batch answered before the next: the broker queues at most
            # 1,000 messages for a subscriber that lags (max_queued_messages) and drops the
            # rest, which a collector starved of CPU on a loaded machine would hit.
            for i in range(0, len(cases), 500):
                await asyncio.gather(
                    *(
                        col.client.publish(topics.request(cmd), payload, qos=1)
                        for cmd, payload, _ in cases[i : i + 500]
                    )
                )
                await col.count(min(i + 500, len(cases)), 120)  # a bound, not a wait
            answers = [m.json() for m in col.messages]
            assert len(answers) == len(cases), f"{len(answers)} answers to {len(cases)} payloads"
            assert all(a["status"] == "rejected" for a in answers), [
                a for a in answers if a["status"] != "rejected"
            ][:3]
            reasons = [a["reason"] for a in answers]
            assert all(r and not r.startswith("internal error") for r in reasons)
            named = sum(
                1
                for r in reasons
                if r.startswith(
                    (
                        "invalid command:",
                        "unknown command",
                        "payload too large",
                        "unknown rig",
                        "expired",
                        "until is",
                        "hashprice",
                        "power_price",
                    )
                )
            )
            assert named == len(reasons), [r for r in reasons if not r.startswith("invalid")][:5]
            # Answers to parseable payloads echo their transaction.
            by_tx = {a["transaction"] for a in answers if a["transaction"]}
            assert len(by_tx) > 3000
            # Never stalled: the loop kept ticking and a good command is still answered.
            assert len(daemon.reports) > ticks
            await col.client.publish(topics.request("status"), b'{"transaction": "alive"}', qos=1)
            await col.final("alive", 10)
    finally:
        assert await daemon.close() == 0


async def test_home_assistant_discovery_is_valid_and_reannounced(
    broker: Broker, sim: SimFleet, tmp_path: Path
) -> None:
    rigs = {sim.address("s19jpro"): "", sim.address("m50s"): "", sim.address("m60s-v3"): ""}
    settings = daemon_settings(tmp_path, broker, "home", rigs, discovery=True)
    topics = Topics("rigpilot", "home")
    daemon = await start_daemon(settings)
    try:
        async with Collector(
            broker, "homeassistant", ["homeassistant/#", f"{topics.root}/#"], "ha"
        ) as col:
            await col.wait_for(lambda m: m.topic.endswith("power_limit/config"), 30)
            await asyncio.sleep(1.0)
            configs = {
                m.topic: m.json()
                for m in col.messages
                if m.topic.startswith("homeassistant/") and m.topic.endswith("/config")
            }
            for topic, payload in configs.items():
                assert_valid(topic, payload)
            components = {t.split("/")[1] for t in configs}
            assert components == {"sensor", "switch", "select", "number"}
            per_rig = [t for t in configs if "/switch/" in t]
            assert len(per_rig) == 3
            # Only rigs with a power limit get a number entity (M50S/M60S, not stock S19j Pro).
            assert sum("/number/" in t for t in configs) == 2
            # A rig with no limit shows no value (Home Assistant's "None" resets the number),
            # never the range's top as if the rig were held to it.
            for number in (p for t, p in configs.items() if "/number/" in t):
                assert number["payload_reset"] == "None"
                assert "else 'None'" in number["value_template"]
                assert " or " not in number["value_template"]
            # Home Assistant restarts: everything is announced again.
            mark = len(col.messages)
            assert col.client is not None
            await col.client.publish("homeassistant/status", b"online", qos=1)
            await col.wait_for(lambda m: m.topic in configs, 10, after=mark)
            deadline = time.monotonic() + 10  # the burst may still be arriving (a loaded host)
            while time.monotonic() < deadline:
                again = {m.topic for m in col.messages[mark:] if m.topic in configs}
                if again == set(configs):
                    break
                await asyncio.sleep(0.1)
            assert again == set(configs)
            # The mode select offers every mode the rig can be put in: limit on the
            # Whatsminers (a power limit on top of the power mode), not on the stock S19j Pro.
            options = {
                json.loads(_render(p["command_template"], "sleep"))["rig"]: p
                for t, p in configs.items()
                if "/select/" in t and t.endswith("_mode/config")
            }
            assert options[sim.address("s19jpro")]["options"] == ["auto", "sleep", "low", "normal"]
            assert options[sim.address("m50s")]["options"][-1] == "limit"
            assert options[sim.address("m60s-v3")]["options"] == [
                "auto",
                "sleep",
                "normal",
                "limit",
            ]
            as_limit = _render(options[sim.address("m50s")]["command_template"], "limit")
            assert c.SetCommand.model_validate_json(as_limit).power_limit_w == 6000
            # The mode select commands through request/set with its template.
            select = next(p for t, p in configs.items() if "/select/" in t)
            rig = json.loads(select["command_template"].replace("{{ value }}", "sleep"))["rig"]
            payload = select["command_template"].replace("{{ value }}", "sleep")
            await col.client.publish(select["command_topic"], payload.encode(), qos=1)
            await wait_rig(sim, rig, "sleep", 15)
    finally:
        await daemon.close()


async def test_an_answer_cut_off_before_its_puback_is_sent_again_marked_repeated(
    tmp_path: Path,
) -> None:
    # The broker is frozen (SIGSTOP) while the bridge publishes an answer, and the publish is
    # cancelled as a stopping daemon cancels it; the broker then wakes and delivers it. The
    # next flush must not send it as a second, unmarked final answer.
    import os
    import signal
    from typing import cast

    from daemon.mqtt.answers import Answer
    from daemon.mqtt.bridge import Bridge, resolve_password, tls_context
    from daemon.mqtt.desk import CommandDesk
    from daemon.operator_state import Envelope

    broker = Broker(tmp_path / "broker")
    broker.start()
    settings = daemon_settings(tmp_path / "d", broker, "cut", {})
    topics = Topics("rigpilot", "cut")
    # flush() reaches the desk only for answers still to be stored; these are stored already.
    bridge = Bridge(settings.mqtt, topics, cast(CommandDesk, None))
    col = Collector(broker, "operator", [f"{topics.root}/response/#"], "cut-watch")
    client = bridge._client_for(resolve_password(settings.mqtt), tls_context(settings.mqtt))
    try:
        await col.__aenter__()
        async with client:
            env = Envelope("status", b"{}", time.time())
            body = {"transaction": "T", "command": "status", "status": "done", "reason": ""}
            bridge._answers.append(bridge._out(Answer(env, body)))
            assert broker.proc is not None
            os.kill(broker.proc.pid, signal.SIGSTOP)
            try:
                flush = asyncio.create_task(bridge.flush(client))
                await asyncio.sleep(1.0)  # written to the socket, no PUBACK
                assert not flush.done()
                flush.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await flush
            finally:
                os.kill(broker.proc.pid, signal.SIGCONT)
            await bridge.flush(client)
            await col.wait_for(lambda m: m.json().get("repeated") is True, 15)
        got = col.answers("T")
        assert [a.get("repeated", False) for a in got] == [False, True], got
        assert {a["status"] for a in got} == {"done"}
    finally:
        await col.__aexit__(None, None, None)
        broker.stop()


@pytest.mark.parametrize("key", ["m30s+", "m60s-v3"])
async def test_a_whatsminer_power_limit_is_done_once_the_rig_shows_it(
    broker: Broker, sim: SimFleet, tmp_path: Path, key: str
) -> None:
    """On a Whatsminer a power limit is a setting on top of the power mode: ``limit 2800 W`` is
    done when the rig reports that limit, whatever its power mode (API v2 and v3)."""
    target = sim.address(key)
    site = "lim-" + key.replace("+", "p")
    settings = daemon_settings(tmp_path, broker, site, {target: "row-w"})
    topics = Topics("rigpilot", site)
    daemon = await start_daemon(settings)
    try:
        async with Collector(broker, "operator", [topics.response("set")], site) as col:
            assert col.client is not None
            body = {
                "rig": target,
                "mode": "limit",
                "power_limit_w": 2800,
                "for_s": 600,
                "transaction": "lim-1",
            }
            await col.client.publish(topics.request("set"), json.dumps(body), qos=1)
            shown_at = None
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                if shown_at is None:
                    rig = await asyncio.to_thread(sim.control.rig, target)
                    if rig["power_limit_w"] == 2800:
                        shown_at = time.monotonic()
                answers = col.answers("lim-1")
                if answers and answers[-1]["status"] != "accepted":
                    break
                await asyncio.sleep(0.1)
            answers = col.answers("lim-1")
            assert [a["status"] for a in answers] == ["accepted", "done"], answers
            assert shown_at is not None
            # one observation (the daemon's tick is 1 s) after the rig showed the limit
            assert time.monotonic() - shown_at < 4.0
            assert "power limit 2800 W" in answers[-1]["reason"]
            rig = await asyncio.to_thread(sim.control.rig, target)
            assert rig["power_limit_w"] == 2800 and rig["mining"]
    finally:
        await daemon.close()


def pub_retained(broker: Broker, user: str, topic: str, payload: str) -> None:
    """mosquitto_pub -r: the stray retain flag a request must never be applied with."""
    subprocess.run(
        [
            "mosquitto_pub",
            *broker.client_args(user, v5=False),
            *("-q", "1", "-r", "-t", topic, "-m", payload),
        ],
        check=True,
        capture_output=True,
        timeout=10,
    )


@pytest.mark.slow
async def test_a_retained_request_is_rejected_cleared_and_not_applied_after_a_restart(
    broker: Broker, sim: SimFleet, tmp_path: Path
) -> None:
    target = sim.address("s21pro")
    settings = daemon_settings(tmp_path, broker, "retained", {target: ""})
    topics = Topics("rigpilot", "retained")
    # Published retained while no daemon runs: it is what a restart would find.
    body = json.dumps({"rig": target, "transaction": "stray"})
    await asyncio.to_thread(pub_retained, broker, "operator", topics.request("curtail"), body)
    async with Collector(broker, "operator", [f"{topics.root}/response/#"], "ret-op") as col:
        for round_ in range(2):  # the first start rejects and clears it; a restart sees nothing
            daemon = await start_daemon(settings)
            try:
                if round_ == 0:
                    answer = await col.final("stray")
                    assert answer["status"] == "rejected", answer
                    assert "retain flag" in answer["reason"], answer["reason"]
                # Retained while the daemon runs: refused as well (the flag is kept for it).
                live = json.dumps({"rig": target, "transaction": f"live-{round_}"})
                await asyncio.to_thread(
                    pub_retained, broker, "operator", topics.request("curtail"), live
                )
                assert (await col.final(f"live-{round_}"))["status"] == "rejected"
                await daemon.ticks(2)  # nothing pinned: the rig keeps hashing
                assert daemon.reports[-1].desired[target].mode.value == "normal"
                assert (await asyncio.to_thread(sim.control.rig, target))["mode"] == "normal"
            finally:
                assert await daemon.close() == 0
        stray = [a for a in col.answers("stray") if not a.get("repeated")]
        assert [a["status"] for a in stray] == ["rejected"]  # once: the restart found nothing
        assert [a["status"] for a in col.answers("live-1")] == ["rejected"]
    # The broker no longer holds a retained request: a new subscriber gets nothing.
    async with Collector(broker, "viewer", [topics.request("curtail")], "ret-view") as view:
        await asyncio.sleep(1.0)
        assert [m for m in view.messages if m.payload] == []


@pytest.mark.slow
async def test_decision_events_fire_only_on_changes_and_fleet_state_names_price_sources(
    broker: Broker, sim: SimFleet, tmp_path: Path
) -> None:
    rigs = [sim.address("s19jpro"), sim.address("m50s"), sim.address("m30s")]
    settings = daemon_settings(tmp_path, broker, "events", dict.fromkeys(rigs, "g"))
    topics = Topics("rigpilot", "events")
    async with Collector(broker, "operator", [f"{topics.root}/#"], "events-w") as col:
        daemon = await start_daemon(settings)
        try:
            await daemon.ticks(4)  # with a constant market
            await asyncio.to_thread(
                broker.pub,
                "operator",
                topics.request("curtail"),
                json.dumps({"rig": rigs[0], "transaction": "ev-1"}),
            )
            assert (await col.final("ev-1"))["status"] == "done"
            await asyncio.to_thread(
                broker.pub,
                "operator",
                topics.request("market_set"),
                json.dumps({"input": "hashprice", "value": 70.0, "transaction": "ev-2"}),
            )
            assert (await col.final("ev-2"))["status"] == "done"
            mark = len(col.messages)
            await col.wait_for(lambda m: m.topic == topics.fleet, 10, after=mark)
            await daemon.ticks(3)
        finally:
            assert await daemon.close() == 0
    ticks = len(daemon.reports)
    decisions = [m.json() for m in col.on(topics.event("decision"))]
    by_rig: dict[str, list[tuple[Any, ...]]] = {}
    for d in decisions:
        by_rig.setdefault(d["rig"], []).append(
            (d["mode"], d["power_limit_w"], d["by"], d["held_back"])
        )
    assert set(by_rig) == set(rigs)
    for rig, seq in by_rig.items():
        # Each event is a change: never the rig's previous mode, limit, by and held-back again.
        assert all(a != b for a, b in itertools.pairwise(seq)), (rig, seq)
    assert by_rig[rigs[0]][-1][:3] == ("sleep", None, "override")
    assert len(decisions) < ticks, (len(decisions), ticks)  # not one per rig per tick
    fleet = [m.json() for m in col.on(topics.fleet)]
    before = [f for f in fleet if f["hashprice_source"] != "operator"]
    assert before and before[0]["hashprice_source"] and before[0]["power_price_source"]
    assert before[0]["hashprice_age_s"] is not None and before[0]["hashprice_age_s"] >= 0
    after = [m.json() for m in col.messages[mark:] if m.topic == topics.fleet]
    assert after[-1]["hashprice_source"] == "operator"
    assert after[-1]["hashprice_usd_per_ph_day"] == 70.0
    assert after[-1]["hashprice_age_s"] < 30
    assert after[-1]["would_curtail"] is None and after[-1]["curtailed"] >= 1


def _channel_schemas(doc: dict[str, Any], base: str, site: str) -> list[tuple[Any, Any]]:
    """(compiled topic pattern, payload schema) for every channel the daemon publishes on."""
    import re

    out = []
    for name, channel in doc["channels"].items():
        if name.startswith("request_"):
            continue  # what clients send (the fuzz test covers those)
        address = channel["address"].replace("{base_topic}", base).replace("{site}", site)
        pattern = re.compile(re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(address)) + "$")
        [message] = channel["messages"].values()
        ref = message["$ref"].removeprefix("#/").split("/")
        node = doc
        for part in ref:
            node = node[part]
        out.append((pattern, node["payload"]))
    return out


@pytest.mark.slow
async def test_every_published_message_validates_against_the_generated_asyncapi(
    broker: Broker, sim: SimFleet, tmp_path: Path
) -> None:
    from schema_check import problems

    from daemon.mqtt.asyncapi import document

    rigs = {sim.address("s19jpro"): "row-a", sim.address("m50s"): "row-b"}
    stock, limited = list(rigs)
    settings = daemon_settings(tmp_path, broker, "contract", rigs)
    topics = Topics("rigpilot", "contract")
    doc = document()
    channels = _channel_schemas(doc, "rigpilot", "contract")
    async with Collector(broker, "operator", [f"{topics.root}/#"], "contract-w") as col:
        daemon = await start_daemon(settings)
        try:

            async def ask(command: str, body: dict[str, Any]) -> dict[str, Any]:
                """The final answer to this request (not an earlier one with its id)."""
                mark = len(col.messages)
                payload = json.dumps(body)
                await asyncio.to_thread(broker.pub, "operator", topics.request(command), payload)

                def final(m: Any) -> bool:
                    if "/response/" not in m.topic:
                        return False
                    a = m.json()
                    return bool(
                        a["transaction"] == body["transaction"] and a["status"] != "accepted"
                    )

                return dict((await col.wait_for(final, 60, after=mark)).json())

            assert (await ask("curtail", {"rig": stock, "transaction": "k1"}))["status"] == "done"
            low = {"rig": limited, "mode": "low", "transaction": "k2"}
            assert (await ask("set", low))["status"] == "done"
            pin = {"group": "row-a", "mode": "low", "for_s": 600, "transaction": "k3"}
            assert (await ask("pin", pin))["status"] == "done"
            assert (await ask("pin", pin))["repeated"] is True
            assert (await ask("pin", {**pin, "mode": "sleep"}))["status"] == "rejected"
            market = {"input": "power_price", "value": 0.04, "transaction": "k4"}
            assert (await ask("market_set", market))["status"] == "done"
            target = {"kw": 50, "for_s": 600, "transaction": "k5"}
            assert (await ask("site_target", target))["status"] in ("done", "failed")
            assert (await ask("status", {"rigs": True, "transaction": "k6"}))["status"] == "done"
            assert (await ask("resume", {"all": 1, "transaction": "k7"}))["status"] == "rejected"
            assert (await ask("resume", {"all": True, "transaction": "k8"}))["status"] == "done"
            await daemon.ticks(2)
        finally:
            assert await daemon.close() == 0
        # the last thing a clean stop publishes
        await col.wait_for(lambda m: m.topic == topics.availability and m.payload == b"offline")
    seen: dict[str, int] = {}
    bad: list[str] = []
    for m in col.messages:
        if "/request/" in m.topic:
            continue
        schema = next((s for p, s in channels if p.match(m.topic)), None)
        assert schema is not None, f"{m.topic}: no channel in the document"
        value = m.payload.decode() if "/bridge/state" in m.topic else m.json()
        for problem in problems(value, schema, doc):
            bad.append(f"{m.topic}: {problem}")
        kind = m.topic.split("/")[2] + "/" + m.topic.split("/")[-1]
        seen[kind] = seen.get(kind, 0) + 1
    assert bad == [], bad[:10]
    # The scenario published on every channel the daemon has (fault events aside: no rig
    # stopped answering).
    kinds = {k.split("/")[0] for k in seen}
    assert {"bridge", "fleet", "rig", "event", "response"} <= kinds, seen
    assert {"event/decision", "event/command", "response/set", "response/pin"} <= set(seen)


async def test_events_that_overflow_the_queue_are_counted_logged_once_and_the_rest_delivered(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the broker does not take events, the oldest beyond the queue's bound are dropped:
    counted (the metric), logged once when it starts and once when events flow again; the ones
    kept reach the broker in order."""
    from typing import cast

    from structlog.testing import capture_logs

    from daemon.mqtt import bridge as bridge_module
    from daemon.mqtt.bridge import Bridge, resolve_password, tls_context
    from daemon.mqtt.desk import CommandDesk

    monkeypatch.setattr(bridge_module, "EVENT_QUEUE_MAX", 50)  # the bound, not the behaviour
    settings = daemon_settings(tmp_path / "d", broker, "drop", {})
    topics = Topics("rigpilot", "drop")
    bridge = Bridge(settings.mqtt, topics, cast(CommandDesk, None))
    with capture_logs() as logs:
        for n in range(57):  # no connection yet: they wait
            bridge._event("fault", {"n": n})
        assert bridge.events_dropped == 7
        async with Collector(broker, "operator", [f"{topics.root}/event/#"], "drop-watch") as col:
            client = bridge._client_for(resolve_password(settings.mqtt), tls_context(settings.mqtt))
            async with client:
                await bridge.flush(client)
                await col.wait_for(lambda m: m.json().get("n") == 56, 15)
            seen = [m.json()["n"] for m in col.messages]
        bridge._event("fault", {"n": 57})  # flowing again: not logged
    assert seen == list(range(7, 57))  # the oldest seven went, the rest in order
    events = [e["event"] for e in logs if e["event"].startswith("mqtt.events_")]
    assert events == ["mqtt.events_dropped", "mqtt.events_flowing"]
    assert next(e for e in logs if e["event"] == "mqtt.events_flowing")["dropped"] == 7
