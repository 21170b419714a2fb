"""The command desk against a real control loop over the simulated fleet (no broker here; the
broker end to end is test_mqtt_bridge.py): validation, pins, waits, redeliveries, expiry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import SimFleet
from hypothesis import given, settings
from hypothesis import strategies as st
from test_control_loop import Harness, harness

from daemon.mqtt import commands as c
from daemon.mqtt.answers import Answer
from daemon.mqtt.desk import CommandDesk
from daemon.operator_state import Envelope, OperatorState
from policies.values import Mode, QuoteKind


def desk_for(h: Harness, addresses: list[str]) -> CommandDesk:
    groups = {a: ("row-a" if i % 2 == 0 else "row-b") for i, a in enumerate(addresses)}
    return CommandDesk(
        loop=h.loop,
        site="site1",
        groups=groups,
        configured=frozenset(addresses),
        default_timeout_s=120.0,
        clock=h.clock,
    )


def ask(
    desk: CommandDesk, command: str, body: dict[str, Any] | bytes, corr: bytes | None = None
) -> list[Answer]:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return desk.handle(Envelope(command, payload, desk.clock(), None, corr))


def only(answers: list[Answer]) -> dict[str, Any]:
    assert len(answers) == 1, answers
    return answers[0].body


@pytest.fixture
async def setup(sim: SimFleet, tmp_path: Path) -> tuple[Harness, CommandDesk, list[str]]:
    h, addresses = await harness(sim, tmp_path, dry_run=False)
    return h, desk_for(h, addresses), addresses


async def test_curtail_is_accepted_then_done_once_observed_asleep(
    setup: tuple[Harness, CommandDesk, list[str]],
) -> None:
    h, desk, addresses = setup
    rig = addresses[1]
    body = only(ask(desk, "curtail", {"rig": rig, "transaction": "t-1", "by": "alice"}))
    assert body["status"] == "accepted" and body["transaction"] == "t-1"
    assert body["result"]["rigs"] == 1
    assert [o.mode for o in h.loop.operator.overrides()] == [Mode.SLEEP]
    finals: list[dict[str, Any]] = []
    for _ in range(8):
        report = await h.tick(hashprice=80.0)  # every rig pays: only the pin can sleep it
        finals += [a.body for a in desk.after_tick(report)]
        if finals:
            break
    assert len(finals) == 1 and finals[0]["status"] == "done", finals
    assert finals[0]["transaction"] == "t-1"
    assert report.desired[rig].mode is Mode.SLEEP and report.desired[rig].decided_by == "override"
    assert all(report.desired[a].mode is not Mode.SLEEP for a in addresses if a != rig)
    for _ in range(3):  # settled: never answered again
        assert desk.after_tick(await h.tick(hashprice=80.0)) == []


async def test_redelivery_by_transaction_or_correlation_is_not_applied_twice(
    setup: tuple[Harness, CommandDesk, list[str]],
) -> None:
    h, desk, addresses = setup
    first = only(
        ask(desk, "pin", {"rig": addresses[0], "mode": "sleep", "for_s": 600, "transaction": "x"})
    )
    assert first["status"] == "done"
    # Another pin in between: the redelivered first one must not undo it.
    assert (
        only(
            ask(
                desk,
                "pin",
                {"rig": addresses[0], "mode": "normal", "for_s": 600, "transaction": "y"},
            )
        )["status"]
        == "done"
    )
    # The redelivery is not applied; its final answer is sent again, marked as a repeat (the
    # first may have been lost with a broker).
    again = only(
        ask(desk, "pin", {"rig": addresses[0], "mode": "sleep", "for_s": 600, "transaction": "x"})
    )
    assert again == {**first, "repeated": True}
    assert [o.mode for o in h.loop.operator.overrides()] == [Mode.NORMAL]
    # MQTT 5 clients without a transaction: the correlation data is the id.
    corr = b"\x01\x02corr"
    status = only(ask(desk, "status", {}, corr))
    assert status["status"] == "done"
    assert only(ask(desk, "status", {}, corr))["repeated"] is True
    # A rejected request is remembered too: its redelivery gets the same rejection, repeated.
    bad = {"rig": "nope", "mode": "sleep", "for_s": 1, "transaction": "z"}
    rejected = only(ask(desk, "pin", bad))
    assert rejected["status"] == "rejected"
    assert only(ask(desk, "pin", bad)) == {**rejected, "repeated": True}
    # Still in progress: a redelivery gets nothing now; the final answer comes once.
    curtail = {"rig": addresses[1], "transaction": "w"}
    assert only(ask(desk, "curtail", curtail))["status"] == "accepted"
    assert ask(desk, "curtail", curtail) == []


@pytest.mark.parametrize(
    ("command", "body", "expect"),
    [
        ("curtail", {"rig": "10.9.9.9"}, "unknown rig(s): 10.9.9.9"),
        ("curtail", {"group": "row-z"}, "unknown group 'row-z' (groups: row-a, row-b)"),
        ("curtail", {}, "exactly one of rig, rigs, group or all"),
        ("curtail", {"rig": "{rig}", "all": True}, "(got rig, all)"),
        ("set", {"rig": "{rig}", "mode": "turbo"}, "mode: Input should be"),
        ("set", {"rig": "{rig}", "mode": "limit"}, "mode 'limit' needs power_limit_w"),
        ("set", {"rig": "{rig}", "mode": "sleep", "colour": "red"}, "colour: unknown field"),
        ("pin", {"rig": "{rig}", "mode": "sleep"}, "exactly one of until (POSIX seconds) or for_s"),
        ("pin", {"rig": "{rig}", "mode": "sleep", "until": 5}, "until is in the past"),
        (
            "set",
            {"rig": "{rig}", "mode": "sleep", "for_s": "60"},
            "for_s: Input should be a valid number",
        ),
        (
            "set",
            {"rig": "{rig}", "mode": "sleep", "bypass_dwell": 1},
            "bypass_dwell: Input should be a valid boolean",
        ),
        ("market_set", {"input": "hashprice", "value": 45000}, "hashprice"),
        ("market_set", {"input": "power_price", "value": 99}, "implausible power price"),
        (
            "market_set",
            {"input": "gold", "value": 1},
            "input: Input should be 'hashprice' or 'power_price'",
        ),
        ("site_target", {"kw": -5, "for_s": 60}, "kw: Input should be greater than 0"),
        ("site_target", {"kw": 5}, "exactly one of until (POSIX seconds) or for_s"),
        ("unpin", {"pin": "abc"}, "unknown pin 'abc'"),
        ("reboot", {}, "unknown command 'reboot'"),
        ("status", {"expires_at": 1000}, "expired"),
        # Numbers are not booleans, and "all" acts on every rig: only true will do.
        ("curtail", {"all": 1}, "all: Input should be a valid boolean"),
        ("curtail", {"all": 1.0}, "all: Input should be a valid boolean"),
        ("resume", {"all": 1}, "all: Input should be a valid boolean"),
        ("unpin", {"all": 1}, "all: Input should be a valid boolean"),
        ("unpin", {"all": 1.0}, "all: Input should be a valid boolean"),
        ("set", {"all": 1, "mode": "sleep"}, "all: Input should be a valid boolean"),
        ("retry", {"all": "true"}, "all: Input should be a valid boolean"),
        ("curtail", {"all": False}, "all: Input should be true"),
    ],
)
async def test_bad_commands_are_rejected_naming_the_problem(
    setup: tuple[Harness, CommandDesk, list[str]], command: str, body: dict[str, Any], expect: str
) -> None:
    h, desk, addresses = setup
    body = {k: (addresses[0] if v == "{rig}" else v) for k, v in body.items()}
    answer = only(ask(desk, command, {**body, "transaction": "bad-1"}))
    assert answer["status"] == "rejected"
    assert answer["transaction"] == "bad-1"
    assert expect in answer["reason"], answer["reason"]
    operator = h.loop.operator
    assert operator.overrides() == [] and operator.site_target is None and not operator.prices


@pytest.mark.parametrize(
    ("payload", "expect"),
    [
        (b"{not json", "Invalid JSON"),
        (b"[1, 2]", "Input should be an object"),
        (b'"sleep"', "Input should be an object"),
        (b"\xff\xfe\x00", "payload is not UTF-8 text (byte 0xff at offset 0)"),
        (b'{"rig": "\xc3\x28"}', "payload is not UTF-8 text (byte 0xc3 at offset 9)"),
        (b"", "empty payload (a command is a JSON object; one without arguments is {})"),
        (b" \r\n", "empty payload"),
        (b"[" * 5000 + b"]" * 5000, "recursion limit"),
        (b'{"rig": "a", "x": ' + b"1" * (c.MAX_PAYLOAD_BYTES) + b"}", "payload too large"),
        (b'{"rig": NaN}', "rig: Input should be a valid string"),
        (b'{"rig": "a", "for_s": Infinity}', "for_s: Input should be a finite number"),
    ],
)
async def test_malformed_payloads_are_rejected(
    setup: tuple[Harness, CommandDesk, list[str]], payload: bytes, expect: str
) -> None:
    _, desk, _ = setup
    answer = only(ask(desk, "curtail", payload))
    assert answer["status"] == "rejected" and expect in answer["reason"], answer["reason"]


async def test_a_mode_the_rig_cannot_do_is_rejected_naming_the_rig(
    setup: tuple[Harness, CommandDesk, list[str]], sim: SimFleet
) -> None:
    h, desk, _ = setup
    stock = sim.address("s19jpro")  # stock Antminer: sleep, low, normal; no power limit
    answer = only(ask(desk, "set", {"rig": stock, "mode": "limit", "power_limit_w": 2000}))
    assert answer["status"] == "rejected"
    assert stock in answer["reason"] and "cannot do" in answer["reason"]
    assert h.loop.operator.overrides() == []


async def test_newest_pin_wins_and_resume_hands_back_to_the_policies(
    setup: tuple[Harness, CommandDesk, list[str]],
) -> None:
    h, desk, addresses = setup
    row_a = sorted(addresses[0::2])
    only(ask(desk, "pin", {"group": "row-a", "mode": "sleep", "for_s": 3600}))
    only(ask(desk, "pin", {"rig": row_a[0], "mode": "low", "for_s": 3600}))
    pins = {p.override.mode: p.override.rig_ids for p in desk.state.pins.values()}
    assert pins == {Mode.SLEEP: frozenset(row_a[1:]), Mode.LOW: frozenset(row_a[:1])}
    status = only(ask(desk, "status", {"rigs": False}))["result"]
    assert sorted(p["rigs"] for p in status["pins"]) == [1, len(row_a) - 1]
    answer = only(ask(desk, "resume", {"all": True}))
    assert answer["status"] == "done" and answer["result"]["released"] == len(row_a)
    assert desk.state.pins == {} and h.loop.operator.overrides() == []
    report = await h.tick(hashprice=80.0)
    assert all(d.decided_by != "override" for d in report.desired.values())


async def test_pins_expire(setup: tuple[Harness, CommandDesk, list[str]]) -> None:
    h, desk, addresses = setup
    only(ask(desk, "pin", {"rig": addresses[0], "mode": "sleep", "for_s": 45}))
    assert len(h.loop.operator.overrides()) == 1
    await h.tick(hashprice=80.0)  # the clock moves 30 s per tick
    report = await h.tick(hashprice=80.0)
    desk.after_tick(report)
    assert desk.state.pins == {} and h.loop.operator.overrides() == []


async def test_hand_set_market_input_outranks_the_feeds_until_cleared(
    setup: tuple[Harness, CommandDesk, list[str]],
) -> None:
    h, desk, _ = setup
    answer = only(ask(desk, "market_set", {"input": "hashprice", "value": 5.0, "for_s": 600}))
    assert answer["status"] == "done" and answer["result"]["unit"] == "USD/PH/day"
    report = await h.tick(hashprice=80.0)  # the feed says 80; the operator says 5
    assert report.hashprice_usd_per_ph_day == 5.0
    assert all(d.mode is Mode.SLEEP for d in report.desired.values())
    assert only(ask(desk, "market_clear", {"input": "hashprice"}))["reason"] == "hashprice cleared"
    report = await h.tick(hashprice=80.0)
    assert report.hashprice_usd_per_ph_day == 80.0
    assert QuoteKind.HASHPRICE not in h.loop.operator.prices


async def test_site_target_sheds_load_and_answers_when_observed_under_it(
    setup: tuple[Harness, CommandDesk, list[str]],
) -> None:
    h, desk, _ = setup
    first = await h.tick(hashprice=80.0)
    target_kw = round(first.power_kw * 0.6, 1)
    body = only(ask(desk, "site_target", {"kw": target_kw, "for_s": 3600, "transaction": "dr"}))
    assert body["status"] == "accepted"
    finals: list[dict[str, Any]] = []
    for _ in range(10):
        report = await h.tick(hashprice=80.0)
        finals += [a.body for a in desk.after_tick(report)]
        if finals:
            break
    assert [f["status"] for f in finals] == ["done"], finals
    assert report.power_kw <= target_kw
    assert "power-cap" in {d.decided_by for d in report.desired.values()}
    assert only(ask(desk, "site_target", {"kw": None}))["status"] == "done"
    assert h.loop.operator.site_target is None


async def test_a_rig_that_ignores_commands_fails_the_wait_with_the_reason(
    setup: tuple[Harness, CommandDesk, list[str]], sim: SimFleet
) -> None:
    h, desk, addresses = setup
    stubborn = addresses[0]
    sim.control.set_fault(stubborn, "ignore_writes")
    request = {"rigs": [stubborn, addresses[1]], "transaction": "st", "timeout_s": 7200}
    only(ask(desk, "curtail", request))
    finals: list[dict[str, Any]] = []
    for _ in range(30):
        report = await h.tick(hashprice=80.0)
        h.clock.t += 150  # let the reconciler's confirm deadlines (120 s, doubling) run out
        finals += [a.body for a in desk.after_tick(report)]
        if finals:
            break
    assert len(finals) == 1 and finals[0]["status"] == "failed", finals
    assert f"{stubborn}: not responding to commands" in finals[0]["reason"]
    assert finals[0]["result"]["confirmed"] == 1
    assert finals[0]["result"]["not_confirmed"] == [stubborn]


async def test_dry_run_answers_from_the_decision_and_sends_nothing(
    sim: SimFleet, tmp_path: Path
) -> None:
    h, addresses = await harness(sim, tmp_path, dry_run=True)
    desk = desk_for(h, addresses)
    only(ask(desk, "curtail", {"rig": addresses[0], "transaction": "d"}))
    report = await h.tick(hashprice=80.0)
    [answer] = desk.after_tick(report)
    assert answer.body["status"] == "done" and answer.body["reason"].startswith("dry-run")
    # Nothing was sent, so nothing is confirmed: the answer says what would be done.
    assert answer.body["result"]["would"] == 1 and "confirmed" not in answer.body["result"]
    assert sim.control.rig(addresses[0])["mode"] == "normal"


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(
    command=st.sampled_from([*c.COMMANDS, "bogus"]),
    payload=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
            lambda kids: (
                st.lists(kids, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["rig", "rigs", "mode", "for_s", "kw", "input", "value", "x"]),
                    kids,
                    max_size=5,
                )
            ),
            max_leaves=12,
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
def test_parse_never_raises_anything_but_a_rejection(command: str, payload: bytes) -> None:
    try:
        request = c.parse(command, payload, now=1_800_000_000.0)
    except c.Rejected as exc:
        assert exc.reason
    else:
        assert isinstance(request, c.Request)


async def test_a_transaction_reused_with_another_payload_is_a_conflict_naming_the_first(
    setup: tuple[Harness, CommandDesk, list[str]], tmp_path: Path
) -> None:
    h, desk, addresses = setup
    first = {"rig": addresses[0], "mode": "sleep", "for_s": 600, "transaction": "x"}
    assert only(ask(desk, "pin", first))["status"] == "done"
    other = {**first, "mode": "normal"}
    conflict = only(ask(desk, "pin", other))
    assert conflict["status"] == "rejected" and conflict["transaction"] == "x"
    reason = conflict["reason"]
    assert reason.startswith("conflict: transaction 'x' was first used at "), reason
    assert '"mode":"sleep"' in reason and "pin {" in reason, reason
    assert [o.mode for o in h.loop.operator.overrides()] == [Mode.SLEEP]  # nothing applied
    # The first request's redelivery, even spelled differently, is still a redelivery: its
    # own answer again, not the conflict's.
    respelled = json.dumps(dict(reversed(list(first.items()))), indent=1).encode()
    again = only(ask(desk, "pin", respelled))
    assert again["status"] == "done" and again["repeated"] is True
    # MQTT 5 correlation data is an id too.
    assert only(ask(desk, "status", {}, b"c-1"))["status"] == "done"
    assert "this correlation data" in only(ask(desk, "status", {"rigs": True}, b"c-1"))["reason"]
    # After a restart (the ids and what they asked come back from the store) it still holds.
    from daemon.store import Store

    store = Store(tmp_path / "seen.db")
    store.put({}, seen=desk.state.requests.take_unsaved())
    h.loop.operator = OperatorState()  # as after a restart: nothing but what is stored
    h.loop.operator.requests.restore(store.seen(0.0))
    fresh = desk_for(h, addresses)
    assert only(ask(fresh, "pin", other))["reason"] == reason
    assert only(ask(fresh, "pin", first))["repeated"] is True


async def test_a_retained_request_is_rejected_and_not_applied(
    setup: tuple[Harness, CommandDesk, list[str]],
) -> None:
    h, desk, addresses = setup
    payload = json.dumps({"rig": addresses[0], "transaction": "r-1"}).encode()
    answers = desk.handle(Envelope("curtail", payload, desk.clock(), None, None, retained=True))
    answer = only(answers)
    assert answer["status"] == "rejected" and answer["transaction"] == "r-1"
    assert "retain flag" in answer["reason"] and "mosquitto_pub without -r" in answer["reason"]
    assert h.loop.operator.overrides() == []
    # Not remembered: the same request published properly is applied.
    assert only(ask(desk, "curtail", payload))["status"] == "accepted"
    assert [o.mode for o in h.loop.operator.overrides()] == [Mode.SLEEP]


def test_every_command_has_one_handler() -> None:
    from daemon.mqtt.handlers import HANDLERS

    assert set(HANDLERS) == set(c.COMMANDS.values())
