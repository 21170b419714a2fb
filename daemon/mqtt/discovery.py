"""Home Assistant MQTT discovery: a device per rig and one for the fleet (docs/mqtt.md).

Pure: builds ``(topic, config)`` pairs. Every entity reads the retained state documents the
bridge publishes anyway (``value_template`` picks its field), commands go through the same
``request/set`` topic as any control-room client, and availability follows both the daemon
(``bridge/state``, with its last will) and the rig (``online`` in its state).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Final

from daemon.mqtt.topics import Topics, rig_key
from policies.values import Capabilities, Identity, Mode

HA_PIN_S: Final = 30 * 86400
"""How long a mode chosen in Home Assistant holds (the longest pin allowed); ``auto`` ends it."""

SELECT_MODES: Final = (Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH, Mode.LIMIT)
"""The select offers each of these the rig's capabilities include; ``limit`` (a power limit on
top of the power mode) only with a limit range, and chosen there it asks for the top of the
range (with presets, the highest preset): the Power limit number sets the watts, where any
watts in the range are taken (not for presets)."""


def _object_id(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in text)


def _origin(version: str) -> dict[str, str]:
    return {
        "name": "rigpilot",
        "sw_version": version,
        "support_url": "https://github.com/rigpilot/rigpilot",
    }


def fleet_device_id(topics: Topics) -> str:
    return _object_id(f"rigpilot_{topics.site}")


def _availability(topics: Topics, rig_state: str | None = None) -> dict[str, Any]:
    items: list[dict[str, str]] = [{"topic": topics.availability}]
    if rig_state is not None:
        items.append(
            {
                "topic": rig_state,
                "value_template": "{{ 'online' if value_json.online else 'offline' }}",
            }
        )
    return {"availability": items, "availability_mode": "all"}


def _set_template(rig_id: str, mode_expr: str, extra: str = "") -> str:
    return (
        '{"rig": "'
        + rig_id
        + '", "mode": '
        + mode_expr
        + extra
        + f', "for_s": {HA_PIN_S}, "by": "home-assistant"'
        + "}"
    )


def _select_modes(caps: Capabilities) -> list[Mode]:
    return [
        m
        for m in SELECT_MODES
        if m in caps.modes and (m is not Mode.LIMIT or caps.power_limit_range_w is not None)
    ]


def _limit_part(caps: Capabilities) -> str:
    """The select's ``limit`` choice needs watts: the top of the rig's range."""
    if Mode.LIMIT not in _select_modes(caps):
        return ""
    assert caps.power_limit_range_w is not None
    top = caps.power_limit_range_w[1]
    return '{% if value == "limit" %}, "power_limit_w": ' + str(top) + "{% endif %}"


def rig_configs(
    topics: Topics,
    identity: Identity,
    caps: Capabilities,
    version: str,
    prefix: str = "homeassistant",
    *,
    outlets: Sequence[str] = (),
    metered: bool = False,
) -> list[tuple[str, dict[str, Any]]]:
    """Discovery configs for one rig's device; a rig fed by ``outlets`` also gets their
    ``switch`` (and, where every one is ``metered``, their power sensor) and ``off`` in its
    mode select."""
    rig_id = identity.rig_id
    key = _object_id(rig_key(rig_id))
    node = fleet_device_id(topics)
    state = topics.rig_state(rig_id)
    device: dict[str, Any] = {
        "identifiers": [f"{node}_{key}"],
        "name": f"{identity.model} {rig_id}",
        "manufacturer": identity.make.value.capitalize(),
        "model": identity.model,
        "sw_version": identity.firmware,
        "via_device": node,
    }
    if identity.serial:
        device["serial_number"] = identity.serial
    common = {"device": device, "origin": _origin(version), **_availability(topics, state)}

    def entity(component: str, name: str, **config: Any) -> tuple[str, dict[str, Any]]:
        object_id = f"{key}_{name}"
        payload = {
            "name": config.pop("title"),
            "unique_id": f"{node}_{object_id}",
            "default_entity_id": f"{component}.{node}_{object_id}",
            **common,
            **config,
        }
        return f"{prefix}/{component}/{node}/{object_id}/config", payload

    request = topics.request("set")
    out = [
        entity(
            "sensor",
            "hashrate",
            title="Hashrate",
            state_topic=state,
            value_template="{{ value_json.hashrate_ths }}",
            unit_of_measurement="TH/s",
            state_class="measurement",
            icon="mdi:pickaxe",
            suggested_display_precision=1,
        ),
        entity(
            "sensor",
            "temperature",
            title="Hottest chip",
            state_topic=state,
            value_template="{{ value_json.max_chip_temp_c }}",
            unit_of_measurement="°C",
            device_class="temperature",
            state_class="measurement",
        ),
        entity(
            "sensor",
            "power",
            title="Power",
            state_topic=state,
            value_template="{{ value_json.power_w }}",
            unit_of_measurement="W",
            device_class="power",
            state_class="measurement",
        ),
        entity(
            "sensor",
            "efficiency",
            title="Efficiency",
            state_topic=state,
            value_template="{{ value_json.efficiency_j_per_th }}",
            unit_of_measurement="J/TH",
            state_class="measurement",
            icon="mdi:flash",
        ),
        entity(
            "sensor",
            "margin",
            title="Margin",
            state_topic=state,
            value_template="{{ value_json.margin_usd_per_day }}",
            unit_of_measurement="USD/d",
            state_class="measurement",
            icon="mdi:cash",
        ),
        entity(
            "switch",
            "mining",
            title="Mining",
            state_topic=state,
            command_topic=request,
            value_template="{{ 'ON' if value_json.mining else 'OFF' }}",
            state_on="ON",
            state_off="OFF",
            payload_on=_set_template(rig_id, '"normal"'),
            payload_off=_set_template(rig_id, '"sleep"'),
            icon="mdi:pickaxe",
        ),
        entity(
            "select",
            "mode",
            title="Mode",
            state_topic=state,
            command_topic=request,
            options=[
                "auto",
                *(["off"] if outlets else []),
                *(m.value for m in _select_modes(caps)),
            ],
            value_template="{{ value_json.pinned.mode if value_json.pinned else 'auto' }}",
            command_template=_set_template(rig_id, '"{{ value }}"', _limit_part(caps)),
        ),
    ]
    if (
        caps.power_limit
        and caps.power_limit_range_w is not None
        and caps.power_limit_presets_w is None  # presets (VNish): not any watts in between
    ):
        lo, hi = caps.power_limit_range_w
        out.append(
            entity(
                "number",
                "power_limit",
                title="Power limit",
                state_topic=state,
                command_topic=request,
                min=lo,
                max=hi,
                step=50,
                mode="box",
                unit_of_measurement="W",
                device_class="power",
                # No limit set: "None" (Home Assistant's payload_reset) shows no value, rather
                # than a number the rig is not held to.
                value_template="{{ value_json.power_limit_w if value_json.power_limit_w "
                "is not none else 'None' }}",
                payload_reset="None",
                command_template=_set_template(
                    rig_id, '"limit"', ', "power_limit_w": {{ value | int }}'
                ),
            )
        )
    if outlets:
        out += _outlet_entities(entity, topics, rig_id, state, request, metered)
    return out


def _outlet_entities(
    entity: Callable[..., tuple[str, dict[str, Any]]],
    topics: Topics,
    rig_id: str,
    state: str,
    request: str,
    metered: bool,
) -> list[tuple[str, dict[str, Any]]]:
    """The outlets feeding a rig: a switch (off asks ``set`` ``off``: firmware sleep, then the
    outlets; on asks ``auto``: the policies decide again, and a rig they want running is
    powered on through the site ramp), a power-cycle button (asks ``power_cycle``: within
    the same limits as every cycle) and, where metered, their power. All follow the daemon's
    availability only: a hung rig does not answer, and that is when it is cycled."""
    daemon_only = _availability(topics)
    out = [
        entity(
            "switch",
            "outlet",
            title="Outlet",
            state_topic=state,
            command_topic=request,
            value_template="{{ 'None' if value_json.outlets.on is none else "
            "('ON' if value_json.outlets.on else 'OFF') }}",
            state_on="ON",
            state_off="OFF",
            payload_on=_set_template(rig_id, '"auto"'),
            payload_off=_set_template(rig_id, '"off"'),
            device_class="outlet",
            icon="mdi:power-socket",
            **daemon_only,
        ),
        entity(
            "button",
            "power_cycle",
            title="Power cycle",
            command_topic=topics.request("power_cycle"),
            payload_press=json.dumps({"rig": rig_id, "by": "home-assistant"}),
            device_class="restart",
            **daemon_only,
        ),
    ]
    if metered:
        out.append(
            entity(
                "sensor",
                "outlet_power",
                title="Outlet power draw",
                state_topic=state,
                value_template="{{ value_json.outlets.power_w }}",
                unit_of_measurement="W",
                device_class="power",
                state_class="measurement",
                **daemon_only,
            )
        )
    return out


def fleet_configs(
    topics: Topics, version: str, prefix: str = "homeassistant"
) -> list[tuple[str, dict[str, Any]]]:
    """Discovery configs for the fleet device."""
    node = fleet_device_id(topics)
    device = {
        "identifiers": [node],
        "name": f"rigpilot {topics.site}",
        "manufacturer": "rigpilot",
        "model": "fleet controller",
        "sw_version": version,
    }
    common = {"device": device, "origin": _origin(version), **_availability(topics)}

    def sensor(name: str, title: str, template: str, **config: Any) -> tuple[str, dict[str, Any]]:
        payload = {
            "name": title,
            "unique_id": f"{node}_{name}",
            "default_entity_id": f"sensor.{node}_{name}",
            "state_topic": topics.fleet,
            "value_template": template,
            **common,
            **config,
        }
        return f"{prefix}/sensor/{node}/{name}/config", payload

    return [
        sensor(
            "hashprice",
            "Hashprice",
            "{{ value_json.hashprice_usd_per_ph_day }}",
            unit_of_measurement="USD/PH/d",
            state_class="measurement",
            icon="mdi:bitcoin",
        ),
        sensor(
            "power_price",
            "Power price",
            "{{ value_json.power_price_usd_per_kwh }}",
            unit_of_measurement="USD/kWh",
            state_class="measurement",
            icon="mdi:cash",
        ),
        sensor(
            "breakeven",
            "Break-even hashprice",
            "{{ value_json.breakeven_hashprice_usd_per_ph_day }}",
            unit_of_measurement="USD/PH/d",
            state_class="measurement",
            icon="mdi:scale-balance",
        ),
        sensor(
            "hashrate",
            "Fleet hashrate",
            "{{ value_json.hashrate_ths }}",
            unit_of_measurement="TH/s",
            state_class="measurement",
            icon="mdi:pickaxe",
        ),
        sensor(
            "power",
            "Fleet power",
            "{{ value_json.power_kw }}",
            unit_of_measurement="kW",
            device_class="power",
            state_class="measurement",
        ),
        sensor(
            "curtailed",
            "Curtailed",
            "{{ value_json.curtailed_kw }}",
            unit_of_measurement="kW",
            device_class="power",
            state_class="measurement",
        ),
        sensor(
            "policy_state",
            "Policy state",
            "{{ ('dry-run' if value_json.dry_run else 'live') ~ ': ' ~ "
            "(value_json.policies | join(', ')) ~ "
            "(' (site target ' ~ value_json.site_target.kw ~ ' kW)' "
            "if value_json.site_target else '') }}",
            icon="mdi:robot",
        ),
    ]
