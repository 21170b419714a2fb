"""Break-even per rig and per mode: an observation, the model catalogue, and the prices.

The current mode uses what the rig measures (hashrate, and power as reported, or estimated and
flagged); the other modes use the catalogue's rated figures scaled by how the rig performs
against its rating now (a rig with a dead board makes two thirds of its rated hashrate in
every mode). Sleep costs its control board's few watts and earns nothing.
"""

from __future__ import annotations

from drivers import catalogue
from policies.economics import BreakEven, Economics, ModePoint, breakeven
from policies.values import Mode, Observation, PowerSource

HASHING_MODES = (Mode.LOW, Mode.NORMAL, Mode.HIGH)


_LOOKUP = object()


def mode_points(
    obs: Observation, modes: frozenset[Mode], entry: catalogue.ModelEntry | object | None = _LOOKUP
) -> list[ModePoint]:
    """What ``obs``'s rig would do in each of ``modes`` it supports (sleep always included).

    ``entry`` is the rig's catalogue entry (None: not in the catalogue); pass the driver's, on
    the hot path, to skip the lookup. A model not in the catalogue gets only its measured
    current mode (when hashing) and sleep.
    """
    if entry is _LOOKUP:
        entry = catalogue.lookup(obs.identity.make.value, obs.identity.model)
    assert entry is None or isinstance(entry, catalogue.ModelEntry)
    points = [ModePoint(Mode.SLEEP, 0.0, catalogue.SLEEP_POWER_W, PowerSource.ESTIMATED)]
    current = entry.figures(obs.mode) if entry is not None else None
    health = 1.0
    if current is not None and obs.mining and obs.hashrate_ths > 0:
        health = obs.hashrate_ths / current.hashrate_ths
    for mode in HASHING_MODES:
        if mode not in modes:
            continue
        if mode is obs.mode and obs.mining and obs.power_w is not None:
            points.append(
                ModePoint(
                    mode, obs.hashrate_ths, obs.power_w, obs.power_source or PowerSource.ESTIMATED
                )
            )
            continue
        figures = entry.figures(mode) if entry is not None else None
        if figures is None:
            continue
        ths = figures.hashrate_ths * health
        points.append(ModePoint(mode, ths, ths * figures.j_per_th, PowerSource.ESTIMATED))
    return points


def rig_breakeven(
    obs: Observation,
    modes: frozenset[Mode],
    hashprice_usd_per_ph_day: float,
    price_per_kwh: float,
    terms: Economics,
) -> list[BreakEven]:
    """Margin and break-even prices of ``obs``'s rig in each mode it supports."""
    return [
        breakeven(p, hashprice_usd_per_ph_day, price_per_kwh, terms)
        for p in mode_points(obs, modes)
    ]
