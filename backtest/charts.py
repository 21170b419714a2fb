"""The backtest's charts: what each shows, as data taken from ``series.csv`` (pure), and its
rendering with matplotlib into the PNG files and the HTML page's inline SVG (one drawing for
both, so they cannot differ).

Every chart has a title with its dates, a dated x axis (UTC), a y axis with its unit and a
legend. The hashprice chart keeps the slide readable: its y axis ends a little above the
hashprice and the 95th percentile of the break-even lines, and break-even points above that
(price spikes) are drawn at the top edge as triangles, with a note saying so. Lines equal over
the whole history are named in a note and the later one is dashed, so both stay visible.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

MAX_POINTS = 1500
CLIP_PERCENTILE = 95.0
WIDTH_IN, HEIGHT_IN, DPI = 9.0, 3.8, 100  # 900 x 380 px


@dataclass(frozen=True, slots=True)
class Line:
    """One line: its legend label, the ``series.csv`` column it draws, its colour."""

    label: str
    column: str
    color: str
    values: list[float]  # the column, downsampled (bucket means), as drawn
    dashed: bool = False


@dataclass(frozen=True, slots=True)
class ChartSpec:
    stem: str  # file name without .png
    title: str
    y_label: str  # with the unit
    times: list[float]  # POSIX seconds of each drawn point (its bucket's first row)
    lines: list[Line]
    notes: list[str] = field(default_factory=list)
    y_top: float | None = None  # the axis is clipped here; points above are marked
    clipped: dict[str, list[int]] = field(default_factory=dict)  # column -> point indexes
    y_bottom: float | None = None  # ... and here, points below marked
    clipped_below: dict[str, list[int]] = field(default_factory=dict)


def downsample(values: Sequence[float], points: int = MAX_POINTS) -> list[float]:
    """Bucket means, at most ``points`` of them (all the values when there are fewer)."""
    n = len(values)
    if n <= points:
        return [float(v) for v in values]
    return [
        math.fsum(values[b * n // points : (b + 1) * n // points])
        / ((b + 1) * n // points - b * n // points)
        for b in range(points)
    ]


def bucket_starts(times: Sequence[float], points: int = MAX_POINTS) -> list[float]:
    n = len(times)
    if n <= points:
        return list(times)
    return [times[b * n // points] for b in range(points)]


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile."""
    ranked = sorted(values)
    k = max(1, math.ceil(len(ranked) * pct / 100.0))
    return ranked[min(k, len(ranked)) - 1]


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def chart_specs(
    columns: Mapping[str, Sequence[float]],
    times: Sequence[float],
    end: float,
    models: Sequence[tuple[str, str]],
    strategies: Sequence[tuple[str, str, str]],
) -> list[ChartSpec]:
    """The three charts from the series' columns (by ``series.csv`` name). ``models``:
    (label, break-even column); ``strategies``: (label, column prefix, colour)."""
    x = bucket_starts(times)
    span = f"{_day(times[0])} to {_day(end)} (UTC)"
    palette = (  # one colour per simulator model (eight)
        "#d62728",
        "#2ca02c",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#17becf",
        "#bcbd22",
        "#ff9896",
    )

    hp = Line(
        "hashprice",
        "hashprice_usd_per_ph_day",
        "#000000",
        downsample(columns["hashprice_usd_per_ph_day"]),
    )
    be = [
        Line(f"break-even {label}", col, palette[k % len(palette)], downsample(columns[col]))
        for k, (label, col) in enumerate(models)
    ]
    all_be = [v for line in be for v in line.values]
    y_top = max(*hp.values, percentile(all_be, CLIP_PERCENTILE) if all_be else 0.0) * 1.1
    clipped = {line.column: [i for i, v in enumerate(line.values) if v > y_top] for line in be}
    clipped = {k: v for k, v in clipped.items() if v}
    below = {line.column: [i for i, v in enumerate(line.values) if v < 0.0] for line in be}
    below = {k: v for k, v in below.items() if v}
    notes = []
    if clipped:
        n = sum(len(v) for v in clipped.values())
        notes.append(
            f"Break-even above {y_top:,.1f} USD/PH/day ({n} points: the highest power prices) "
            "is drawn as triangles at the top edge (the axis ends at 1.1 x the larger of the "
            f"hashprice and the break-even's {CLIP_PERCENTILE:g}th percentile)."
        )
    if below:
        n = sum(len(v) for v in below.values())
        notes.append(
            f"Break-even below 0 ({n} points: negative power prices) is drawn as triangles at "
            "the bottom edge."
        )
    hashprice = ChartSpec(
        "hashprice",
        f"Hashprice against each model's break-even at normal, {span}",
        "USD per PH/s per day",
        x,
        [hp, *be],
        notes,
        y_top if clipped else None,
        clipped,
        0.0 if below else None,
        below,
    )

    def per_strategy(stem: str, title: str, unit: str, suffix: str) -> ChartSpec:
        lines = [
            Line(label, f"{prefix}_{suffix}", color, downsample(columns[f"{prefix}_{suffix}"]))
            for label, prefix, color in strategies
        ]
        groups: list[list[Line]] = []  # lines equal over the whole history
        for line in lines:
            group = next((g for g in groups if columns[g[0].column] == columns[line.column]), None)
            if group is None:
                groups.append([line])
            else:
                group.append(line)
        notes = [
            f"{' = '.join(x.label for x in g)} on this run (the same line; "
            f"{', '.join(x.label for x in g[1:])} dashed)"
            for g in groups
            if len(g) > 1
        ]
        firsts = {g[0].column for g in groups}
        drawn = [
            Line(x.label, x.column, x.color, x.values, dashed=x.column not in firsts) for x in lines
        ]
        return ChartSpec(stem, f"{title}, {span}", unit, x, drawn, notes)

    return [
        hashprice,
        per_strategy("power", "Fleet power", "kW (mean over each step)", "power_kw"),
        per_strategy("profit", "Cumulative profit", "USD", "cum_profit_usd"),
    ]


def tick_label(value: float) -> str:
    """A y tick: thousands separated, never "-0"."""
    v = round(value, 9) + 0.0
    if abs(v) >= 1e6:
        return f"{v / 1e6:,.3g}M"
    return f"{v:,.10g}" if abs(v) < 1e4 else f"{v:,.0f}"


def render(spec: ChartSpec, fmt: str) -> bytes:
    """The chart as ``png`` or ``svg`` bytes (deterministic: no dates or random ids)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    with matplotlib.rc_context(
        {"svg.hashsalt": "rigpilot", "svg.fonttype": "none", "axes.unicode_minus": False}
    ):
        fig, ax = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
        try:
            xs = [t / 86_400.0 for t in spec.times]  # matplotlib's dates: days since 1970
            for line in spec.lines:
                ys: list[float] = line.values
                if spec.y_top is not None and line.column in spec.clipped:
                    ys = [min(v, spec.y_top) for v in ys]
                if spec.y_bottom is not None and line.column in spec.clipped_below:
                    ys = [max(v, spec.y_bottom) for v in ys]
                ax.plot(
                    xs,
                    ys,
                    color=line.color,
                    linewidth=2.0 if line.column == "hashprice_usd_per_ph_day" else 1.0,
                    linestyle=(0, (4, 3)) if line.dashed else "-",
                    label=line.label,
                )
                for edge, marker, marks in (
                    (spec.y_top, "^", spec.clipped.get(line.column, [])),
                    (spec.y_bottom, "v", spec.clipped_below.get(line.column, [])),
                ):
                    if marks and edge is not None:
                        ax.plot(
                            [xs[i] for i in marks],
                            [edge] * len(marks),
                            linestyle="none",
                            marker=marker,
                            markersize=5,
                            color=line.color,
                            clip_on=False,
                        )
            low, high = ax.get_ylim()
            ax.set_ylim(
                low if spec.y_bottom is None else spec.y_bottom,
                high if spec.y_top is None else spec.y_top,
            )
            ax.set_title(spec.title, fontsize=11, loc="left")
            ax.set_ylabel(spec.y_label)
            ax.set_xlabel("date (UTC)")
            locator = mdates.AutoDateLocator(tz=UTC, minticks=5, maxticks=12)  # type: ignore[no-untyped-call]
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(
                mdates.ConciseDateFormatter(locator, tz=UTC)  # type: ignore[no-untyped-call]
            )
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: tick_label(v)))
            ax.grid(True, color="#e1e1e1", linewidth=0.6)
            ax.margins(x=0)
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
            notes = [ln for note in spec.notes for ln in textwrap.wrap(note, 150)]
            if notes:
                fig.text(0.01, 0.01, "\n".join(notes), fontsize=7, va="bottom")
            fig.tight_layout(rect=(0.0, 0.035 * len(notes), 1.0, 1.0))
            buf = io.BytesIO()
            meta: dict[str, Any] = (
                {"Title": spec.title, "Software": None}
                if fmt == "png"
                else {"Title": spec.title, "Date": None, "Creator": None}
            )
            fig.savefig(buf, format=fmt, metadata=meta)
        finally:
            plt.close(fig)
    return buf.getvalue()
