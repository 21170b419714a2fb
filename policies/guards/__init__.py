"""The guards: always on, pure, configurable. They turn policy intents into the desired state of
every rig (docs/guards.md).

Precedence, highest first: operator overrides (lowering, or raising where nothing below
forbids it) -> thermal protection -> stale-input fail-safe -> hysteresis and minimum dwell ->
the site's power-up ramp. Rigs without an intent keep their setting; rigs without a fresh
observation are only lowered, and only by an override.
"""

from __future__ import annotations

from policies.guards.core import apply_guards
from policies.guards.model import (
    DWELL,
    HYSTERESIS,
    NO_INTENT,
    NO_OBSERVATION,
    OVERRIDE,
    RAMP,
    STALE_INPUT,
    THERMAL,
    Desired,
    FailSafe,
    GuardConfig,
    GuardState,
    Override,
    RampGrant,
    RigGuardState,
    Setting,
)

__all__ = [
    "DWELL",
    "HYSTERESIS",
    "NO_INTENT",
    "NO_OBSERVATION",
    "OVERRIDE",
    "RAMP",
    "STALE_INPUT",
    "THERMAL",
    "Desired",
    "FailSafe",
    "GuardConfig",
    "GuardState",
    "Override",
    "RampGrant",
    "RigGuardState",
    "Setting",
    "apply_guards",
]
