"""Break-even per rig and per mode: an observation, the model catalogue, and the prices.

The current mode uses what the rig measures (hashrate, and power as reported, or estimated and
flagged); the other modes use the catalogue's rated figures scaled by how the rig performs
against its rating now: its hashrate and its power as shares of the rated figures of the mode
it runs in (a rig with a dead board makes two thirds of its rated hashrate in every mode; a
worn one draws its rated power for less hash). A rig that is not hashing (asleep, or booting)
measures nothing of that: it is scored with the shares it was last measured at, remembered by
the caller (:func:`rig_ratios`), else as rated. Sleep costs its control board's few watts and
earns nothing.

A rig in transition (commanded, and not yet settled: policies/transition.py) measures the
transition, not a mode: booting boards draw power and hash nothing, a ramp hashes a fraction.
Such a rig is scored on the catalogue's figures, its current mode included, as it will be once
settled; what it measures is used again once it has. A reading no rig runs at steadily in the
mode it reports (:func:`rig_ratios` refuses it) is treated the same way, whether or not the
loop timed a change: a wake-up retried after the rig ignored it, a firmware still reporting
``normal`` on its way to sleep.

A rig whose efficiency was learned from measured watts (daemon/efficiency.py) is scored, in
every mode but the one it is measured in now, at its learned J/TH: the modes it was learned in
at theirs, the others at the catalogue's times its learned / catalogue ratio. Its hashrate
share still comes from what it measures (a dead board shows at once); the learned J/TH replaces
the power share of one reading.
"""

from __future__ import annotations

from daemon.efficiency import RigEfficiency, steady_in_mode
from drivers import catalogue
from policies.economics import ModePoint
from policies.values import HASHING_MODES, Mode, Observation, PowerSource

_LOOKUP = object()


Ratios = tuple[float, float]
"""A rig's measured hashrate and power as shares of its rating (:func:`rig_ratios`)."""


def rig_ratios(obs: Observation, entry: catalogue.ModelEntry | None) -> Ratios | None:
    """(measured / rated hashrate, measured / rated power) of a rig hashing in a mode the
    catalogue rates; None otherwise (asleep, booting, limited, unknown model). Power not
    reported is taken to scale with the hashrate.

    None too for a reading no rig runs at steadily in that mode
    (:func:`daemon.efficiency.steady_in_mode`, the rule the learned efficiency's samples
    follow too): a rig still ramping down or up while its firmware reports the mode (an M60S
    on API v3 read 0.3 TH/s and 218 W as "normal" on its way to sleep). Shares learnt from it
    would have every later power-up of that rig estimated at a few percent of its real draw,
    and the site ramp would let through many times its kW."""
    if entry is None or not obs.mining or obs.hashrate_ths <= 0:
        return None
    rated = entry.figures(obs.mode)
    if rated is None or rated.hashrate_ths <= 0:
        return None
    if not steady_in_mode(obs.hashrate_ths, obs.power_w, rated):
        return None
    hash_share = obs.hashrate_ths / rated.hashrate_ths
    if obs.power_w is None:
        return hash_share, hash_share
    return hash_share, obs.power_w / (rated.hashrate_ths * rated.j_per_th)


def mode_points(
    obs: Observation,
    modes: frozenset[Mode],
    entry: catalogue.ModelEntry | object | None = _LOOKUP,
    *,
    settling: bool = False,
    ratios: Ratios | None = None,
    learned: RigEfficiency | None = None,
) -> list[ModePoint]:
    """What ``obs``'s rig would do in each of ``modes`` it supports (sleep always included).

    ``entry`` is the rig's catalogue entry (None: not in the catalogue); pass the driver's, on
    the hot path, to skip the lookup. A model not in the catalogue gets only its measured
    current mode (when hashing) and sleep. ``settling``: the rig is in transition, so what it
    measures says nothing of its mode; every mode gets the catalogue's rated figures.
    ``ratios``: the shares the rig was last measured at (:func:`rig_ratios`), for a rig that
    measures none now (asleep, booting, settling); as rated without them. ``learned``: the
    rig's efficiency learned from measured watts (:func:`daemon.efficiency.learn`); its
    trusted J/TH replaces the power share in the modes not measured now.
    """
    if entry is _LOOKUP:
        entry = catalogue.lookup(obs.identity.make.value, obs.identity.model)
    assert entry is None or isinstance(entry, catalogue.ModelEntry)
    points = [ModePoint(Mode.SLEEP, 0.0, catalogue.SLEEP_POWER_W, PowerSource.ESTIMATED)]
    measured = not (settling and entry is not None)
    own = rig_ratios(obs, entry) if measured else None
    hash_share, power_share = own or ratios or (1.0, 1.0)
    # A reading no rig runs at steadily in its mode (rig_ratios refuses it: ramping up after
    # a wake the loop did not time, or down) is a transition too: its mode is scored like the
    # others, not on what it measures now.
    rated_now = entry.figures(obs.mode) if entry is not None and obs.mining else None
    steady = measured and (own is not None or rated_now is None)
    for mode in HASHING_MODES:
        if mode not in modes:
            continue
        if steady and mode is obs.mode and obs.mining and obs.power_w is not None:
            points.append(
                ModePoint(
                    mode, obs.hashrate_ths, obs.power_w, obs.power_source or PowerSource.ESTIMATED
                )
            )
            continue
        figures = entry.figures(mode) if entry is not None else None
        if figures is None:
            continue
        ths = figures.hashrate_ths * hash_share
        if learned is not None and learned.reference is not None:
            jth = learned.j_per_th.get(mode)
            if jth is None:
                assert learned.ratio is not None  # set with the reference
                jth, est = figures.j_per_th * learned.ratio, learned.modes[learned.reference]
            else:
                est = learned.modes[mode]
            points.append(ModePoint(mode, ths, ths * jth, est.source))
            continue
        watts = figures.hashrate_ths * figures.j_per_th * power_share
        points.append(ModePoint(mode, ths, watts, PowerSource.ESTIMATED))
    return points
