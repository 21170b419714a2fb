"""The MQTT API as an AsyncAPI 3.0 document, generated from the code that implements it.

``python -m daemon.mqtt.asyncapi > docs/mqtt-asyncapi.json`` regenerates the checked-in copy;
a test fails when the two differ, so the document cannot drift from the daemon.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from daemon.mqtt.commands import COMMANDS, LONG_COMMANDS

_NUM = {"type": ["number", "null"]}
_STR = {"type": ["string", "null"]}
_BOOL = {"type": ["boolean", "null"]}

RIG_STATE_SCHEMA: dict[str, Any] = {  # made strict by _strict, below
    "type": "object",
    "description": "One rig, retained. Watts with power_source 'estimated' are not measured.",
    "properties": {
        "rig": {"type": "string"},
        "make": _STR,
        "model": _STR,
        "firmware": _STR,
        "driver": _STR,
        "group": {"type": "string"},
        "online": {"type": "boolean"},
        "error": _STR,
        "mode": {
            "type": "string",
            "enum": ["sleep", "low", "normal", "high", "limit", "off", "unknown"],
        },
        "mining": _BOOL,
        "hashrate_ths": _NUM,
        "power_w": _NUM,
        "power_source": {
            "type": ["string", "null"],
            "enum": ["reported", "estimated", "meter", None],
        },
        "power_limit_w": _NUM,
        "max_chip_temp_c": _NUM,
        "efficiency_j_per_th": _NUM,
        "efficiency": {
            "type": ["object", "null"],
            "description": "The J/TH the policies use for this rig: learned from its measured "
            "watts once trusted (docs/power-switches.md#learned-efficiency), else the "
            "catalogue's; null for a rig never identified.",
            "properties": {
                "source": {"type": "string", "enum": ["learned", "catalogue"]},
                "learned_from": {
                    "type": ["string", "null"],
                    "enum": ["meter", "reported", None],
                    "description": "what the samples' watts came from (null: none taken)",
                },
                "mode": {"type": "string", "description": "the mode the figure is for"},
                "j_per_th": _NUM,
                "catalogue_j_per_th": _NUM,
                "samples": {
                    "type": "integer",
                    "description": "samples taken in that mode (learned: trusted after 20 "
                    "over 15 minutes)",
                },
            },
        },
        "margin_usd_per_day": _NUM,
        "observed_at": _NUM,
        "desired": {
            "type": ["object", "null"],
            "properties": {
                "mode": {"type": "string"},
                "power_limit_w": _NUM,
                "by": {"type": "string", "description": "policy or guard that decided"},
                "reason": {"type": "string"},
                "held_back": {"type": "boolean"},
            },
        },
        "pinned": {
            "type": ["object", "null"],
            "properties": {
                "pin": {"type": "string"},
                "mode": {"type": "string"},
                "power_limit_w": _NUM,
                "until": {"type": "number"},
                "by": {"type": "string"},
                "why": {"type": "string"},
                "bypass_dwell": {"type": "boolean"},
            },
        },
        "not_responding": {"type": "boolean"},
        "outlets": {
            "type": ["object", "null"],
            "description": "null for a rig no outlet feeds; else its outlets as the last "
            "sweep read them: on (any reads on; false once all read off; null while one was "
            "not read), power_w (their sum, where all are metered and read)",
            "properties": {
                "names": {"type": "array", "items": {"type": "string"}},
                "on": _BOOL,
                "power_w": _NUM,
            },
        },
    },
}

FLEET_STATE_SCHEMA: dict[str, Any] = {  # made strict by _strict, below
    "type": "object",
    "description": "The fleet summary, retained, after every tick.",
    "properties": {
        "site": {"type": "string"},
        "at": {"type": "number"},
        "rigs": {"type": "integer"},
        "online": {"type": "integer"},
        "hashing": {"type": "integer"},
        "hashrate_ths": {"type": "number"},
        "power_kw": {"type": "number"},
        "power_estimated_rigs": {"type": "integer"},
        "curtailed": {"type": "integer", "description": "rigs held below normal (0 in dry-run)"},
        "curtailed_kw": {"type": "number", "description": "load shed (0 in dry-run)"},
        "would_curtail": {
            "type": ["integer", "null"],
            "description": "dry-run: rigs the decisions would hold below normal (null otherwise)",
        },
        "would_curtail_kw": {
            "type": ["number", "null"],
            "description": "dry-run: the load that would be shed (null otherwise)",
        },
        "not_responding": {"type": "integer"},
        "hashprice_usd_per_ph_day": _NUM,
        "hashprice_source": {
            "type": "string",
            "description": "the source of the hashprice (a feed's name, or 'operator' when "
            "hand-set); empty without a quote",
        },
        "hashprice_age_s": {**_NUM, "description": "the hashprice quote's age"},
        "power_price_usd_per_kwh": _NUM,
        "power_price_source": {"type": "string", "description": "as hashprice_source"},
        "power_price_age_s": {**_NUM, "description": "the power price quote's age"},
        "breakeven_hashprice_usd_per_ph_day": _NUM,
        "dry_run": {"type": "boolean"},
        "policies": {"type": "array", "items": {"type": "string"}},
        "failed_policies": {
            "type": "array",
            "items": {"type": "string"},
            "description": "policies that raised this tick: the fleet is held until they decide",
        },
        "pins": {"type": "integer"},
        "site_target": {
            "type": ["object", "null"],
            "properties": {"kw": {"type": "number"}, "until": {"type": "number"}},
        },
        "manual_market": {
            "type": "object",
            "description": "hand-set prices by input (hashprice, power_price): value and until",
            "additionalProperties": {
                "type": "object",
                "required": ["value", "until"],
                "additionalProperties": False,
                "properties": {"value": {"type": "number"}, "until": {"type": "number"}},
            },
        },
    },
}

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every command gets exactly one final answer (done, rejected or failed); "
    "set, curtail and site_target get an 'accepted' answer first.",
    "required": ["transaction", "command", "status", "reason", "site", "at"],
    "properties": {
        "transaction": _STR,
        "command": {"type": "string"},
        "status": {"type": "string", "enum": ["accepted", "done", "rejected", "failed"]},
        "reason": {"type": "string"},
        "site": {"type": "string"},
        "at": {"type": "number"},
        "result": {"type": "object"},
        "repeated": {
            "type": "boolean",
            "description": "a copy of an answer already sent (a redelivered request, or a "
            "publish that may not have reached the broker); absent on the first",
        },
    },
    "additionalProperties": False,
}


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (an object) with every property required and no other allowed, nested
    objects too: what the daemon publishes has exactly these fields, always."""
    props = schema["properties"]
    for sub in props.values():
        if "properties" in sub:
            _strict(sub)
    schema["required"] = list(props)
    schema["additionalProperties"] = False
    return schema


_strict(RIG_STATE_SCHEMA)
_strict(FLEET_STATE_SCHEMA)


_MODE = {"type": "string", "enum": ["sleep", "low", "normal", "high", "limit", "off", "unknown"]}

DECISION_EVENT_SCHEMA: dict[str, Any] = _strict(
    {
        "type": "object",
        "description": "Not retained. A rig's desired state changed: its mode, power limit, "
        "the policy or guard that decides it (by), or whether a guard holds it back. The "
        "reason's numbers moving alone is not a change.",
        "properties": {
            "rig": {"type": "string"},
            "mode": _MODE,
            "power_limit_w": _NUM,
            "by": {"type": "string"},
            "reason": {"type": "string"},
            "held_back": {"type": "boolean"},
            "dry_run": {"type": "boolean"},
            "at": {"type": "number"},
        },
    }
)

COMMAND_EVENT_SCHEMA: dict[str, Any] = _strict(
    {
        "type": "object",
        "description": "Not retained. A command was sent to a rig (or, in dry-run, not sent), "
        "with its result.",
        "properties": {
            "rig": {"type": "string"},
            "mode": _MODE,
            "power_limit_w": _NUM,
            "attempt": {"type": "integer"},
            "policy": {"type": "string"},
            "reason": {"type": "string"},
            "result": {"type": "string"},
            "detail": {"type": "string"},
            "dry_run": {"type": "boolean"},
            "at": {"type": "number"},
        },
    }
)

FAULT_EVENT_SCHEMA: dict[str, Any] = _strict(
    {
        "type": "object",
        "description": "Not retained. A rig stopped answering (problem), or answers again "
        "(recovered).",
        "properties": {
            "rig": {"type": "string"},
            "problem": {"type": "string"},
            "recovered": {"type": "boolean"},
            "at": {"type": "number"},
        },
    }
)

POWER_EVENT_SCHEMA: dict[str, Any] = _strict(
    {
        "type": "object",
        "description": "Not retained. A rig's outlets switched off for a power cycle (kind "
        "power_cycle: cause 'hung' or 'requested', the outlets switched or the switch's "
        "error; the loop switches them on again through the site ramp), a requested cycle "
        "refused at its turn (power_cycle_refused, with the reason), a rig still silent "
        "after its cycles of the day (needs_hands), or a thermal emergency cut (thermal_cut: "
        "a rig hashing at its critical temperature that ignored sleep had its outlets cut; "
        "the guard's reason, the outlets switched or the switch's error).",
        "properties": {
            "rig": {"type": "string"},
            "kind": {
                "type": "string",
                "enum": ["power_cycle", "power_cycle_refused", "needs_hands", "thermal_cut"],
            },
            "cause": {"type": ["string", "null"], "enum": ["hung", "requested", None]},
            "reason": _STR,
            "silent_s": _NUM,
            "cycle_today": {"type": ["integer", "null"]},
            "outlets": _STR,
            "error": _STR,
            "dry_run": {"type": "boolean"},
            "at": {"type": "number"},
        },
    }
)

INFO_SCHEMA: dict[str, Any] = _strict(
    {
        "type": "object",
        "description": "Retained once connected: what this daemon is and where it listens.",
        "properties": {
            "site": {"type": "string"},
            "rigs": {"type": "integer"},
            "dry_run": {"type": "boolean"},
            "policies": {"type": "array", "items": {"type": "string"}},
            "commands": {"type": "array", "items": {"type": "string"}},
            "requests": {"type": "string"},
            "responses": {"type": "string"},
            "version": {"type": "string"},
            "last_reload": {
                "type": ["object", "null"],
                "description": "null until the first reload (SIGHUP); then its outcome: ok, "
                "at, error (why a rejected configuration was refused; the one before it still "
                "runs) and the sections that changed",
            },
            "instance": {"type": "string", "description": "this process's id (a UUID)"},
            "started_at": {"type": "number"},
            "host": {"type": "string"},
            "pid": {"type": "integer"},
            "heartbeat_s": {"type": "number"},
            "at": {"type": "number", "description": "republished every heartbeat_s"},
            "standby": {
                "type": "boolean",
                "description": "true while another instance commands this site: this one "
                "holds every command (docs/mqtt.md, One controller per site)",
            },
            "others": {"type": "array", "items": {"type": "string"}},
        },
    }
)
# Published once more on a clean stop, with this flag added.
INFO_SCHEMA["properties"]["stopped"] = {"type": "boolean"}

INSTANCE_EVENT_SCHEMA: dict[str, Any] = _strict(
    {
        "type": "object",
        "description": "Not retained. Another instance announcing the same site was found, or "
        "is gone: which one commands the site (standby: this one holds its commands).",
        "properties": {
            "instance": {"type": "string"},
            "host": {"type": "string"},
            "pid": {"type": "integer"},
            "started_at": {"type": "number"},
            "standby": {"type": "boolean"},
            "conflict": {"type": ["string", "null"]},
            "others": {"type": "array", "items": {"type": "string"}},
            "at": {"type": "number"},
        },
    }
)

EVENT_KINDS = ("decision", "command", "fault", "instance", "power")


def document(version: str = "0.1.0") -> dict[str, Any]:
    """The AsyncAPI 3.0 document."""
    site = {
        "base_topic": {
            "description": "mqtt.base_topic in the configuration",
            "default": "rigpilot",
        },
        "site": {"description": "[site] name in the daemon's configuration"},
    }
    channels: dict[str, Any] = {
        "availability": {
            "address": "{base_topic}/{site}/bridge/state",
            "parameters": site,
            "description": "Retained 'online' / 'offline' (also the last will).",
            "messages": {"availability": {"$ref": "#/components/messages/availability"}},
        },
        "info": {
            "address": "{base_topic}/{site}/bridge/info",
            "parameters": site,
            "messages": {"info": {"$ref": "#/components/messages/info"}},
        },
        "fleetState": {
            "address": "{base_topic}/{site}/fleet/state",
            "parameters": site,
            "messages": {"fleetState": {"$ref": "#/components/messages/fleetState"}},
        },
        "rigState": {
            "address": "{base_topic}/{site}/rig/{rig}/state",
            "parameters": {
                **site,
                "rig": {"description": "rig id with characters outside [A-Za-z0-9_.-] as _"},
            },
            "messages": {"rigState": {"$ref": "#/components/messages/rigState"}},
        },
        **{
            f"{kind}Event": {
                "address": f"{{base_topic}}/{{site}}/event/{kind}",
                "parameters": site,
                "messages": {f"{kind}Event": {"$ref": f"#/components/messages/{kind}Event"}},
            }
            for kind in EVENT_KINDS
        },
    }
    operations: dict[str, Any] = {
        "publishAvailability": {"action": "send", "channel": {"$ref": "#/channels/availability"}},
        "publishInfo": {"action": "send", "channel": {"$ref": "#/channels/info"}},
        "publishFleetState": {"action": "send", "channel": {"$ref": "#/channels/fleetState"}},
        "publishRigState": {"action": "send", "channel": {"$ref": "#/channels/rigState"}},
        **{
            f"publish{kind.title()}Event": {
                "action": "send",
                "channel": {"$ref": f"#/channels/{kind}Event"},
            }
            for kind in EVENT_KINDS
        },
    }
    messages: dict[str, Any] = {
        "availability": {"payload": {"type": "string", "enum": ["online", "offline"]}},
        "info": {"payload": {"$ref": "#/components/schemas/Info"}},
        "fleetState": {"payload": {"$ref": "#/components/schemas/FleetState"}},
        "rigState": {"payload": {"$ref": "#/components/schemas/RigState"}},
        **{
            f"{kind}Event": {"payload": {"$ref": f"#/components/schemas/{kind.title()}Event"}}
            for kind in EVENT_KINDS
        },
        "answer": {
            "payload": {"$ref": "#/components/schemas/Answer"},
            "correlationId": {"location": "$message.header#/correlationData"},
        },
    }
    schemas: dict[str, Any] = {
        "RigState": RIG_STATE_SCHEMA,
        "FleetState": FLEET_STATE_SCHEMA,
        "Answer": ANSWER_SCHEMA,
        "Info": INFO_SCHEMA,
        "DecisionEvent": DECISION_EVENT_SCHEMA,
        "CommandEvent": COMMAND_EVENT_SCHEMA,
        "FaultEvent": FAULT_EVENT_SCHEMA,
        "InstanceEvent": INSTANCE_EVENT_SCHEMA,
        "PowerEvent": POWER_EVENT_SCHEMA,
    }
    for name, model in sorted(COMMANDS.items()):
        title = model.__name__
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for sub, sub_schema in schema.pop("$defs", {}).items():
            schemas[sub] = sub_schema
        schemas[title] = schema
        channels[f"request_{name}"] = {
            "address": f"{{base_topic}}/{{site}}/request/{name}",
            "parameters": site,
            "description": (model.__doc__ or "").strip().splitlines()[0],
            "messages": {title: {"$ref": f"#/components/messages/{title}"}},
        }
        channels[f"response_{name}"] = {
            "address": f"{{base_topic}}/{{site}}/response/{name}",
            "parameters": site,
            "description": "Answers for clients without MQTT 5 response topics; MQTT 5 "
            "clients may name a response topic under {base_topic}/{site}/response/ instead.",
            "messages": {"answer": {"$ref": "#/components/messages/answer"}},
        }
        messages[title] = {
            "payload": {"$ref": f"#/components/schemas/{title}"},
            "correlationId": {"location": "$message.header#/correlationData"},
        }
        operations[f"receive_{name}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/request_{name}"},
            "description": "long: answered 'accepted', then 'done' or 'failed' once observed"
            if name in LONG_COMMANDS
            else "answered once: 'done' or 'rejected'",
            "reply": {
                "channel": {"$ref": f"#/channels/response_{name}"},
                "address": {"location": "$message.header#/responseTopic"},
            },
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "rigpilot control room",
            "version": version,
            "description": "State out, commands in, every command answered. See docs/mqtt.md.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "site": {
                "host": "broker.example:8883",
                "protocol": "secure-mqtt",
                "protocolVersion": "5",
                "security": [{"$ref": "#/components/securitySchemes/password"}],
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "password": {
                    "type": "userPassword",
                    "description": "Mosquitto password file and ACL: docs/mosquitto/acl",
                }
            },
        },
    }


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
