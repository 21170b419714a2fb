"""The MQTT API document is generated from the code, and what is published matches it."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import identity, observation

from daemon.mqtt import asyncapi
from daemon.mqtt.commands import COMMANDS
from daemon.mqtt.state import Prices, fleet_state, rig_state
from policies.economics import Economics
from policies.values import Mode

REPO = Path(__file__).resolve().parents[1]


def test_checked_in_asyncapi_document_is_current() -> None:
    checked_in = (REPO / "docs" / "mqtt-asyncapi.json").read_text()
    assert checked_in == asyncapi.render(), (
        "docs/mqtt-asyncapi.json is stale: python -m daemon.mqtt.asyncapi > docs/mqtt-asyncapi.json"
    )


def test_every_command_has_a_request_and_a_response_channel() -> None:
    doc = asyncapi.document()
    assert doc["asyncapi"] == "3.0.0"
    for name in COMMANDS:
        assert doc["channels"][f"request_{name}"]["address"] == (
            f"{{base_topic}}/{{site}}/request/{name}"
        )
        op = doc["operations"][f"receive_{name}"]
        assert op["reply"]["channel"] == {"$ref": f"#/channels/response_{name}"}
    # Every $ref resolves.
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/')[1:]}:
        node = doc
        for key in ref.split("/"):
            node = node[key]


def test_published_documents_have_exactly_the_documented_fields() -> None:
    ident = identity("10.0.0.7", firmware="2024")
    obs = observation(at=1.0, ident=ident)
    prices = Prices(45.0, 0.05, Economics())
    doc = rig_state("10.0.0.7", ident, obs, None, prices)
    assert set(doc) == set(asyncapi.RIG_STATE_SCHEMA["properties"])
    fleet = fleet_state(
        site="s",
        at=1.0,
        readings={"10.0.0.7": obs},
        desired={},
        entries={},
        prices=prices,
        not_responding=0,
        dry_run=True,
        policies=["breakeven", "exploding"],
        pins=0,
        site_target=None,
        manual_market={},
        failed_policies=("exploding",),
    )
    assert set(fleet) == set(asyncapi.FLEET_STATE_SCHEMA["properties"])
    assert fleet["failed_policies"] == ["exploding"]  # JSON-ready: a list
    assert fleet["breakeven_hashprice_usd_per_ph_day"] == round(
        3000 / 1000 * 24 * 0.05 / (100 / 1000 * 0.98), 3
    )


def test_in_dry_run_the_fleet_state_says_what_would_be_curtailed_not_what_is() -> None:
    from policies.guards import Desired

    ident = identity("10.0.0.7", firmware="2024")
    obs = observation(at=1.0, ident=ident)
    prices = Prices(45.0, 0.05, Economics())
    desired = {"10.0.0.7": Desired("10.0.0.7", Mode.SLEEP, None, "loses money", "breakeven")}

    def state(dry: bool) -> dict[str, object]:
        return fleet_state(
            site="s",
            at=1.0,
            readings={"10.0.0.7": obs},
            desired=desired,
            entries={},
            prices=prices,
            not_responding=0,
            dry_run=dry,
            policies=["breakeven"],
            pins=0,
            site_target=None,
            manual_market={},
        )

    dry, live = state(True), state(False)
    assert (dry["curtailed"], dry["would_curtail"], dry["hashing"]) == (0, 1, 1)
    assert (live["curtailed"], live["would_curtail"]) == (1, None)


def test_the_document_refuses_a_field_it_lacks_and_requires_every_field() -> None:
    from schema_check import problems

    doc = asyncapi.document()
    schemas = doc["components"]["schemas"]
    ident = identity("10.0.0.7", firmware="2024")
    obs = observation(at=1.0, ident=ident)
    rig = rig_state("10.0.0.7", ident, obs, None, Prices(45.0, 0.05, Economics()))
    assert problems(rig, schemas["RigState"], doc) == []
    assert problems({**rig, "colour": "red"}, schemas["RigState"], doc) == [
        "/: field 'colour' is not in the schema"
    ]
    rest = dict(rig)
    del rest["margin_usd_per_day"]
    assert problems(rest, schemas["RigState"], doc) == [
        "/: required field 'margin_usd_per_day' missing"
    ]
    answer = {
        "transaction": "t",
        "command": "status",
        "status": "done",
        "reason": "status",
        "site": "s",
        "at": 1.0,
        "repeated": True,
    }
    assert problems(answer, schemas["Answer"], doc) == []
    optional = {"Info": ["stopped"]}  # only in the info published at a clean stop
    for name in (
        "Info",
        "DecisionEvent",
        "CommandEvent",
        "FaultEvent",
        "InstanceEvent",
        "PowerEvent",
        "FleetState",
    ):
        schema = schemas[name]
        assert schema["additionalProperties"] is False, name
        expected = [k for k in schema["properties"] if k not in optional.get(name, [])]
        assert schema["required"] == expected, name
    # Every channel the daemon publishes on is under the configured base topic.
    for channel in doc["channels"].values():
        assert channel["address"].startswith("{base_topic}/{site}/")


def test_power_events_and_outlets_match_the_document() -> None:
    """Each kind of power event daemon/power.py audits, and a rig's outlets, as published."""
    from schema_check import problems

    from daemon.mqtt.state import outlets_state, power_event
    from drivers.switches.base import OutletReading

    doc = asyncapi.document()
    schema = doc["components"]["schemas"]["PowerEvent"]
    audited: list[dict[str, object]] = [
        {"ts": 5.0, "kind": "power_cycle", "rig": "r", "cause": "hung", "silent_s": 901.0,
         "cycle_today": 1, "dry_run": False, "outlets": "outlets px3:1 off"},
        {"ts": 5.0, "kind": "power_cycle", "rig": "r", "cause": "requested", "silent_s": None,
         "cycle_today": 2, "dry_run": False, "error": "timeout: switch px3: no answer"},
        {"ts": 5.0, "kind": "power_cycle_refused", "rig": "r", "reason": "pinned to low"},
        {"ts": 5.0, "kind": "needs_hands", "rig": "r", "cycles": 2},
    ]  # fmt: skip
    published = [power_event(e, dry_run=False) for e in audited]
    for event in published:
        assert problems(event, schema, doc) == [], event
    assert [(e["kind"], e["cause"], e["cycle_today"]) for e in published] == [
        ("power_cycle", "hung", 1),
        ("power_cycle", "requested", 2),
        ("power_cycle_refused", None, None),
        ("needs_hands", None, 2),
    ]
    assert published[2]["reason"] == "pinned to low" and "go and look" in str(
        published[3]["reason"]
    )
    assert problems({**published[0], "kind": "reboot"}, schema, doc) != []

    feeds = [("pdu", 7), ("pdu", 8)]
    metered = {("pdu", 7): OutletReading(7, True, 1500.0), ("pdu", 8): OutletReading(8, False, 0.0)}
    assert outlets_state(feeds, metered) == {
        "names": ["pdu:7", "pdu:8"],
        "on": True,
        "power_w": 1500.0,
    }
    half = {("pdu", 7): OutletReading(7, False, None), ("pdu", 8): OutletReading(8, False, 2.0)}
    assert outlets_state(feeds, half) == {"names": ["pdu:7", "pdu:8"], "on": False, "power_w": None}
    unread = {("pdu", 7): OutletReading(7, True, 1500.0)}
    assert outlets_state(feeds, unread)["on"] is None
    ident = identity("10.0.0.7", firmware="2024")
    rig = rig_state(
        "10.0.0.7", ident, observation(at=1.0, ident=ident), None, Prices(45.0, 0.05, Economics()),
        outlets=outlets_state(feeds, metered),
    )  # fmt: skip
    assert problems(rig, doc["components"]["schemas"]["RigState"], doc) == []
