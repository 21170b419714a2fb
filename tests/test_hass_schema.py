"""The Home Assistant discovery validator (tests/hass_schema.py) accepts good payloads and fails.

Every rule gets a payload that breaks it and nothing else, so a validator that stopped checking
would turn a test red.
"""

from __future__ import annotations

import copy

import pytest
from hass_schema import COMPONENTS, assert_valid, config_problems, discovery_topic_problems

DEVICE: dict[str, object] = {
    "identifiers": ["rigpilot_s19jpro_01"],
    "name": "S19j Pro 01",
    "manufacturer": "Bitmain",
    "model": "Antminer S19j Pro",
    "sw_version": "2024.01",
    "serial_number": "JYZZ123456",
    "configuration_url": "http://10.0.0.21/",
    "via_device": "rigpilot_controller",
}
ORIGIN: dict[str, object] = {
    "name": "rigpilot",
    "sw_version": "0.1.0",
    "support_url": "https://example.com/rigpilot",
}
AVAILABILITY: list[object] = [
    {"topic": "rigpilot/status", "payload_available": "online", "payload_not_available": "offline"},
    {"topic": "rigpilot/rig/s19jpro_01/status", "value_template": "{{ value_json.state }}"},
]


def _entity(**extra: object) -> dict[str, object]:
    base: dict[str, object] = {
        "unique_id": "rigpilot_s19jpro_01_x",
        "device": copy.deepcopy(DEVICE),
        "origin": copy.deepcopy(ORIGIN),
        "availability": copy.deepcopy(AVAILABILITY),
        "availability_mode": "all",
    }
    base.update(extra)
    return base


VALID: dict[str, tuple[str, dict[str, object]]] = {
    "sensor_power": (
        "homeassistant/sensor/s19jpro_01/power/config",
        _entity(
            name="Power",
            state_topic="rigpilot/rig/s19jpro_01/state",
            value_template="{{ value_json.power_w }}",
            device_class="power",
            state_class="measurement",
            unit_of_measurement="W",
            suggested_display_precision=0,
            expire_after=300,
        ),
    ),
    "sensor_power_kw": (
        "homeassistant/sensor/s19jpro_01_power_kw/config",
        _entity(
            state_topic="rigpilot/fleet/state",
            device_class="power",
            state_class="measurement",
            unit_of_measurement="kW",
        ),
    ),
    "sensor_temperature": (
        "homeassistant/sensor/s19jpro_01/temp/config",
        _entity(
            name="Board temperature",
            state_topic="rigpilot/rig/s19jpro_01/state",
            device_class="temperature",
            state_class="measurement",
            unit_of_measurement="°C",
            entity_category="diagnostic",
        ),
    ),
    "sensor_hashrate": (
        "homeassistant/sensor/s19jpro_01/hashrate/config",
        _entity(
            name="Hashrate",
            state_topic="rigpilot/rig/s19jpro_01/state",
            state_class="measurement",
            unit_of_measurement="TH/s",
            icon="mdi:pickaxe",
        ),
    ),
    "sensor_efficiency": (
        "homeassistant/sensor/s19jpro_01/efficiency/config",
        _entity(state_topic="rigpilot/rig/s19jpro_01/state", unit_of_measurement="J/TH"),
    ),
    "sensor_money_per_day": (
        "homeassistant/sensor/s19jpro_01/profit/config",
        _entity(
            name="Profit",
            state_topic="rigpilot/rig/s19jpro_01/state",
            state_class="measurement",
            unit_of_measurement="USD/day",
        ),
    ),
    "switch": (
        "homeassistant/switch/s19jpro_01/mining/config",
        _entity(
            name="Mining",
            command_topic="rigpilot/rig/s19jpro_01/mining/set",
            state_topic="rigpilot/rig/s19jpro_01/mining",
            payload_on="ON",
            payload_off="OFF",
            state_on="ON",
            state_off="OFF",
            device_class="switch",
            qos=1,
            retain=False,
            optimistic=False,
            entity_category="config",
        ),
    ),
    "select": (
        "homeassistant/select/s19jpro_01/policy/config",
        _entity(
            name="Policy",
            command_topic="rigpilot/rig/s19jpro_01/policy/set",
            state_topic="rigpilot/rig/s19jpro_01/policy",
            options=["breakeven", "power-cap", "schedule"],
            entity_category="config",
        ),
    ),
    "number": (
        "homeassistant/number/s19jpro_01/power_limit/config",
        _entity(
            name="Power limit",
            command_topic="rigpilot/rig/s19jpro_01/power_limit/set",
            state_topic="rigpilot/rig/s19jpro_01/power_limit",
            min=1000,
            max=3500,
            step=50,
            mode="slider",
            device_class="power",
            unit_of_measurement="W",
            default_entity_id="number.s19jpro_01_power_limit",
        ),
    ),
    "switch_abbreviated_with_base_topic": (
        "homeassistant/switch/s19jpro_01_mining/config",
        {
            "~": "rigpilot/rig/s19jpro_01",
            "name": "Mining",
            "uniq_id": "rigpilot_s19jpro_01_mining",
            "cmd_t": "~/mining/set",
            "stat_t": "~/mining",
            "pl_on": "ON",
            "pl_off": "OFF",
            "avty": [{"t": "~/status", "pl_avail": "up", "pl_not_avail": "down"}],
            "avty_mode": "latest",
            "dev": {"ids": "rigpilot_s19jpro_01", "name": "S19j Pro 01", "mf": "Bitmain"},
            "o": {"name": "rigpilot", "sw": "0.1.0", "url": "https://example.com/rigpilot"},
        },
    ),
    "button": (
        "homeassistant/button/rigpilot_site1/s19jpro_01_power_cycle/config",
        _entity(
            name="Power cycle",
            command_topic="rigpilot/site1/request/power_cycle",
            payload_press='{"rig": "10.0.0.1", "by": "home-assistant"}',
            device_class="restart",
        ),
    ),
    "button_abbreviated": (
        "homeassistant/button/s19jpro_01_identify/config",
        {"cmd_t": "rigpilot/site1/request/identify", "pl_prs": "PRESS", "dev_cla": "identify"},
    ),
    "sensor_minimal_no_device": (
        "homeassistant/sensor/fleet_hashprice/config",
        {"state_topic": "rigpilot/market/hashprice", "unit_of_measurement": "USD/PH/day"},
    ),
}


def test_components() -> None:
    assert frozenset({"sensor", "switch", "select", "number", "button"}) == COMPONENTS


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_examples_pass(name: str) -> None:
    topic, payload = VALID[name]
    assert discovery_topic_problems(topic) == []
    component = topic.split("/")[1]
    assert config_problems(component, payload) == []
    assert_valid(topic, payload)


def test_each_component_has_a_valid_example() -> None:
    covered = {topic.split("/")[1] for topic, _ in VALID.values()}
    assert covered == COMPONENTS


def _variant(example: str, /, **changes: object) -> tuple[str, dict[str, object]]:
    """A copy of a valid example with keys changed; a value of ``...`` removes the key."""
    topic, payload = VALID[example]
    changed = copy.deepcopy(payload)
    for key, value in changes.items():
        if value is Ellipsis:
            changed.pop(key, None)
        else:
            changed[key] = value
    return topic.split("/")[1], changed


def _only_problem(component: str, payload: dict[str, object], *needles: str) -> str:
    problems = config_problems(component, payload)
    assert len(problems) == 1, problems
    for needle in needles:
        assert needle in problems[0], problems
    return problems[0]


# -- unknown keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("sensor_power", "unit"),  # typo of unit_of_measurement
        ("sensor_power", "command_topic"),  # not a sensor option
        ("switch", "options"),  # select-only option
        ("select", "min"),  # number-only option
        ("number", "payload_on"),  # switch-only option
        ("button", "state_topic"),  # a button has no state
        ("switch", "payload_press"),  # button-only option
        ("switch", "platform"),  # only inside device-discovery components
    ],
)
def test_unknown_key(name: str, key: str) -> None:
    component, payload = _variant(name, **{key: "x"})
    _only_problem(component, payload, key, "unknown key")


def test_unknown_key_in_device_origin_and_availability() -> None:
    component, payload = _variant("switch")
    device = payload["device"]
    origin = payload["origin"]
    availability = payload["availability"]
    assert isinstance(device, dict) and isinstance(origin, dict)
    assert isinstance(availability, list) and isinstance(availability[0], dict)
    device["firmware"] = "1.0"
    origin["version"] = "1.0"
    availability[0]["qos"] = 1
    problems = config_problems(component, payload)
    assert len(problems) == 3, problems
    assert any("device.firmware" in problem for problem in problems)
    assert any("origin.version" in problem for problem in problems)
    assert any("availability[0].qos" in problem for problem in problems)


# -- required keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["switch", "select", "number", "button"])
def test_missing_command_topic(name: str) -> None:
    component, payload = _variant(name, command_topic=...)
    _only_problem(component, payload, "command_topic", "missing required key")


def test_missing_abbreviated_command_topic() -> None:
    component, payload = _variant("switch_abbreviated_with_base_topic", cmd_t=...)
    _only_problem(component, payload, "command_topic", "missing required key")


def test_sensor_missing_state_topic() -> None:
    component, payload = _variant("sensor_power", state_topic=...)
    _only_problem(component, payload, "state_topic", "missing required key")


def test_select_without_options() -> None:
    component, payload = _variant("select", options=...)
    _only_problem(component, payload, "options", "missing required key")


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ([], "must not be empty"),
        (["auto", 3], "must be a string"),
        ("auto,manual", "must be a list"),
        (["auto", "auto"], "duplicates"),
    ],
)
def test_select_bad_options(options: object, needle: str) -> None:
    component, payload = _variant("select", options=options)
    _only_problem(component, payload, "options", needle)


# -- enumerations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "device_class"),
    [
        ("sensor_power", "hashrate"),
        ("sensor_power", "Power "),
        ("switch", "light"),
        ("button", "outlet"),  # a switch's class, not a button's
        ("number", "enum"),  # non-numeric classes are sensor-only
    ],
)
def test_bad_device_class(name: str, device_class: str) -> None:
    component, payload = _variant(name, device_class=device_class)
    problems = config_problems(component, payload)
    # A bad device_class may also make the unit check moot; the first problem names the class.
    assert problems, payload
    assert "device_class" in problems[0] and "must be one of" in problems[0], problems


@pytest.mark.parametrize("unit", ["kWh", "w", "Watt", "TH/s", "", None])
def test_wrong_unit_for_power(unit: object) -> None:
    component, payload = _variant("sensor_power", unit_of_measurement=unit)
    _only_problem(component, payload, "unit_of_measurement", "power")


def test_missing_unit_for_power() -> None:
    component, payload = _variant("sensor_power", unit_of_measurement=...)
    _only_problem(component, payload, "unit_of_measurement", "power")


@pytest.mark.parametrize("unit", ["C", "degC", "celsius", "°"])
def test_wrong_unit_for_temperature(unit: str) -> None:
    component, payload = _variant("sensor_temperature", unit_of_measurement=unit)
    _only_problem(component, payload, "unit_of_measurement", "temperature")


def test_wrong_unit_for_power_number() -> None:
    component, payload = _variant("number", unit_of_measurement="kWh")
    _only_problem(component, payload, "unit_of_measurement", "power")


def test_bad_state_class() -> None:
    component, payload = _variant("sensor_hashrate", state_class="average")
    _only_problem(component, payload, "state_class", "must be one of")


def test_state_class_impossible_for_device_class() -> None:
    component, payload = _variant("sensor_power", state_class="total_increasing")
    _only_problem(component, payload, "state_class", "impossible", "power")


def test_monetary_needs_a_currency_code() -> None:
    component, payload = _variant(
        "sensor_money_per_day", device_class="monetary", state_class="total"
    )
    _only_problem(component, payload, "monetary", "USD/day")


@pytest.mark.parametrize("mode", ["any ", "first", "ALL", 1])
def test_bad_availability_mode(mode: object) -> None:
    component, payload = _variant("sensor_power", availability_mode=mode)
    _only_problem(component, payload, "availability_mode", "must be one of")


@pytest.mark.parametrize("category", ["primary", "system", None])
def test_bad_entity_category(category: object) -> None:
    component, payload = _variant("switch", entity_category=category)
    _only_problem(component, payload, "entity_category", "must be one of")


def test_sensor_entity_category_config() -> None:
    component, payload = _variant("sensor_temperature", entity_category="config")
    _only_problem(component, payload, "entity_category", "diagnostic")


@pytest.mark.parametrize("mode", ["dial", "Slider", ""])
def test_bad_number_mode(mode: str) -> None:
    component, payload = _variant("number", mode=mode)
    _only_problem(component, payload, "mode", "must be one of")


# -- number bounds ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"min": 3500, "max": 1000},
        {"min": 2000, "max": 2000},
        {"min": 200, "max": ...},  # max defaults to 100
    ],
)
def test_number_min_not_below_max(changes: dict[str, object]) -> None:
    component, payload = _variant("number", **changes)
    _only_problem(component, payload, "min", "max")


@pytest.mark.parametrize("step", [0, -5, 0.0001])
def test_number_bad_step(step: float) -> None:
    component, payload = _variant("number", step=step)
    _only_problem(component, payload, "step")


# -- wrong types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("switch", "qos", "1"),
        ("switch", "qos", 3),
        ("switch", "retain", "false"),
        ("switch", "optimistic", 0),
        ("switch", "payload_on", 1),
        ("sensor_power", "expire_after", -1),
        ("sensor_power", "expire_after", 1.5),
        ("sensor_power", "suggested_display_precision", True),
        ("sensor_power", "name", 5),
        ("sensor_power", "unique_id", ""),
        ("sensor_hashrate", "icon", "pickaxe"),
        ("number", "min", "1000"),
        ("number", "max", float("inf")),
        ("number", "command_topic", "rigpilot/+/set"),
        ("sensor_power", "state_topic", "rigpilot/#/state"),
        ("sensor_power", "state_topic", ""),
    ],
)
def test_wrong_type(name: str, key: str, value: object) -> None:
    component, payload = _variant(name, **{key: value})
    problems = config_problems(component, payload)
    assert problems, payload
    assert key in problems[0], problems


def test_name_may_be_null() -> None:
    component, payload = _variant("sensor_power", name=None)
    assert config_problems(component, payload) == []


# -- device, origin, availability -------------------------------------------------------------


@pytest.mark.parametrize(
    "device",
    [
        {"name": "S19j Pro 01", "manufacturer": "Bitmain"},
        {"name": "S19j Pro 01", "identifiers": []},
        {"name": "S19j Pro 01", "identifiers": "", "connections": []},
    ],
)
def test_device_without_identifiers(device: dict[str, object]) -> None:
    component, payload = _variant("sensor_power", device=device)
    _only_problem(component, payload, "device", "identifiers", "connections")


def test_device_with_connections_only_is_valid() -> None:
    device = {"connections": [["mac", "02:5b:26:a8:dc:12"]], "name": "S19j Pro 01"}
    component, payload = _variant("sensor_power", device=device)
    assert config_problems(component, payload) == []


def test_device_connection_must_be_a_pair() -> None:
    device = {"connections": [["mac"]], "name": "S19j Pro 01"}
    component, payload = _variant("sensor_power", device=device)
    problems = config_problems(component, payload)
    assert any("pair" in problem for problem in problems), problems


def test_device_without_name() -> None:
    component, payload = _variant("sensor_power", device={"identifiers": ["x"]})
    _only_problem(component, payload, "device", "name")


def test_device_needs_unique_id() -> None:
    component, payload = _variant("switch", unique_id=...)
    _only_problem(component, payload, "unique_id", "device")


def test_device_configuration_url_must_be_a_url() -> None:
    device = {**DEVICE, "configuration_url": "10.0.0.21"}
    component, payload = _variant("switch", device=device)
    _only_problem(component, payload, "configuration_url", "URL")


def test_device_must_be_a_mapping() -> None:
    component, payload = _variant("switch", device=["rigpilot_s19jpro_01"])
    problems = config_problems(component, payload)
    assert any("device: must be a mapping" in problem for problem in problems), problems


def test_origin_without_name() -> None:
    component, payload = _variant("select", origin={"sw_version": "0.1.0"})
    _only_problem(component, payload, "origin", "name")


def test_availability_item_without_topic() -> None:
    availability = [{"payload_available": "online"}]
    component, payload = _variant("sensor_power", availability=availability)
    _only_problem(component, payload, "availability[0]", "topic")


def test_availability_must_be_a_list() -> None:
    component, payload = _variant("sensor_power", availability={"topic": "rigpilot/status"})
    _only_problem(component, payload, "availability", "list")


def test_availability_and_availability_topic_are_exclusive() -> None:
    component, payload = _variant("sensor_power", availability_topic="rigpilot/status")
    _only_problem(component, payload, "exclusive")


# -- abbreviations and the base topic ---------------------------------------------------------


@pytest.mark.parametrize(
    ("abbreviation", "full", "value"),
    [
        ("stat_t", "state_topic", "rigpilot/other"),
        ("uniq_id", "unique_id", "rigpilot_other"),
        ("unit_of_meas", "unit_of_measurement", "W"),
        ("dev_cla", "device_class", "power"),
    ],
)
def test_abbreviation_and_full_name_conflict(abbreviation: str, full: str, value: object) -> None:
    component, payload = _variant("sensor_power", **{abbreviation: value})
    _only_problem(component, payload, abbreviation, full, "abbreviation and full name")


def test_abbreviation_conflict_inside_device_and_origin() -> None:
    device = {**DEVICE, "ids": "rigpilot_s19jpro_01"}
    origin = {**ORIGIN, "sw": "0.1.0"}
    component, payload = _variant("switch", device=device, origin=origin)
    problems = config_problems(component, payload)
    assert len(problems) == 2, problems
    assert any("device" in problem and "'ids'" in problem for problem in problems)
    assert any("origin" in problem and "'sw'" in problem for problem in problems)


def test_abbreviation_conflict_inside_availability() -> None:
    availability = [{"topic": "rigpilot/status", "t": "rigpilot/status"}]
    component, payload = _variant("sensor_power", availability=availability)
    _only_problem(component, payload, "availability[0]", "'t'")


def test_base_topic_without_base() -> None:
    component, payload = _variant("switch_abbreviated_with_base_topic", **{"~": ...})
    problems = config_problems(component, payload)
    assert len(problems) == 3, problems  # cmd_t, stat_t and the availability topic
    assert all("'~'" in problem for problem in problems), problems


def test_base_topic_is_resolved_before_the_topic_check() -> None:
    component, payload = _variant("switch_abbreviated_with_base_topic", cmd_t="~/+/set")
    _only_problem(component, payload, "command_topic", "wildcards")


# -- discovery topic --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "homeassistant/sensor/power/config",
        "homeassistant/sensor/s19jpro_01/power/config",
        "homeassistant/number/node-1/power_limit/config",
    ],
)
def test_good_topic(topic: str) -> None:
    assert discovery_topic_problems(topic) == []


def test_custom_prefix() -> None:
    assert discovery_topic_problems("ha/switch/rig/mining/config", prefix="ha") == []
    assert discovery_topic_problems("homeassistant/switch/rig/mining/config", prefix="ha")


@pytest.mark.parametrize(
    ("topic", "needle"),
    [
        ("homeassistant/sensor/s19j.pro/power/config", "node_id"),
        ("homeassistant/sensor/s19jpro 01/config", "object_id"),
        ("homeassistant/sensor/rig/power:w/config", "object_id"),
        ("homeassistant/light/rig/lamp/config", "component"),
        ("homeassistant/device/rig/config", "component"),
        ("homeassistant/sensor/rig/power/state", "must be"),
        ("homeassistant/sensor/config", "must be"),
        ("homeassistant/sensor/a/b/c/config", "must be"),
        ("homeassistant/sensor//power/config", "node_id"),
        ("hass/sensor/rig/power/config", "prefix"),
    ],
)
def test_bad_topic(topic: str, needle: str) -> None:
    problems = discovery_topic_problems(topic)
    assert len(problems) == 1, problems
    assert needle in problems[0], problems


# -- config_problems and assert_valid as a whole ----------------------------------------------


def test_unknown_component() -> None:
    assert config_problems("light", {"command_topic": "x"}) != []


def test_empty_payload() -> None:
    assert config_problems("sensor", {}) != []


def test_every_problem_is_reported() -> None:
    component, payload = _variant(
        "number",
        command_topic=...,
        mode="dial",
        min=10,
        max=5,
        colour="red",
        availability_mode="sometimes",
    )
    problems = config_problems(component, payload)
    assert len(problems) == 5, problems


def test_assert_valid_lists_all_problems() -> None:
    _, payload = _variant("select", options=..., availability_mode="first")
    with pytest.raises(AssertionError) as raised:
        assert_valid("homeassistant/select/rig.01/policy/config", payload)
    message = str(raised.value)
    assert "options" in message
    assert "availability_mode" in message
    assert "node_id" in message


def test_assert_valid_checks_payload_against_the_topic_component() -> None:
    _, payload = VALID["switch"]
    with pytest.raises(AssertionError, match="payload_on"):
        assert_valid("homeassistant/number/s19jpro_01/mining/config", payload)
