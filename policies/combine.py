"""Combining several policies' intents: the most power-restrictive one wins, per rig."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from policies.api import Intent, RigView
from policies.builtin import mode_label, power_order_key
from policies.values import RigId


def combine(
    intents_by_policy: Sequence[Mapping[RigId, Intent]],
    fleet: Sequence[RigView] = (),
) -> Mapping[RigId, Intent]:
    """One intent per rig: among all policies' intents for it, the one of least expected power.

    Power is expected from the rig's points in ``fleet`` (see
    :func:`policies.builtin.power_order_key`; a rig not in ``fleet`` orders by mode alone:
    off < sleep < low < limit < normal < high). Ties go to the earlier policy in
    ``intents_by_policy``. The winner keeps its ``policy``; its reason gains a note naming each
    overruled policy with what it wanted and why, and the policies that agreed. A rig only one
    policy has an opinion on gets that intent unchanged; rigs no policy mentions are left out.
    Raises ValueError when an intent is filed under another rig's id. Inputs are not modified.
    """
    rigs = {rig.rig_id: rig for rig in fleet}
    candidates: dict[RigId, list[Intent]] = {}
    for intents in intents_by_policy:
        for rig_id, intent in intents.items():
            if intent.rig_id != rig_id:
                raise ValueError(
                    f"policy {intent.policy!r} filed an intent for {intent.rig_id!r} "
                    f"under {rig_id!r}"
                )
            candidates.setdefault(rig_id, []).append(intent)

    combined: dict[RigId, Intent] = {}
    for rig_id, options in candidates.items():
        if len(options) == 1:
            combined[rig_id] = options[0]
            continue
        rig = rigs.get(rig_id)
        winner = min(options, key=lambda i: power_order_key(rig, i.mode, i.power_limit_w))
        others = tuple(i for i in options if i is not winner)
        if not others:
            combined[rig_id] = winner
            continue
        # The note is written when the reason is read (most never are), from the intents.
        combined[rig_id] = Intent(
            winner.rig_id,
            winner.mode,
            (_annotated, (winner, others)),
            winner.policy,
            winner.power_limit_w,
        )
    return combined


def _annotated(args: tuple[Intent, tuple[Intent, ...]]) -> str:
    """The winner's reason with a note naming the overruled and the agreeing policies."""
    winner, others = args
    same = (winner.mode, winner.power_limit_w)
    agreed = [i.policy for i in others if (i.mode, i.power_limit_w) == same]
    overruled = [
        f"{i.policy} wanted {mode_label(i.mode, i.power_limit_w)}: {i.reason}"
        for i in others
        if (i.mode, i.power_limit_w) != same
    ]
    notes = []
    if overruled:
        notes.append("overrules " + "; ".join(overruled))
    if agreed:
        notes.append("agreed by " + ", ".join(agreed))
    return f"{winner.reason} [{' | '.join(notes)}]"
