"""Each rig's efficiency learned from measured watts: the catalogue's J/TH corrected over time.

The catalogue rates a model (its J/TH in each mode); a given rig is rarely exactly that (a
worn PSU, dust, a hot row). Where its watts are measured — by a metered outlet
(``power_source = meter``) or by its own PSU (``reported``) — each reading taken while it runs
settled in a hashing mode is a sample of its real W and TH/s in that mode. Per rig and per
mode this keeps a running estimate, and once it is trusted the rig's mode points use it
(:func:`daemon.rig_economics.mode_points`):

- the modes it was learned in, at their learned J/TH;
- its other modes, at the catalogue's J/TH times the learned / catalogue ratio of its best
  known mode (the one with the most samples): a rig that draws 10 % more than rated in normal
  is taken to draw 10 % more in low and high too.

The estimate (:func:`update`, a pure function):

- exponentially weighted means of the watts and of the hashrate, with time constant
  :data:`TAU_S`; while the estimate is young each sample weighs at least 1/n (a plain mean of
  the first samples), and a gap between samples counts as at most :data:`MAX_STEP_S` (a rig
  back from a week asleep does not swap its estimate for one reading);
- the J/TH is the ratio of the two means (steadier than a mean of ratios when the hashrate
  reading is noisy);
- trusted after :data:`TRUST_SAMPLES` samples spanning :data:`TRUST_SPAN_S`;
- a sample whose J/TH is more than :data:`OUTLIER_SHARE` from the estimate's (once it has
  :data:`CHECK_AFTER` samples) is rejected; :data:`RESET_AFTER` rejected in a row means the
  rig has changed (a PSU swapped, a board replaced), and learning starts again from there.

Which readings are samples (:func:`sample_of`): observed hashing in low, normal or high, not
settling after a change (policies/transition.py), with measured watts (meter or reported,
never an estimate), a hashrate between half and 1.3 times the catalogue's for that mode and a
J/TH between 0.6 and 2 times its rating (anything else is a rig in trouble or a wiring mistake,
not its efficiency). A meter outranks the rig's own report: once learned from a meter, a
reported sample (the meter unread that tick) is ignored; a meter sample replaces an estimate
learned from reports. Rigs whose watts are only estimated keep the catalogue.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from drivers import catalogue
from drivers.catalogue import ModeFigures, ModelEntry
from policies.values import HASHING_MODES, Mode, Observation, PowerSource

TAU_S: Final = 3600.0
"""Time constant of the running means: an hour's samples carry about 63 % of the weight."""
MAX_STEP_S: Final = 300.0
"""The longest gap between two samples counted as such."""
TRUST_SAMPLES: Final = 20
"""Samples in a mode before its estimate is used."""
TRUST_SPAN_S: Final = 900.0
"""And the time they must span (first to last)."""
OUTLIER_SHARE: Final = 0.15
"""A sample whose J/TH is further than this share from the estimate's is rejected."""
CHECK_AFTER: Final = 5
"""Samples before outliers are rejected (a plain mean of the first ones)."""
RESET_AFTER: Final = 20
"""Rejected samples in a row after which the rig is taken to have changed: learning restarts."""
HASH_SHARE_RANGE: Final = (0.5, 1.3)
"""Measured / rated hashrate of the mode for a reading to be a sample."""
JTH_SHARE_RANGE: Final = (0.6, 2.0)
"""Measured / rated J/TH of the mode for a reading to be a sample."""

LEARNED_FROM: Final = (PowerSource.METER, PowerSource.REPORTED)
"""The power sources learned from, best first."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of a rig settled in a hashing mode, with measured watts."""

    at: float
    power_w: float
    hashrate_ths: float
    source: PowerSource


@dataclass(frozen=True, slots=True)
class ModeEstimate:
    """What a rig was measured doing in one mode: running means of its watts and TH/s."""

    power_w: float
    hashrate_ths: float
    samples: int
    first_at: float
    last_at: float
    source: PowerSource
    rejected: int = 0
    """Samples rejected as outliers since the last one taken."""

    @property
    def j_per_th(self) -> float:
        return self.power_w / self.hashrate_ths

    @property
    def trusted(self) -> bool:
        return self.samples >= TRUST_SAMPLES and self.last_at - self.first_at >= TRUST_SPAN_S

    def to_dict(self) -> dict[str, Any]:
        return {
            "power_w": self.power_w,
            "hashrate_ths": self.hashrate_ths,
            "samples": self.samples,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "source": self.source.value,
            "rejected": self.rejected,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModeEstimate:
        """Inverse of :meth:`to_dict`; ValueError naming the field that is not right."""
        est = cls(
            power_w=float(data["power_w"]),
            hashrate_ths=float(data["hashrate_ths"]),
            samples=int(data["samples"]),
            first_at=float(data["first_at"]),
            last_at=float(data["last_at"]),
            source=PowerSource(data["source"]),
            rejected=int(data.get("rejected", 0)),
        )
        numbers = (est.power_w, est.hashrate_ths, est.first_at, est.last_at)
        if not all(math.isfinite(x) for x in numbers):
            raise ValueError(f"an estimate's figures must be finite numbers, got {dict(data)}")
        if est.power_w <= 0 or est.hashrate_ths <= 0 or est.samples < 1:
            raise ValueError(
                f"an estimate needs positive watts, hashrate and samples, got {dict(data)}"
            )
        if est.source not in LEARNED_FROM:
            raise ValueError(f"an estimate is learned from {est.source.value}: not a measurement")
        return est


def update(estimate: ModeEstimate | None, sample: Sample) -> ModeEstimate:
    """``estimate`` with ``sample`` taken in (or rejected: see the module's docstring)."""
    if estimate is None or _outranks(sample.source, estimate.source):
        return _first(sample)
    if _outranks(estimate.source, sample.source):
        return estimate  # learned from a meter: the rig's own report is not taken
    jth = sample.power_w / sample.hashrate_ths
    if estimate.samples >= CHECK_AFTER and abs(jth / estimate.j_per_th - 1.0) > OUTLIER_SHARE:
        if estimate.rejected + 1 >= RESET_AFTER:
            return _first(sample)
        return replace(estimate, rejected=estimate.rejected + 1)
    dt = min(max(sample.at - estimate.last_at, 0.0), MAX_STEP_S)
    weight = max(1.0 / (estimate.samples + 1), 1.0 - math.exp(-dt / TAU_S))
    return ModeEstimate(
        power_w=estimate.power_w + weight * (sample.power_w - estimate.power_w),
        hashrate_ths=estimate.hashrate_ths + weight * (sample.hashrate_ths - estimate.hashrate_ths),
        samples=estimate.samples + 1,
        first_at=estimate.first_at,
        last_at=max(estimate.last_at, sample.at),
        source=estimate.source,
    )


def _first(sample: Sample) -> ModeEstimate:
    return ModeEstimate(sample.power_w, sample.hashrate_ths, 1, sample.at, sample.at, sample.source)


def _outranks(a: PowerSource, b: PowerSource) -> bool:
    return a is PowerSource.METER and b is not PowerSource.METER


def sample_of(obs: Observation, entry: ModelEntry | None, *, settling: bool) -> Sample | None:
    """The sample ``obs`` is, or None (see the module's docstring for which readings are)."""
    source = obs.power_source
    if settling or entry is None or source not in LEARNED_FROM or not obs.mining:
        return None
    watts, ths = obs.power_w, obs.hashrate_ths
    if watts is None or watts <= 0 or ths <= 0 or obs.mode not in HASHING_MODES:
        return None
    rated = entry.figures(obs.mode)
    if rated is None or not steady_in_mode(ths, watts, rated):
        return None
    assert source is not None
    return Sample(obs.observed_at, watts, ths, source)


def steady_in_mode(hashrate_ths: float, power_w: float | None, rated: ModeFigures) -> bool:
    """A reading a rig runs at steadily in the mode ``rated`` rates: a hashrate within
    ``HASH_SHARE_RANGE`` of the rating and (where watts are known) a J/TH within
    ``JTH_SHARE_RANGE`` of it. Anything else is a rig ramping up or down while its firmware
    reports the mode, a rig in trouble or a wiring mistake: it teaches neither the learned
    efficiency nor the shares of daemon/rig_economics.py (the one place of this rule)."""
    if hashrate_ths <= 0 or rated.hashrate_ths <= 0:
        return False
    hash_share = hashrate_ths / rated.hashrate_ths
    if not HASH_SHARE_RANGE[0] <= hash_share <= HASH_SHARE_RANGE[1]:
        return False
    if power_w is None:
        return True
    jth_share = power_w / hashrate_ths / rated.j_per_th
    return JTH_SHARE_RANGE[0] <= jth_share <= JTH_SHARE_RANGE[1]


@dataclass(frozen=True, slots=True)
class RigEfficiency:
    """What one rig was measured doing, per mode, and what the policies use of it.

    ``make``, ``model`` and ``serial``: the rig it was learned on; another rig at the same
    address starts afresh. ``j_per_th``: the learned J/TH of each trusted mode; ``ratio``: learned /
    catalogue J/TH of the trusted mode with the most samples (``reference``), for the others.
    """

    make: str
    model: str
    serial: str | None
    modes: Mapping[Mode, ModeEstimate]
    j_per_th: Mapping[Mode, float] = field(default_factory=dict)
    ratio: float | None = None
    reference: Mode | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "make": self.make,
            "model": self.model,
            "serial": self.serial,
            "modes": {m.value: e.to_dict() for m, e in self.modes.items()},
        }


def rig_efficiency(
    make: str,
    model: str,
    serial: str | None,
    modes: Mapping[Mode, ModeEstimate],
    entry: ModelEntry | None,
) -> RigEfficiency:
    """A rig's estimates with what the policies use of them worked out."""
    trusted = {m: e for m, e in modes.items() if e.trusted}
    jth = {m: e.j_per_th for m, e in trusted.items()}
    ratio, reference = None, None
    if trusted and entry is not None:
        rated = [(e.samples, m) for m, e in trusted.items() if entry.figures(m) is not None]
        if rated:
            reference = max(rated, key=lambda x: (x[0], x[1].power_rank))[1]
            figures = entry.figures(reference)
            assert figures is not None
            ratio = jth[reference] / figures.j_per_th
    return RigEfficiency(make, model, serial, dict(modes), jth, ratio, reference)


def from_dict(data: Mapping[str, Any]) -> RigEfficiency:
    """Inverse of :meth:`RigEfficiency.to_dict`, with the catalogue entry of the row's model;
    ValueError/KeyError/TypeError when it is not one (the caller names the rig and starts it
    afresh)."""
    if data.get("version") != 1:
        raise ValueError(f"efficiency row version {data.get('version')!r}, expected 1")
    modes = {Mode(k): ModeEstimate.from_dict(v) for k, v in dict(data["modes"]).items()}
    if any(m not in HASHING_MODES for m in modes):
        raise ValueError(f"efficiency learned in a mode that does not hash: {sorted(modes)}")
    serial = data.get("serial")
    make, model = str(data["make"]), str(data["model"])
    entry = catalogue.lookup(make, model)
    return rig_efficiency(make, model, None if serial is None else str(serial), modes, entry)


def learn(
    rig: RigEfficiency | None, obs: Observation, entry: ModelEntry | None, *, settling: bool
) -> RigEfficiency | None:
    """``rig``'s efficiency after the reading ``obs``: the same object when ``obs`` is no
    sample (so a caller finds the rigs that changed by identity); a fresh one when the rig at
    that address is another (model or serial changed)."""
    ident = obs.identity
    if rig is not None and (rig.model != ident.model or rig.serial != ident.serial):
        rig = None
    found = sample_of(obs, entry, settling=settling)
    if found is None:
        return rig
    before = rig.modes.get(obs.mode) if rig is not None else None
    after = update(before, found)
    if after is before:
        return rig
    modes = {**rig.modes, obs.mode: after} if rig is not None else {obs.mode: after}
    return rig_efficiency(ident.make.value, ident.model, ident.serial, modes, entry)


@dataclass(frozen=True, slots=True)
class Shown:
    """A rig's efficiency as operators see it (``rigpilot status``, MQTT, metrics)."""

    source: str
    """``learned`` (a trusted estimate) or ``catalogue``."""
    learned_from: PowerSource | None
    mode: Mode
    j_per_th: float | None
    catalogue_j_per_th: float | None
    samples: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "learned_from": None if self.learned_from is None else self.learned_from.value,
            "mode": self.mode.value,
            "j_per_th": None if self.j_per_th is None else round(self.j_per_th, 2),
            "catalogue_j_per_th": (
                None if self.catalogue_j_per_th is None else round(self.catalogue_j_per_th, 2)
            ),
            "samples": self.samples,
        }


def shown(rig: RigEfficiency | None, entry: ModelEntry | None) -> Shown:
    """The figure to show for a rig: its reference mode's learned J/TH when trusted; else the
    catalogue's normal J/TH, with the samples gathered so far in the mode with the most."""
    if rig is not None and rig.reference is not None:
        est = rig.modes[rig.reference]
        figures = entry.figures(rig.reference) if entry is not None else None
        return Shown(
            "learned",
            est.source,
            rig.reference,
            est.j_per_th,
            figures.j_per_th if figures is not None else None,
            est.samples,
        )
    catalogue_jth = entry.normal.j_per_th if entry is not None else None
    if rig is None or not rig.modes:
        return Shown("catalogue", None, Mode.NORMAL, catalogue_jth, catalogue_jth, 0)
    mode, est = max(rig.modes.items(), key=lambda x: x[1].samples)
    figures = entry.figures(mode) if entry is not None else None
    rated = figures.j_per_th if figures is not None else catalogue_jth
    return Shown("catalogue", est.source, mode, rated, rated, est.samples)
