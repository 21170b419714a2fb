"""The one model of firmware transitions: how long a commanded rig takes to settle, and what
the change costs in hash.

A rig woken from sleep initialises its boards (drawing power, hashing nothing), then ramps its
frequency up to the new mode's; a step down takes seconds. A rig woken from ``off`` (its outlet
switched on) boots from cold first, which takes longer (:data:`COLD_BOOT_S`). :data:`STOCK` is
that timing; the drivers give it per firmware (``Capabilities.transition``), the daemon and the
backtest use it (:mod:`policies.transition`, :mod:`policies.off`), and the simulator's rigs
follow the same figures (``simulator/physics.py`` imports them), so the backtest, which drives
the simulator's physics, sees exactly the transitions the daemon expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

BOOT_S: Final = 45.0
"""Boards initialising after a wake-up from sleep: power drawn, nothing hashed."""
COLD_BOOT_S: Final = 90.0
"""From power applied (an outlet switched on, a reboot) until the boards hash: the control
board boots (the rig does not answer meanwhile) and the boards initialise, drawing the boot
power share throughout. A wake from ``off`` takes this instead of :data:`BOOT_S`."""
RAMP_FROM: Final = 0.3
"""The share of nominal frequency the boards start hashing at after booting."""
RAMP_UP_PER_S: Final = 1.0 / 150.0
"""Frequency ramps up by this share of nominal per second (0 to nominal in 150 s)."""
RAMP_DOWN_PER_S: Final = 1.0 / 4.0
"""And drops within a few seconds."""
BOOT_POWER_SHARE: Final = 0.15
"""What booting boards draw, as a share of nameplate power."""

MODE_FREQ: Final[Mapping[str, float]] = {
    "sleep": 0.0,
    "off": 0.0,
    "low": 0.7,
    "normal": 1.0,
    "high": 1.12,
    "limit": 1.0,  # at most normal under a limit: the slowest ramp it can need
}
"""Each mode's frequency as a share of nominal (keyed by the mode's value: a ``Mode`` is a
``str``, so ``MODE_FREQ[Mode.LOW]`` works, and this module needs no import)."""


@dataclass(frozen=True, slots=True)
class Transition:
    """A firmware's transition timing."""

    boot_s: float = BOOT_S
    cold_boot_s: float = COLD_BOOT_S
    ramp_from: float = RAMP_FROM
    ramp_up_per_s: float = RAMP_UP_PER_S
    ramp_down_per_s: float = RAMP_DOWN_PER_S
    boot_power_share: float = BOOT_POWER_SHARE

    def boot_from(self, before: str) -> float:
        """Seconds the boards boot before hashing when woken from ``before``: the cold boot
        from ``off``, the warm one otherwise (sleep, or an unknown state)."""
        return self.cold_boot_s if before == "off" else self.boot_s

    def settle_s(self, before: str, after: str) -> float:
        """Seconds from a change ``before`` -> ``after`` until the rig runs in ``after``."""
        f0, f1 = MODE_FREQ.get(before), MODE_FREQ.get(after)
        if f1 is None:  # unknown target: nothing to expect
            return 0.0
        if f1 == 0.0:
            return (f0 if f0 is not None else 1.0) / self.ramp_down_per_s
        if not f0:  # waking (or from an unknown state: assume the worst, a wake-up)
            return self.boot_from(before) + max(0.0, f1 - self.ramp_from) / self.ramp_up_per_s
        if f1 >= f0:
            return (f1 - f0) / self.ramp_up_per_s
        return (f0 - f1) / self.ramp_down_per_s

    def lost_hash_s(self, before: str, after: str) -> float:
        """Seconds of ``after``'s full hashrate lost while getting there (booting, then the
        ramp's shortfall), compared with a rig that would be in ``after`` at once. Zero for a
        step down (it sheds hash it was told to shed)."""
        f0, f1 = MODE_FREQ.get(before), MODE_FREQ.get(after)
        if not f1:
            return 0.0
        if not f0:
            ramp = max(0.0, f1 - self.ramp_from)
            start = min(f1, self.ramp_from)
            # Boot: nothing. Ramp: a linear climb from ``start`` to ``f1``.
            climb = (ramp / self.ramp_up_per_s) * (f1 - (start + f1) / 2) / f1
            return self.boot_from(before) + climb
        if f1 <= f0:
            return 0.0
        return ((f1 - f0) / self.ramp_up_per_s) * ((f1 - f0) / 2) / f1


STOCK: Final = Transition()
