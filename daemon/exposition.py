"""Prometheus text exposition written directly, for the per-rig series.

``prometheus_client`` formats every sample through its generic path (about 20 µs each); at
10,000 rigs that is 130,000 samples and 2 to 3 s of CPU per scrape. The per-rig families are
plain gauges with a few string labels, so they are written here as text (the same format:
the classic text format 0.0.4, whose HELP, TYPE and sample lines OpenMetrics shares for
gauges), once per tick, and served from that cache until the next tick.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

from prometheus_client.utils import floatToGoString

_number = cast("Callable[[float], str]", floatToGoString)
"""A sample value as prometheus_client writes it (``3422.0``, ``1e+20``, ``+Inf``, ``NaN``)."""


def escape(value: str) -> str:
    """A label value as the exposition writes it (backslash, double quote, newline)."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def gauge_family(name: str, doc: str, samples: Iterable[tuple[str, float]]) -> str:
    """One gauge family: HELP, TYPE, then ``name<labels> value`` per (labels text, value)."""
    help_text = doc.replace("\\", r"\\").replace("\n", r"\n")
    lines = [f"# HELP {name} {help_text}\n# TYPE {name} gauge\n"]
    lines.extend(f"{name}{label} {_number(value)}\n" for label, value in samples)
    return "".join(lines)
