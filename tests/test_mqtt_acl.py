"""The documented ACL (docs/mosquitto/acl) against the real Mosquitto: each site's daemon,
user named like its site, reads and writes only its own site; the operator, viewer and Home
Assistant users keep exactly their documented rights, and get nothing from the site patterns.

Every probe is a real publish through the broker. A write is allowed when a reader with the
right to read it receives it; a read is allowed when the reader receives what an allowed
writer published. A refused publish is dropped by the broker without a word, so the refusals
are checked once every allowed message has arrived (the broker queues a message to its
subscribers before it acknowledges the publish).
"""

from __future__ import annotations

import asyncio
import contextlib

from broker import Broker
from mqtt_client import Collector

A, B = "north", "south"
CONFIG = "homeassistant/sensor/rigpilot_{}/hashrate/config"

# (user, topic, allowed): each user's writes.
WRITES = [
    # A site's daemon: its own tree (state, answers, info, clearing a retained request) and its
    # own discovery configs; nothing of another site's, nor Home Assistant's status.
    (A, f"rigpilot/{A}/fleet/state", True),
    (A, f"rigpilot/{A}/rig/10.0.0.1/state", True),
    (A, f"rigpilot/{A}/response/set", True),
    (A, f"rigpilot/{A}/bridge/info", True),
    (A, f"rigpilot/{A}/request/curtail", True),
    (A, CONFIG.format(A), True),
    (A, f"rigpilot/{B}/fleet/state", False),
    (A, f"rigpilot/{B}/rig/10.0.0.1/state", False),
    (A, f"rigpilot/{B}/response/set", False),
    (A, f"rigpilot/{B}/bridge/info", False),
    (A, f"rigpilot/{B}/bridge/state", False),
    (A, f"rigpilot/{B}/request/curtail", False),
    (A, CONFIG.format(B), False),
    (A, "homeassistant/status", False),
    (B, f"rigpilot/{B}/fleet/state", True),
    (B, f"rigpilot/{A}/request/curtail", False),
]

# The users that are not daemons: exactly their documented writes, and none of what the site
# patterns would give a user of their name.
HUMAN_WRITES = [
    ("operator", f"rigpilot/{A}/request/curtail", True),
    ("operator", f"rigpilot/{B}/request/set", True),
    ("operator", f"rigpilot/{A}/fleet/state", False),
    ("operator", "rigpilot/operator/fleet/state", False),
    ("operator", CONFIG.format("operator"), False),
    ("operator", "homeassistant/status", False),
    ("viewer", f"rigpilot/{A}/request/curtail", False),
    ("viewer", "rigpilot/viewer/fleet/state", False),
    ("viewer", "rigpilot/viewer/request/curtail", False),
    ("viewer", CONFIG.format("viewer"), False),
    ("homeassistant", f"rigpilot/{A}/request/set", True),
    ("homeassistant", "homeassistant/status", True),
    ("homeassistant", f"rigpilot/{A}/request/power_cycle", True),  # its power-cycle button
    ("homeassistant", f"rigpilot/{A}/request/curtail", False),
    ("homeassistant", f"rigpilot/{A}/request/pin", False),
    ("homeassistant", f"rigpilot/{A}/fleet/state", False),
    ("homeassistant", "rigpilot/homeassistant/fleet/state", False),
    ("homeassistant", CONFIG.format("homeassistant"), False),
]

# (reader, topic, writer, allowed): each user's reads.
READS = [
    # A site's daemon reads its requests, its site's bridge/+ and Home Assistant's birth
    # message; nothing of another site's (its requests above all).
    (A, f"rigpilot/{A}/request/curtail", "operator", True),
    (A, f"rigpilot/{A}/bridge/info", A, True),
    (A, "homeassistant/status", "homeassistant", True),
    (A, f"rigpilot/{B}/request/curtail", "operator", False),
    (A, f"rigpilot/{B}/request/set", "homeassistant", False),
    (A, f"rigpilot/{B}/bridge/info", B, False),
    (A, f"rigpilot/{B}/fleet/state", B, False),
]

HUMAN_READS = [
    ("operator", f"rigpilot/{B}/fleet/state", B, True),
    ("operator", f"rigpilot/{B}/request/curtail", "operator", True),
    ("operator", "homeassistant/status", "homeassistant", False),
    ("operator", CONFIG.format(A), A, False),
    ("viewer", f"rigpilot/{B}/request/curtail", "operator", True),
    ("viewer", f"rigpilot/{A}/bridge/info", A, True),
    ("viewer", "homeassistant/status", "homeassistant", False),
    ("viewer", CONFIG.format(A), A, False),
    ("homeassistant", f"rigpilot/{B}/fleet/state", B, True),
    ("homeassistant", CONFIG.format(A), A, True),
    ("homeassistant", "homeassistant/status", "homeassistant", True),
]

ARRIVE_S = 15.0
GRACE_S = 1.0


async def _publish_all(broker: Broker, probes: list[tuple[str, str, str]], tag: str) -> None:
    """``(user, topic, payload)``: each user publishes its probes, QoS 1 (acknowledged)."""
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for user in dict.fromkeys(u for u, _, _ in probes):
            col = await stack.enter_async_context(Collector(broker, user, [], f"{tag}-w-{user}"))
            assert col.client is not None
            clients[user] = col.client
        for user, topic, payload in probes:
            await clients[user].publish(topic, payload, qos=1)


async def _settle(collectors: list[Collector], expect: set[str]) -> set[str]:
    """The payloads received, once every payload in ``expect`` has arrived and a grace passed."""

    def got() -> set[str]:
        return {m.payload.decode() for c in collectors for m in c.messages}

    deadline = asyncio.get_running_loop().time() + ARRIVE_S
    while not expect <= got() and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await asyncio.sleep(GRACE_S)
    return got()


async def _check_writes(broker: Broker, table: list[tuple[str, str, bool]], tag: str) -> None:
    probes = [(user, topic, f"{tag} {user} {topic}") for user, topic, _ in table]
    # The observers: the operator reads rigpilot/#, Home Assistant homeassistant/#.
    async with (
        Collector(broker, "operator", ["rigpilot/#"], f"{tag}-obs-op") as op,
        Collector(broker, "homeassistant", ["homeassistant/#"], f"{tag}-obs-ha") as ha,
    ):
        await _publish_all(broker, probes, tag)
        allowed = {p for (_, _, p), (_, _, ok) in zip(probes, table, strict=True) if ok}
        got = await _settle([op, ha], allowed)
    wrong = [
        (user, topic, "allowed" if ok else "refused")
        for (user, topic, ok), (_, _, p) in zip(table, probes, strict=True)
        if (p in got) != ok
    ]
    assert not wrong, f"writes not as documented (expected): {wrong}"


async def _check_reads(broker: Broker, table: list[tuple[str, str, str, bool]], tag: str) -> None:
    readers = dict.fromkeys(r for r, _, _, _ in table)
    async with contextlib.AsyncExitStack() as stack:
        cols = {}
        for reader in readers:
            topics = [t for r, t, _, _ in table if r == reader]
            cols[reader] = await stack.enter_async_context(
                Collector(broker, reader, topics, f"{tag}-r-{reader}")
            )
        probes = [(writer, topic, f"{tag} {topic}") for _, topic, writer, _ in table]
        await _publish_all(broker, list(dict.fromkeys(probes)), tag)
        expect = {f"{tag} {t}" for _, t, _, ok in table if ok}
        await _settle(list(cols.values()), expect)
    wrong = [
        (reader, topic, "allowed" if ok else "refused")
        for reader, topic, _, ok in table
        if any(m.topic == topic for m in cols[reader].messages) != ok
    ]
    assert not wrong, f"reads not as documented (expected): {wrong}"


async def test_a_sites_daemon_writes_only_its_own_site(broker: Broker) -> None:
    broker.add_site(A)
    broker.add_site(B)
    await _check_writes(broker, WRITES, "dw")


async def test_a_sites_daemon_reads_its_requests_and_no_other_sites(broker: Broker) -> None:
    broker.add_site(A)
    broker.add_site(B)
    await _check_reads(broker, READS, "dr")


async def test_the_users_that_are_not_daemons_keep_exactly_their_rights(broker: Broker) -> None:
    """The site patterns apply to every user: a user named ``operator`` would otherwise write
    ``rigpilot/operator/#`` and a read-only viewer ``rigpilot/viewer/#``."""
    broker.add_site(A)
    broker.add_site(B)
    await _check_writes(broker, HUMAN_WRITES, "hw")
    await _check_reads(broker, HUMAN_READS, "hr")
