"""Per-tick save of the guards' state: 10,000 rigs, a row per rig written only when it changed.

Builds a 10,000-rig ``GuardState`` in memory and a real SQLite state database (WAL,
``synchronous=FULL``, as the daemon runs it) in a temporary directory, then for ``--ticks``
ticks changes ``--changed`` rigs (new ``RigGuardState`` objects, as the guards return for a rig
whose state changed; the others keep theirs) and times ``Persistence.save_tick`` (the guards'
changed rows, the reconciler, the loop state and the status line in one transaction).

Baseline, same run, on a second database: the same tick saved as before this change, the whole
guards' state as one JSON document (``GuardState.to_dict()``) with the same other documents.

Ends with ``RESULT rigs=... changed=... save_ms=... whole_document_ms=... ok=yes|no`` (medians;
ok: the restored state equals the saved one, and the save is at least 4× cheaper).

Usage: python -m bench.persist [--rigs 10000] [--changed 100] [--ticks 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.loop import ControlLoop, TickReport  # noqa: E402
from daemon.observer import Observer  # noqa: E402
from daemon.persist import Persistence  # noqa: E402
from daemon.reconciler import Actuator, Reconciler  # noqa: E402
from daemon.store import DB_NAME, Store  # noqa: E402
from drivers.inventory import Inventory  # noqa: E402
from market.service import Market  # noqa: E402
from policies.api import Site  # noqa: E402
from policies.guards import GuardConfig, GuardState, RigGuardState, Setting  # noqa: E402
from policies.values import Mode  # noqa: E402

T0 = 1_800_000_000.0
MODES = (Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH)


def make_loop() -> ControlLoop:
    observer = Observer(Inventory())
    return ControlLoop(
        observer=observer,
        market=Market({}),
        policies=[],
        site=Site(),
        guard_config=GuardConfig(),
        reconciler=Reconciler(),
        actuator=Actuator(observer.drivers),
    )


def tick_report(now: float) -> TickReport:
    return TickReport(now, 0, 0, 0.0, 0.0, 0, 0, 0, None, None, {}, {}, [])


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rigs", type=int, default=10_000)
    parser.add_argument("--changed", type=int, default=100, help="rigs changed per tick")
    parser.add_argument("--ticks", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(7)
    ids = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(args.rigs)]
    rigs = {
        rid: RigGuardState(
            Setting(rng.choice(MODES)), T0 - rng.uniform(0, 1e5), Setting(Mode.NORMAL), "breakeven"
        )
        for rid in ids
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "rows" / DB_NAME)
        whole = Store(Path(tmp) / "whole" / DB_NAME)
        loop = make_loop()
        persistence = Persistence(store, loop)
        loop.guard_state = GuardState(rigs=dict(rigs))
        persistence.save_tick(tick_report(T0))  # the first save writes every rig
        save_ms: list[float] = []
        whole_ms: list[float] = []
        for tick in range(1, args.ticks + 1):
            now = T0 + 30 * tick
            for rid in rng.sample(ids, args.changed):
                rigs[rid] = replace(rigs[rid], setting=Setting(rng.choice(MODES)), changed_at=now)
            loop.guard_state = GuardState(rigs=dict(rigs))
            report = tick_report(now)
            t = time.perf_counter()
            persistence.save_tick(report)
            save_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            whole.put(
                {
                    "guards": loop.guard_state.to_dict(),
                    "reconciler": loop.reconciler.to_dict(),
                    **loop.operator.to_docs(),
                    "status": persistence.status(report),
                }
            )
            whole_ms.append((time.perf_counter() - t) * 1000)
        store.close()
        whole.close()
        check = Store(Path(tmp) / "rows" / DB_NAME)
        again = make_loop()
        Persistence(check, again).restore(T0)
        check.close()
        same = again.guard_state == loop.guard_state
    save, base = statistics.median(save_ms), statistics.median(whole_ms)
    print(
        f"{args.rigs} rigs' guard state, {args.changed} changed per tick, {args.ticks} ticks:\n"
        f"  save_tick, changed rows only     median {save:8.2f} ms   max {max(save_ms):8.2f} ms\n"
        f"  whole document (before), same run median {base:8.2f} ms   max {max(whole_ms):8.2f} ms\n"
        f"  restored state equals the saved one: {same}"
    )
    ok = same and save * 4 <= base
    print(
        f"RESULT rigs={args.rigs} changed={args.changed} save_ms={save:.2f} "
        f"whole_document_ms={base:.2f} ok={'yes' if ok else 'no'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
