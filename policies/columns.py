"""The fleet as columns: what the built-in policy and the guards read of every rig, as arrays.

The shell builds a :class:`FleetViews` from the ``RigView``\\ s it observed (once per tick, as it
builds the views). It is still the ``Sequence[RigView]`` every policy receives; the built-in
``breakeven`` policy and ``apply_guards`` also read its :attr:`FleetViews.columns` to decide
the common cases for all rigs at once, with numpy, instead of rig by rig. Each gives exactly
what it gives for a plain list of the same views (tests/test_columns.py checks it on random
fleets and runs): the columns are a faster route to the same answer, never a different one.

A rig whose points are not the shape ``daemon.rig_economics.mode_points`` makes (a mode twice,
a point for a mode other than sleep, low, normal or high), or with a number that is not finite
(a NaN is not "unread"), is marked irregular; the column code leaves it to the per-rig code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from math import isfinite
from typing import Final, overload

import numpy as np
import numpy.typing as npt

from policies.api import Intent, LazyReason, RigView
from policies.values import Mode, RigId

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]

# Mode codes: the four modes with points first (they index the point columns).
SLEEP, LOW, NORMAL, HIGH, OFF, LIMIT, UNKNOWN = range(7)
CODE_MODES: Final = (
    Mode.SLEEP,
    Mode.LOW,
    Mode.NORMAL,
    Mode.HIGH,
    Mode.OFF,
    Mode.LIMIT,
    Mode.UNKNOWN,
)
MODE_CODES: Final = {mode: code for code, mode in enumerate(CODE_MODES)}
POINT_MODES = 4  # SLEEP..HIGH have point columns
NONE = -1  # "no mode" (no intent, no previous setting)


class FleetColumns:
    """The arrays: one entry per rig, in fleet order (``ids``)."""

    __slots__ = (
        "group_codes",
        "groups",
        "has_point",
        "id_rank",
        "ids",
        "index",
        "max_point_w",
        "observed",
        "observed_at",
        "regular",
        "supported",
        "temp_c",
        "ths",
        "unique",
        "watts",
    )

    def __init__(self, views: Sequence[RigView]) -> None:
        n = len(views)
        ids = tuple(v.rig_id for v in views)
        self.ids: Final = ids
        self.index: Final = {rid: i for i, rid in enumerate(ids)}
        self.unique: Final = len(self.index) == n
        self.id_rank: Final[Ints] = np.empty(n, dtype=np.int64)
        self.id_rank[np.array(sorted(range(n), key=ids.__getitem__), dtype=np.int64)] = np.arange(n)
        ths = [[0.0] * n for _ in range(POINT_MODES)]
        watts = [[0.0] * n for _ in range(POINT_MODES)]
        has = [[False] * n for _ in range(POINT_MODES)]
        regular = [True] * n
        max_w = [-np.inf] * n
        masks: dict[frozenset[Mode], int] = {}
        mode_mask = [0] * n
        observed = [False] * n
        observed_at = [np.nan] * n
        temp = [np.nan] * n
        group_index: dict[str, int] = {}
        group_codes = [0] * n
        codes = MODE_CODES
        for i, view in enumerate(views):
            top = -np.inf
            for p in view.points:
                code = codes.get(p.mode, POINT_MODES)
                w = p.power_w
                if w > top:  # noqa: PLR1730 (max() over mixed numbers costs more)
                    top = w
                odd = code >= POINT_MODES or has[code][i]
                if odd or not (isfinite(w) and isfinite(p.hashrate_ths)):
                    regular[i] = False
                    continue
                has[code][i] = True
                ths[code][i] = p.hashrate_ths
                watts[code][i] = w
            max_w[i] = top
            modes = view.modes
            mask = masks.get(modes)
            if mask is None:
                mask = masks[modes] = sum(1 << c for c, m in enumerate(CODE_MODES) if m in modes)
            mode_mask[i] = mask
            obs = view.observation
            if obs is not None:
                observed[i] = True
                observed_at[i] = obs.observed_at
                t = obs.max_chip_temp_c
                if t is not None:
                    temp[i] = t
                if not (isfinite(obs.observed_at) and (t is None or isfinite(t))):
                    regular[i] = False  # a NaN is not "unread": Python's rules decide it
            g = group_index.get(view.group)
            if g is None:
                g = group_index[view.group] = len(group_index)
            group_codes[i] = g
        self.ths: Final[Floats] = np.array(ths, dtype=np.float64).reshape(POINT_MODES, n)
        self.watts: Final[Floats] = np.array(watts, dtype=np.float64).reshape(POINT_MODES, n)
        self.has_point: Final[Bools] = np.array(has, dtype=np.bool_).reshape(POINT_MODES, n)
        bits = np.array(mode_mask, dtype=np.int64)
        self.supported: Final[Bools] = np.array(
            [(bits >> c) & 1 == 1 for c in range(len(CODE_MODES))], dtype=np.bool_
        ).reshape(len(CODE_MODES), n)
        self.regular: Final[Bools] = np.array(regular, dtype=np.bool_)
        self.max_point_w: Final[Floats] = np.array(max_w, dtype=np.float64)
        self.observed: Final[Bools] = np.array(observed, dtype=np.bool_)
        self.observed_at: Final[Floats] = np.array(observed_at, dtype=np.float64)
        self.temp_c: Final[Floats] = np.array(temp, dtype=np.float64)
        self.groups: Final = group_index
        self.group_codes: Final[Ints] = np.array(group_codes, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)


class FleetViews(Sequence[RigView]):
    """The fleet's views, with their columns (built here, by the shell, when it is made)."""

    __slots__ = ("columns", "views")

    def __init__(self, views: Sequence[RigView]) -> None:
        self.views: Final = tuple(views)
        self.columns: Final = FleetColumns(self.views)

    def __len__(self) -> int:
        return len(self.views)

    @overload
    def __getitem__(self, index: int) -> RigView: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[RigView]: ...

    def __getitem__(self, index: int | slice) -> RigView | Sequence[RigView]:
        return self.views[index]

    def __iter__(self) -> Iterator[RigView]:
        return iter(self.views)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FleetViews):
            return self.views == other.views
        if isinstance(other, list | tuple):
            return self.views == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FleetViews({len(self.views)} rigs)"


class IntentColumns(Mapping[RigId, Intent]):
    """One policy's intents over a :class:`FleetViews`, as a mode code per rig (``NONE``: no
    intent), iterated in ``order`` (rig positions). Each ``Intent`` is made when first read,
    with the reason ``reason(position)`` gives (text or lazy), and kept. ``apply_guards`` reads
    the codes without making any."""

    __slots__ = ("_made", "codes", "fleet", "order", "policy", "reason")

    def __init__(
        self,
        fleet: FleetViews,
        codes: Ints,
        order: Ints,
        policy: str,
        reason: Callable[[int], str | LazyReason],
    ) -> None:
        self.fleet: Final = fleet
        self.codes: Final = codes
        self.order: Final = order
        self.policy: Final = policy
        self.reason: Final = reason
        self._made: dict[RigId, Intent] = {}

    def __getitem__(self, rig_id: RigId) -> Intent:
        made = self._made.get(rig_id)
        if made is not None:
            return made
        i = self.fleet.columns.index.get(rig_id)
        if i is None or self.codes[i] < 0:
            raise KeyError(rig_id)
        made = Intent(rig_id, CODE_MODES[self.codes[i]], self.reason(i), self.policy)
        self._made[rig_id] = made
        return made

    def __iter__(self) -> Iterator[RigId]:
        ids = self.fleet.columns.ids
        return (ids[i] for i in self.order.tolist())

    def __len__(self) -> int:
        return len(self.order)

    def __repr__(self) -> str:
        return f"IntentColumns({self.policy}, {len(self.order)} intents)"
