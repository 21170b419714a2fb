"""A small JSON Schema checker for the AsyncAPI document (docs/mqtt-asyncapi.json): the
keywords the document uses (type, enum, const, required, properties, additionalProperties,
items, anyOf, minimum/maximum and their exclusive forms, min/maxLength, min/maxItems, $ref to
#/components/schemas). A keyword it does not know is an error, so a schema cannot be checked
more loosely than it reads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KNOWN = {
    "type",
    "enum",
    "const",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "anyOf",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "$ref",
    "description",
    "title",
    "default",
    "examples",
}

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def problems(  # noqa: C901, PLR0912  one branch per JSON Schema keyword it supports
    value: Any, schema: Mapping[str, Any], doc: Mapping[str, Any], at: str = ""
) -> list[str]:
    """What is wrong with ``value`` against ``schema`` (empty: nothing)."""
    unknown = set(schema) - KNOWN
    if unknown:
        return [f"{at or '/'}: schema keyword(s) not checked: {sorted(unknown)}"]
    if "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        return problems(value, node, doc, at)
    out: list[str] = []
    where = at or "/"
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, k) for k in kinds):
            return [f"{where}: {value!r} is not of type {kinds}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "const" in schema and (value != schema["const"] or type(value) is not type(schema["const"])):
        out.append(f"{where}: {value!r} is not {schema['const']!r}")
    if "anyOf" in schema:
        tries = [problems(value, sub, doc, at) for sub in schema["anyOf"]]
        if all(tries):
            out.append(f"{where}: matches none of anyOf: {tries}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                out.append(f"{where}: required field {key!r} missing")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                out += problems(item, props[key], doc, f"{at}/{key}")
            elif extra is False:
                out.append(f"{where}: field {key!r} is not in the schema")
            elif isinstance(extra, dict):
                out += problems(item, extra, doc, f"{at}/{key}")
    if isinstance(value, list):
        if "items" in schema:
            for i, item in enumerate(value):
                out += problems(item, schema["items"], doc, f"{at}/{i}")
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", 1e18):
            out.append(f"{where}: {len(value)} items is out of range")
    if isinstance(value, str) and (
        len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1e18)
    ):
        out.append(f"{where}: length {len(value)} is out of range")
    if _is(value, "number"):
        bounds = (
            ("minimum", value >= schema.get("minimum", value)),
            ("maximum", value <= schema.get("maximum", value)),
            (
                "exclusiveMinimum",
                "exclusiveMinimum" not in schema or value > schema["exclusiveMinimum"],
            ),
            (
                "exclusiveMaximum",
                "exclusiveMaximum" not in schema or value < schema["exclusiveMaximum"],
            ),
        )
        for key, ok in bounds:
            if not ok:
                out.append(f"{where}: {value!r} fails {key} {schema[key]}")
    return out
