"""What a replay runs: its settings, and the fleet's rigs grouped into classes of identical
rigs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from backtest.inputs import MAKE_MODES, Fleet
from drivers import catalogue
from policies.api import Site
from policies.economics import Economics
from policies.guards import (
    GuardConfig,
    RampGrant,
)
from policies.values import Mode
from simulator.models import ModelSpec


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """What the replay runs: the policies (by name, loaded by the caller), the guards' and
    site's settings, the loop's tick, and the ramp jitter's seed. ``exact`` calls the
    policies and guards at every tick (no call skipped); ``plain`` also shows every rig as a
    cohort of its own, never merged: the plain replay the cohort optimiser is tested against."""

    policies: tuple[str, ...] = ("breakeven",)
    guards: GuardConfig = field(default_factory=GuardConfig)
    site: Site = field(default_factory=Site)
    tick_s: float = 30.0
    seed: int = 0
    exact: bool = False
    plain: bool = False

    @property
    def economics(self) -> Economics:
        return self.site.economics


@dataclass(frozen=True, slots=True)
class RigClass:
    """Rigs that are physically and economically the same."""

    label: str
    spec: ModelSpec
    health: float
    ambient_c: float
    group: str
    modes: frozenset[Mode]
    entry: catalogue.ModelEntry | None
    first: int  # index of its first rig in the fleet
    count: int


def classes_of(fleet: Fleet) -> list[RigClass]:
    """The fleet's rigs grouped into classes, rigs numbered in file order."""
    out: list[RigClass] = []
    index = 0
    for g in fleet.groups:
        entry = catalogue.lookup(g.spec.make, g.spec.model)
        for health, count in g.healths():
            label = f"{g.spec.key}@{health:.3f}"
            if g.ambient_c != 25.0:
                label += f"/{g.ambient_c:g}C"
            if g.group:
                label += f"/{g.group}"
            modes = g.modes or MAKE_MODES[g.spec.make]
            out.append(
                RigClass(label, g.spec, health, g.ambient_c, g.group, modes, entry, index, count)
            )
            index += count
    return out


ProgressFn = Callable[[int, int], None]
"""Called with (rows done, rows in all) as a replay goes."""

RampFn = Callable[[tuple[RampGrant, ...]], None]
"""Told the ramp's memory after each guard step: the power-ups kept, with their start slots."""
