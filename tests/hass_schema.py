"""Validator for Home Assistant MQTT discovery config payloads (sensor, switch, select, number,
button).

Test helper: it lists every way a discovery message we publish departs from the schema that
Home Assistant documents and enforces, so a test can fail on it before Home Assistant ignores the
entity in the field.  The rules are written out here from these sources (read, not copied):

Documentation (home-assistant.io).  Read from stored copies, not live: the MQTT page as a
mirror (translation) of its current 2025/2026 edition, which already documents
``default_entity_id`` / ``def_ent_id``; the sensor page as search excerpts of the current page
plus an older ``source/_integrations/sensor.mqtt.markdown``.  For switch, select and number the
key lists come from the core source below; their pages are cited for reference.

- https://www.home-assistant.io/integrations/mqtt/ -- discovery topic format
  ``<discovery_prefix>/<component>/[<node_id>/]<object_id>/config`` with node_id and object_id in
  ``[a-zA-Z0-9_-]``; the ``~`` base topic; the three abbreviation tables (entity, device
  registry, origin); the ``origin`` keys ``name`` (required), ``sw_version``, ``support_url``;
  availability list items (``topic`` required, ``payload_available``,
  ``payload_not_available``, ``value_template``); ``availability_mode`` all / any / latest;
  "unknown configuration keys are allowed but ignored".
- https://www.home-assistant.io/integrations/sensor.mqtt/ ,
  https://www.home-assistant.io/integrations/switch.mqtt/ ,
  https://www.home-assistant.io/integrations/select.mqtt/ ,
  https://www.home-assistant.io/integrations/number.mqtt/ ,
  https://www.home-assistant.io/integrations/button.mqtt/ -- per-component keys (button:
  ``command_topic`` required, ``command_template``, ``payload_press`` (default ``PRESS``),
  ``retain``, ``device_class`` identify / restart / update); ``device``
  "only works when unique_id is set"; sensor ``options`` only with ``device_class: enum`` and
  never with ``state_class`` / ``unit_of_measurement``; number ``mode`` auto / box / slider.

Source (github.com/home-assistant/core, 2024.x-2025.x; the file versions read carry no release
number, the newest ones are from after 2025.7 because the sensor unit check raises instead of
warning):

- homeassistant/components/mqtt/discovery.py -- ``TOPIC_MATCHER`` regex, abbreviation
  expansion (an abbreviation silently overwrites its full name, hence the conflict rule here),
  ``~`` substitution for keys ending in ``topic`` and in availability items.
- homeassistant/components/mqtt/abbreviations.py -- ABBREVIATIONS, DEVICE_ABBREVIATIONS,
  ORIGIN_ABBREVIATIONS (the subset for these five components is kept below).
- homeassistant/components/mqtt/schemas.py -- availability (single and list form are
  exclusive), device info (at least one of identifiers / connections; connections are pairs),
  origin info, entity common keys, entity_category.
- homeassistant/components/mqtt/config.py -- MQTT_RO_SCHEMA (state_topic required) and
  MQTT_RW_SCHEMA (command_topic required), qos 0/1/2, retain, optimistic, encoding.
- homeassistant/components/mqtt/sensor.py -- validate_sensor_state_and_device_class_config
  (options rules, last_reset_value_template needs state_class total, unit must be in
  DEVICE_CLASS_UNITS for the device class, measurement_angle needs degrees).
- homeassistant/components/mqtt/switch.py, select.py, number.py -- component keys; number
  step >= 0.001 and min/max check.
- homeassistant/components/sensor/const.py and number/const.py -- SensorDeviceClass,
  SensorStateClass, DEVICE_CLASS_UNITS (power: mW W kW MW GW TW; temperature: degC degF K),
  DEVICE_CLASS_STATE_CLASSES, NumberMode.

Deliberately stricter than Home Assistant (it would accept or silently drop these):

- unknown keys are reported (HA's discovery schema drops them: a typo loses the option);
- an abbreviation together with its full name is reported (HA keeps the abbreviation's value);
- JSON types must be the documented ones (HA coerces e.g. ``"1"`` to qos 1, ``1`` to ``"1"``);
- number ``min == max`` is reported (current HA only rejects ``min > max``);
- a device without ``name`` is reported (the MQTT page now lists name as mandatory next to
  identifiers/connections; the code schema does not enforce it);
- ``default_entity_id`` must name this component's domain (``sensor.xyz``);
- a sensor with device_class power/temperature must carry a unit from the list;
- a sensor state_class outside DEVICE_CLASS_STATE_CLASSES for its device_class, and a monetary
  sensor whose unit is not a three-letter currency code, are reported (HA logs a warning);
- a sensor with ``entity_category: config`` is reported (the sensor entity refuses it when
  added, after discovery validation has passed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

COMPONENTS: frozenset[str] = frozenset({"sensor", "switch", "select", "number", "button"})

# --------------------------------------------------------------------------------------------
# Enumerations
# --------------------------------------------------------------------------------------------

AVAILABILITY_MODES: frozenset[str] = frozenset({"all", "any", "latest"})
ENTITY_CATEGORIES: frozenset[str] = frozenset({"config", "diagnostic"})
NUMBER_MODES: frozenset[str] = frozenset({"auto", "box", "slider"})
SWITCH_DEVICE_CLASSES: frozenset[str] = frozenset({"outlet", "switch"})
BUTTON_DEVICE_CLASSES: frozenset[str] = frozenset({"identify", "restart", "update"})
QOS_LEVELS: frozenset[int] = frozenset({0, 1, 2})

SENSOR_STATE_CLASSES: frozenset[str] = frozenset(
    {"measurement", "measurement_angle", "total", "total_increasing"}
)

NON_NUMERIC_SENSOR_DEVICE_CLASSES: frozenset[str] = frozenset({"date", "enum", "timestamp"})

SENSOR_DEVICE_CLASSES: frozenset[str] = NON_NUMERIC_SENSOR_DEVICE_CLASSES | frozenset(
    {
        "apparent_power",
        "aqi",
        "area",
        "atmospheric_pressure",
        "battery",
        "blood_glucose_concentration",
        "carbon_dioxide",
        "carbon_monoxide",
        "conductivity",
        "current",
        "data_rate",
        "data_size",
        "distance",
        "duration",
        "energy",
        "energy_distance",
        "energy_storage",
        "frequency",
        "gas",
        "humidity",
        "illuminance",
        "irradiance",
        "moisture",
        "monetary",
        "nitrogen_dioxide",
        "nitrogen_monoxide",
        "nitrous_oxide",
        "ozone",
        "ph",
        "pm1",
        "pm10",
        "pm25",
        "power",
        "power_factor",
        "precipitation",
        "precipitation_intensity",
        "pressure",
        "reactive_energy",
        "reactive_power",
        "signal_strength",
        "sound_pressure",
        "speed",
        "sulphur_dioxide",
        "temperature",
        "volatile_organic_compounds",
        "volatile_organic_compounds_parts",
        "voltage",
        "volume",
        "volume_flow_rate",
        "volume_storage",
        "water",
        "weight",
        "wind_direction",
        "wind_speed",
    }
)

# NumberDeviceClass "should be aligned with SensorDeviceClass" (number/const.py): the numeric ones.
NUMBER_DEVICE_CLASSES: frozenset[str] = SENSOR_DEVICE_CLASSES - NON_NUMERIC_SENSOR_DEVICE_CLASSES

# DEVICE_CLASS_UNITS (sensor/const.py and number/const.py), only for the classes rigpilot uses.
POWER_UNITS: frozenset[str] = frozenset({"mW", "W", "kW", "MW", "GW", "TW"})
TEMPERATURE_UNITS: frozenset[str] = frozenset({"°C", "°F", "K"})
DEVICE_CLASS_UNITS: Mapping[str, frozenset[str]] = {
    "power": POWER_UNITS,
    "temperature": TEMPERATURE_UNITS,
}

# DEVICE_CLASS_STATE_CLASSES (sensor/const.py), for a handful of classes.  An empty set: the
# class takes no state_class at all.
_ALL_STATE_CLASSES = SENSOR_STATE_CLASSES - {"measurement_angle"}
DEVICE_CLASS_STATE_CLASSES: Mapping[str, frozenset[str]] = {
    "current": frozenset({"measurement"}),
    "data_size": _ALL_STATE_CLASSES,
    "date": frozenset(),
    "duration": _ALL_STATE_CLASSES,
    "energy": frozenset({"total", "total_increasing"}),
    "enum": frozenset(),
    "frequency": frozenset({"measurement"}),
    "humidity": frozenset({"measurement"}),
    "monetary": frozenset({"total"}),
    "power": frozenset({"measurement"}),
    "power_factor": frozenset({"measurement"}),
    "temperature": frozenset({"measurement"}),
    "timestamp": frozenset(),
    "voltage": frozenset({"measurement"}),
    "wind_direction": frozenset({"measurement_angle"}),
}

# --------------------------------------------------------------------------------------------
# Abbreviations (mqtt/abbreviations.py; the documented tables).  Only the entries whose full
# name is a key of one of the five components; an abbreviation of any other key would name an
# option these components do not have, and is reported as an unknown key.
# --------------------------------------------------------------------------------------------

ABBREVIATIONS: Mapping[str, str] = {
    "avty": "availability",
    "avty_mode": "availability_mode",
    "avty_t": "availability_topic",
    "avty_tpl": "availability_template",
    "cmd_t": "command_topic",
    "cmd_tpl": "command_template",
    "def_ent_id": "default_entity_id",
    "dev": "device",
    "dev_cla": "device_class",
    "e": "encoding",
    "en": "enabled_by_default",
    "ent_cat": "entity_category",
    "ent_pic": "entity_picture",
    "exp_aft": "expire_after",
    "frc_upd": "force_update",
    "ic": "icon",
    "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template",
    "lrst_val_tpl": "last_reset_value_template",
    "max": "max",
    "min": "min",
    "mode": "mode",
    "name": "name",
    "o": "origin",
    "obj_id": "object_id",
    "ops": "options",
    "opt": "optimistic",
    "p": "platform",
    "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available",
    "pl_off": "payload_off",
    "pl_on": "payload_on",
    "pl_prs": "payload_press",
    "pl_rst": "payload_reset",
    "ret": "retain",
    "stat_cla": "state_class",
    "stat_off": "state_off",
    "stat_on": "state_on",
    "stat_t": "state_topic",
    "step": "step",
    "sug_dsp_prc": "suggested_display_precision",
    "t": "topic",
    "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement",
    "val_tpl": "value_template",
}

DEVICE_ABBREVIATIONS: Mapping[str, str] = {
    "cns": "connections",
    "cu": "configuration_url",
    "hw": "hw_version",
    "ids": "identifiers",
    "mdl": "model",
    "mdl_id": "model_id",
    "mf": "manufacturer",
    "name": "name",
    "sa": "suggested_area",
    "sn": "serial_number",
    "sw": "sw_version",
}

ORIGIN_ABBREVIATIONS: Mapping[str, str] = {
    "name": "name",
    "sw": "sw_version",
    "url": "support_url",
}

# --------------------------------------------------------------------------------------------
# Value checkers: each returns a description of what is wrong, or None.
# --------------------------------------------------------------------------------------------

Checker = Callable[[object], str | None]

_ID_RE = re.compile(r"[a-zA-Z0-9_-]+")
_CURRENCY_RE = re.compile(r"[A-Z]{3}")
_URL_RE = re.compile(r"(https?://[^\s/]+\S*|homeassistant://\S+)")
_ICON_RE = re.compile(r"[a-z0-9-]+:\S+")


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _string(value: object) -> str | None:
    return None if isinstance(value, str) else f"must be a string, got {_type_name(value)}"


def _nonempty_string(value: object) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {_type_name(value)}"
    return None if value.strip() else "must not be empty"


def _string_or_null(value: object) -> str | None:
    return None if value is None else _string(value)


def _boolean(value: object) -> str | None:
    return None if isinstance(value, bool) else f"must be true/false, got {value!r}"


def _non_negative_int(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer, got {value!r}"
    return None if value >= 0 else f"must be >= 0, got {value}"


def _number(value: object) -> str | None:
    return None if _is_number(value) else f"must be a finite number, got {value!r}"


def _qos(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value not in QOS_LEVELS:
        return f"must be 0, 1 or 2, got {value!r}"
    return None


def _one_of(allowed: frozenset[str], *, nullable: bool = False) -> Checker:
    def check(value: object) -> str | None:
        if value is None and nullable:
            return None
        if not isinstance(value, str) or value not in allowed:
            return f"must be one of {sorted(allowed)}, got {value!r}"
        return None

    return check


def _url(value: object) -> str | None:
    if not isinstance(value, str):
        return f"must be a URL string, got {_type_name(value)}"
    if not _URL_RE.fullmatch(value):
        return f"must be an http(s):// or homeassistant:// URL, got {value!r}"
    return None


def _icon(value: object) -> str | None:
    if not isinstance(value, str) or not _ICON_RE.fullmatch(value):
        return f"must be an icon like 'mdi:flash', got {value!r}"
    return None


def _topic(value: object, *, publish: bool) -> str | None:  # noqa: PLR0911  one problem per rule of Home Assistant's topic validator
    if not isinstance(value, str):
        return f"must be an MQTT topic string, got {_type_name(value)}"
    if not value:
        return "must not be empty"
    if "\0" in value:
        return "must not contain a NUL character"
    if len(value.encode("utf-8")) > 65535:
        return "is longer than 65535 bytes"
    levels = value.split("/")
    if publish:
        if "+" in value or "#" in value:
            return f"is a command (publish) topic and must not contain wildcards: {value!r}"
        return None
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return f"'#' must be a whole last level: {value!r}"
        if "+" in level and level != "+":
            return f"'+' must be a whole level: {value!r}"
    return None


def _subscribe_topic(value: object) -> str | None:
    return _topic(value, publish=False)


def _publish_topic(value: object) -> str | None:
    return _topic(value, publish=True)


def _any(value: object) -> str | None:
    """For the nested mappings and lists that get their own checks below."""
    return None


# --------------------------------------------------------------------------------------------
# Key tables
# --------------------------------------------------------------------------------------------

# MQTT_ENTITY_COMMON_SCHEMA (schemas.py) + availability + MQTT_BASE_SCHEMA (config.py).
_COMMON_KEYS: Mapping[str, Checker] = {
    "~": _nonempty_string,
    "availability": _any,
    "availability_mode": _one_of(AVAILABILITY_MODES),
    "availability_template": _string,
    "availability_topic": _subscribe_topic,
    "default_entity_id": _nonempty_string,
    "device": _any,
    "enabled_by_default": _boolean,
    "encoding": _string,
    "entity_category": _one_of(ENTITY_CATEGORIES),
    "entity_picture": _url,
    "icon": _icon,
    "json_attributes_template": _string,
    "json_attributes_topic": _subscribe_topic,
    "name": _string_or_null,
    "object_id": _nonempty_string,
    "origin": _any,
    "payload_available": _string,
    "payload_not_available": _string,
    "qos": _qos,
    "unique_id": _nonempty_string,
}

# MQTT_RO_SCHEMA: sensors subscribe.
_READ_ONLY_KEYS: Mapping[str, Checker] = {
    "state_topic": _subscribe_topic,
    "value_template": _string,
}

# MQTT_RW_SCHEMA: switch-like components publish commands and may subscribe to state.
_READ_WRITE_KEYS: Mapping[str, Checker] = {
    "command_topic": _publish_topic,
    "optimistic": _boolean,
    "retain": _boolean,
    "state_topic": _subscribe_topic,
    "value_template": _string,
}

_COMPONENT_KEYS: Mapping[str, Mapping[str, Checker]] = {
    "sensor": {
        **_COMMON_KEYS,
        **_READ_ONLY_KEYS,
        "device_class": _one_of(SENSOR_DEVICE_CLASSES, nullable=True),
        "expire_after": _non_negative_int,
        "force_update": _boolean,
        "last_reset_value_template": _string,
        "options": _any,
        "state_class": _one_of(SENSOR_STATE_CLASSES, nullable=True),
        "suggested_display_precision": _non_negative_int,
        "unit_of_measurement": _string_or_null,
    },
    "switch": {
        **_COMMON_KEYS,
        **_READ_WRITE_KEYS,
        "command_template": _string,
        "device_class": _one_of(SWITCH_DEVICE_CLASSES, nullable=True),
        "payload_off": _string,
        "payload_on": _string,
        "state_off": _string,
        "state_on": _string,
    },
    "select": {
        **_COMMON_KEYS,
        **_READ_WRITE_KEYS,
        "command_template": _string,
        "options": _any,
    },
    "number": {
        **_COMMON_KEYS,
        **_READ_WRITE_KEYS,
        "command_template": _string,
        "device_class": _one_of(NUMBER_DEVICE_CLASSES, nullable=True),
        "max": _number,
        "min": _number,
        "mode": _one_of(NUMBER_MODES),
        "payload_reset": _string,
        "step": _number,
        "unit_of_measurement": _string_or_null,
    },
    # button.py: the base schema's keys and its own; no state_topic (a button has no state)
    "button": {
        **_COMMON_KEYS,
        "command_template": _string,
        "command_topic": _publish_topic,
        "device_class": _one_of(BUTTON_DEVICE_CLASSES, nullable=True),
        "payload_press": _string,
        "retain": _boolean,
    },
}

_REQUIRED_KEYS: Mapping[str, tuple[str, ...]] = {
    "sensor": ("state_topic",),
    "switch": ("command_topic",),
    "select": ("command_topic", "options"),
    "number": ("command_topic",),
    "button": ("command_topic",),
}

_DEVICE_KEYS: Mapping[str, Checker] = {
    "configuration_url": _url,
    "connections": _any,
    "hw_version": _string,
    "identifiers": _any,
    "manufacturer": _string,
    "model": _string,
    "model_id": _string,
    "name": _nonempty_string,
    "serial_number": _string,
    "suggested_area": _string,
    "sw_version": _string,
    "via_device": _string,
}

_ORIGIN_KEYS: Mapping[str, Checker] = {
    "name": _nonempty_string,
    "support_url": _url,
    "sw_version": _string,
}

_AVAILABILITY_ITEM_KEYS: Mapping[str, Checker] = {
    "payload_available": _string,
    "payload_not_available": _string,
    "topic": _subscribe_topic,
    "value_template": _string,
}

_UNKNOWN_KEY_HINTS: Mapping[str, str] = {
    "platform": " (only used inside 'components' of a device-based discovery message)",
}

# Number defaults (number/const.py) used for the min/max check when a bound is omitted.
_NUMBER_DEFAULT_MIN = 0.0
_NUMBER_DEFAULT_MAX = 100.0
_NUMBER_MIN_STEP = 1e-3


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _expand(
    mapping: Mapping[str, object], abbreviations: Mapping[str, str], where: str
) -> tuple[dict[str, object], dict[str, str], list[str]]:
    """Expand abbreviations; return (expanded, full name -> key as written, problems)."""
    expanded: dict[str, object] = {}
    written: dict[str, str] = {}
    problems: list[str] = []
    for key, value in mapping.items():
        full = abbreviations.get(key, key)
        if full in written:
            prefix = f"{where}: " if where else ""
            problems.append(
                f"{prefix}'{written[full]}' and '{key}' both set '{full}' "
                "(abbreviation and full name together)"
            )
            if key == full:
                continue  # discovery.py lets the abbreviation's value win
        expanded[full] = value
        written[full] = key
    return expanded, written, problems


def _label(where: str, full: str, written: Mapping[str, str]) -> str:
    as_written = written.get(full, full)
    name = full if as_written == full else f"{full} ('{as_written}')"
    return f"{where}.{name}" if where else name


def _check_keys(
    expanded: Mapping[str, object],
    written: Mapping[str, str],
    allowed: Mapping[str, Checker],
    where: str,
) -> list[str]:
    problems: list[str] = []
    for full, value in expanded.items():
        checker = allowed.get(full)
        label = _label(where, full, written)
        if checker is None:
            hint = _UNKNOWN_KEY_HINTS.get(full, "")
            problems.append(f"{label}: unknown key{hint}")
            continue
        if (error := checker(value)) is not None:
            problems.append(f"{label}: {error}")
    return problems


def _as_mapping(value: object) -> dict[str, object] | None:
    if not isinstance(value, dict):
        return None
    return {str(key): item for key, item in value.items()}


def _uses_base(topic: str) -> bool:
    return topic.startswith("~") or topic.endswith("~")


def _apply_base(topic: str, base: str) -> str:
    """Replace a leading and/or trailing ``~`` with the base topic."""
    if topic.startswith("~"):
        topic = base + topic[1:]
    if topic.endswith("~"):
        topic = topic[:-1] + base
    return topic


def _resolve_base_topic(expanded: dict[str, object], problems: list[str]) -> None:
    """Apply the ``~`` base topic the way discovery.py does, in place."""
    base = expanded.get("~")
    for key, value in list(expanded.items()):
        if not key.endswith("topic") or not isinstance(value, str) or not _uses_base(value):
            continue
        if not isinstance(base, str):
            problems.append(f"{key}: uses '~' but the payload sets no '~' base topic")
            continue
        expanded[key] = _apply_base(value, base)


# --------------------------------------------------------------------------------------------
# Nested blocks
# --------------------------------------------------------------------------------------------


def _device_problems(value: object) -> list[str]:  # noqa: PLR0912  one branch per device field Home Assistant checks
    device = _as_mapping(value)
    if device is None:
        return [f"device: must be a mapping, got {_type_name(value)}"]
    expanded, written, problems = _expand(device, DEVICE_ABBREVIATIONS, "device")
    problems += _check_keys(expanded, written, _DEVICE_KEYS, "device")

    identifiers = expanded.get("identifiers")
    connections = expanded.get("connections")
    has_identifier = False
    if identifiers is not None:
        label = _label("device", "identifiers", written)
        if isinstance(identifiers, str):
            has_identifier = bool(identifiers)
        elif isinstance(identifiers, list):
            bad = [item for item in identifiers if not isinstance(item, str) or not item]
            if bad:
                problems.append(f"{label}: every identifier must be a non-empty string")
            has_identifier = bool(identifiers)
        else:
            problems.append(f"{label}: must be a string or a list of strings")
    if connections is not None:
        label = _label("device", "connections", written)
        if not isinstance(connections, list):
            problems.append(f"{label}: must be a list of [type, id] pairs")
        else:
            for pair in connections:
                if (
                    not isinstance(pair, list)
                    or len(pair) != 2
                    or not all(isinstance(part, str) for part in pair)
                ):
                    problems.append(f"{label}: {pair!r} is not a [type, id] pair of strings")
            has_identifier = has_identifier or bool(connections)
    if not has_identifier:
        problems.append(
            "device: must have at least one identifying value in 'identifiers' and/or 'connections'"
        )
    if "name" not in expanded:
        problems.append("device: has no name (documented as mandatory with identifiers)")
    return problems


def _origin_problems(value: object) -> list[str]:
    origin = _as_mapping(value)
    if origin is None:
        return [f"origin: must be a mapping, got {_type_name(value)}"]
    expanded, written, problems = _expand(origin, ORIGIN_ABBREVIATIONS, "origin")
    problems += _check_keys(expanded, written, _ORIGIN_KEYS, "origin")
    if "name" not in expanded:
        problems.append("origin: missing required key 'name'")
    return problems


def _availability_problems(value: object, base: object) -> list[str]:
    if not isinstance(value, list):
        return [f"availability: must be a list of mappings, got {_type_name(value)}"]
    if not value:
        return ["availability: must not be an empty list"]
    problems: list[str] = []
    for index, raw in enumerate(value):
        where = f"availability[{index}]"
        item = _as_mapping(raw)
        if item is None:
            problems.append(f"{where}: must be a mapping, got {_type_name(raw)}")
            continue
        expanded, written, item_problems = _expand(item, ABBREVIATIONS, where)
        problems += item_problems
        topic = expanded.get("topic")
        if isinstance(topic, str) and _uses_base(topic):
            if not isinstance(base, str):
                problems.append(f"{where}.topic: uses '~' but the payload sets no '~' base topic")
            else:
                expanded["topic"] = _apply_base(topic, base)
        problems += _check_keys(expanded, written, _AVAILABILITY_ITEM_KEYS, where)
        if "topic" not in expanded:
            problems.append(f"{where}: missing required key 'topic'")
    return problems


# --------------------------------------------------------------------------------------------
# Component-specific cross-field rules
# --------------------------------------------------------------------------------------------


def _unit(config: Mapping[str, object]) -> str | None:
    unit = config.get("unit_of_measurement")
    # sensor.py drops an empty (whitespace) unit before checking it.
    return unit if isinstance(unit, str) and unit.strip() else None


def _unit_problems(config: Mapping[str, object]) -> list[str]:
    device_class = config.get("device_class")
    if not isinstance(device_class, str) or device_class not in DEVICE_CLASS_UNITS:
        return []
    allowed = DEVICE_CLASS_UNITS[device_class]
    unit = _unit(config)
    if unit is None:
        return [
            f"unit_of_measurement: device_class '{device_class}' needs one of {sorted(allowed)}"
        ]
    if unit not in allowed:
        return [
            f"unit_of_measurement: '{unit}' is not valid for device_class '{device_class}' "
            f"(allowed: {sorted(allowed)})"
        ]
    return []


def _options_problems(value: object) -> list[str]:
    if not isinstance(value, list):
        return [f"options: must be a list of strings, got {_type_name(value)}"]
    if not value:
        return ["options: must not be empty"]
    problems: list[str] = []
    if not all(isinstance(option, str) for option in value):
        problems.append("options: every option must be a string")
    elif len(set(value)) != len(value):
        problems.append("options: contains duplicates")
    return problems


def _sensor_problems(config: Mapping[str, object]) -> list[str]:
    problems: list[str] = []
    device_class = config.get("device_class")
    state_class = config.get("state_class")
    unit = _unit(config)

    if "last_reset_value_template" in config and state_class != "total":
        problems.append(
            f"last_reset_value_template: only allowed with state_class 'total', got {state_class!r}"
        )
    if "options" in config:
        problems += _options_problems(config["options"])
        if state_class or unit:
            problems.append("options: not allowed together with state_class or unit_of_measurement")
        if device_class != "enum":
            problems.append(f"options: needs device_class 'enum', got {device_class!r}")

    problems += _unit_problems(config)

    if isinstance(device_class, str):
        if device_class in NON_NUMERIC_SENSOR_DEVICE_CLASSES and unit is not None:
            problems.append(
                f"unit_of_measurement: device_class '{device_class}' takes no unit, got {unit!r}"
            )
        if device_class == "monetary" and unit is not None and not _CURRENCY_RE.fullmatch(unit):
            problems.append(
                f"unit_of_measurement: device_class 'monetary' needs an ISO 4217 currency "
                f"code, got {unit!r}"
            )
        allowed_state_classes = DEVICE_CLASS_STATE_CLASSES.get(device_class)
        if (
            isinstance(state_class, str)
            and allowed_state_classes is not None
            and state_class not in allowed_state_classes
        ):
            problems.append(
                f"state_class: '{state_class}' is impossible for device_class "
                f"'{device_class}' (allowed: {sorted(allowed_state_classes) or 'none'})"
            )
    if state_class == "measurement_angle" and unit != "°":
        problems.append(
            f"unit_of_measurement: state_class 'measurement_angle' needs '°', got {unit!r}"
        )

    if config.get("entity_category") == "config":
        problems.append("entity_category: a sensor can only be 'diagnostic', not 'config'")
    return problems


def _select_problems(config: Mapping[str, object]) -> list[str]:
    return _options_problems(config["options"]) if "options" in config else []


def _number_problems(config: Mapping[str, object]) -> list[str]:
    problems = _unit_problems(config)
    low = config.get("min", _NUMBER_DEFAULT_MIN)
    high = config.get("max", _NUMBER_DEFAULT_MAX)
    if _is_number(low) and _is_number(high):
        assert isinstance(low, int | float) and isinstance(high, int | float)
        if low >= high:
            problems.append(f"min/max: min ({low}) must be below max ({high})")
    step = config.get("step")
    if _is_number(step):
        assert isinstance(step, int | float)
        if step < _NUMBER_MIN_STEP:
            problems.append(f"step: must be >= {_NUMBER_MIN_STEP}, got {step}")
    return problems


_CROSS_FIELD: Mapping[str, Callable[[Mapping[str, object]], list[str]]] = {
    "sensor": _sensor_problems,
    "switch": lambda config: [],
    "button": lambda config: [],
    "select": _select_problems,
    "number": _number_problems,
}

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def discovery_topic_problems(topic: str, prefix: str = "homeassistant") -> list[str]:
    """Problems with a discovery topic ``<prefix>/<component>/[<node_id>/]<object_id>/config``."""
    if not isinstance(topic, str):
        return [f"topic: must be a string, got {_type_name(topic)}"]
    head = f"{prefix}/"
    if not topic.startswith(head):
        return [f"topic {topic!r}: does not start with the discovery prefix {head!r}"]
    levels = topic[len(head) :].split("/")
    if len(levels) not in (3, 4) or levels[-1] != "config":
        return [f"topic {topic!r}: must be {prefix}/<component>/[<node_id>/]<object_id>/config"]
    problems: list[str] = []
    component = levels[0]
    if component not in COMPONENTS:
        problems.append(
            f"topic {topic!r}: component {component!r} is not one of {sorted(COMPONENTS)}"
        )
    ids = levels[1:-1]
    names = ("object_id",) if len(ids) == 1 else ("node_id", "object_id")
    for name, value in zip(names, ids, strict=True):
        if not _ID_RE.fullmatch(value):
            problems.append(f"topic {topic!r}: {name} {value!r} must match [a-zA-Z0-9_-]+")
    return problems


def config_problems(component: str, payload: dict[str, object]) -> list[str]:
    """Every problem found in a discovery config payload for ``component``."""
    if component not in COMPONENTS:
        return [f"component {component!r} is not one of {sorted(COMPONENTS)}"]
    raw = _as_mapping(payload)
    if raw is None:
        return [f"payload: must be a JSON object, got {_type_name(payload)}"]
    if not raw:
        return ["payload: is empty (an empty retained payload deletes the entity)"]

    config, written, problems = _expand(raw, ABBREVIATIONS, "")
    _resolve_base_topic(config, problems)
    problems += _check_keys(config, written, _COMPONENT_KEYS[component], "")

    for key in _REQUIRED_KEYS[component]:
        if key not in config:
            problems.append(f"{key}: missing required key")

    if "availability" in config:
        problems += _availability_problems(config["availability"], config.get("~"))
        if "availability_topic" in config:
            problems.append(
                "availability / availability_topic: must not be used together (exclusive)"
            )
    if "device" in config:
        problems += _device_problems(config["device"])
        if "unique_id" not in config:
            problems.append("unique_id: required when 'device' is set (device registry)")
    if "origin" in config:
        problems += _origin_problems(config["origin"])

    default_entity_id = config.get("default_entity_id")
    if isinstance(default_entity_id, str) and not default_entity_id.startswith(f"{component}."):
        problems.append(
            f"default_entity_id: must be '{component}.<object_id>', got {default_entity_id!r}"
        )

    problems += _CROSS_FIELD[component](config)
    return problems


def assert_valid(topic: str, payload: dict[str, object], prefix: str = "homeassistant") -> None:
    """Raise AssertionError listing every problem with a discovery topic and its payload."""
    problems = discovery_topic_problems(topic, prefix)
    head = f"{prefix}/"
    component = topic[len(head) :].split("/", 1)[0] if topic.startswith(head) else ""
    if component in COMPONENTS:
        problems += config_problems(component, payload)
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise AssertionError(f"invalid discovery message on {topic!r}:\n{listing}")
