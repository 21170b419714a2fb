"""A very small PNG writer and line-chart rasterizer (zlib + struct, no dependencies).

Enough for the backtest's charts: a white canvas, axes, grid lines, polylines in a few colours
and tick labels in a 3×5 pixel font (digits and a few signs). Titles and legends are in the
HTML report; each PNG carries its title in a ``tEXt`` chunk.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

RGB = tuple[int, int, int]

_FONT = {  # 3×5, rows top to bottom, bits left to right
    "0": (7, 5, 5, 5, 7),
    "1": (2, 6, 2, 2, 7),
    "2": (7, 1, 7, 4, 7),
    "3": (7, 1, 7, 1, 7),
    "4": (5, 5, 7, 1, 1),
    "5": (7, 4, 7, 1, 7),
    "6": (7, 4, 7, 5, 7),
    "7": (7, 1, 1, 2, 2),
    "8": (7, 5, 7, 5, 7),
    "9": (7, 5, 7, 1, 7),
    ".": (0, 0, 0, 0, 2),
    "-": (0, 0, 7, 0, 0),
    "/": (1, 1, 2, 4, 4),
    ":": (0, 2, 0, 2, 0),
    "k": (4, 5, 6, 5, 5),
    "M": (5, 7, 7, 5, 5),
    " ": (0, 0, 0, 0, 0),
}


class Canvas:
    """An RGB image, white to start with."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def set(self, x: int, y: int, color: RGB) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.pixels[i : i + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: RGB) -> None:
        """Bresenham's line, both ends included."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.set(x0, y0, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: RGB, scale: int = 2) -> None:
        """``text`` with its top-left corner at (x, y); unknown characters are skipped."""
        for ch in text:
            rows = _FONT.get(ch)
            if rows is not None:
                for r, bits in enumerate(rows):
                    for c in range(3):
                        if bits & (4 >> c):
                            for a in range(scale):
                                for b in range(scale):
                                    self.set(x + c * scale + a, y + r * scale + b, color)
            x += 4 * scale

    def png(self, title: str = "") -> bytes:
        """The image as PNG bytes (8-bit RGB, no interlace)."""
        stride = self.width * 3
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * stride : (y + 1) * stride]) for y in range(self.height)
        )
        ihdr = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        chunks = [_chunk(b"IHDR", ihdr)]
        if title:
            chunks.append(_chunk(b"tEXt", b"Title\x00" + title.encode("latin-1", "replace")))
        chunks += [_chunk(b"IDAT", zlib.compress(raw, 9)), _chunk(b"IEND", b"")]
        return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def chart_png(
    series: Sequence[tuple[str, RGB, Sequence[float]]],
    title: str,
    width: int = 900,
    height: int = 320,
) -> bytes:
    """A line chart of equally spaced series (same length), y axis from their range."""
    c = Canvas(width, height)
    left, right, top, bottom = 70, 10, 10, 24
    values = [v for _, _, ys in series for v in ys]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    grey, axis = (225, 225, 225), (60, 60, 60)
    plot_w, plot_h = width - left - right, height - top - bottom
    for tick in ticks(lo, hi):
        y = top + round((hi - tick) / (hi - lo) * plot_h)
        c.line(left, y, width - right, y, grey)
        label = short(tick)
        c.text(left - 6 - 8 * len(label), y - 5, label, axis)
    c.line(left, top, left, top + plot_h, axis)
    c.line(left, top + plot_h, width - right, top + plot_h, axis)
    for _, color, ys in series:
        n = len(ys)
        prev: tuple[int, int] | None = None
        for i, v in enumerate(ys):
            x = left + (round(i / (n - 1) * plot_w) if n > 1 else 0)
            y = top + round((hi - v) / (hi - lo) * plot_h)
            if prev is not None:
                c.line(prev[0], prev[1], x, y, color)
            prev = (x, y)
    return c.png(title)


def ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round numbers between ``lo`` and ``hi``, about ``count`` of them."""
    raw = (hi - lo) / count
    mag = 10 ** _floor_log10(raw)
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = -(-lo // step) * step
    out = []
    v = first
    while v <= hi + 1e-9 * step:
        out.append(round(v, 10))
        v += step
    return out


def _floor_log10(x: float) -> int:
    n = 0
    while x >= 10:
        x /= 10
        n += 1
    while x < 1:
        x *= 10
        n -= 1
    return n


def short(v: float) -> str:
    """1234567 -> ``1.23M``, 2500 -> ``2.5k``, 0.05 -> ``0.05``."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    return f"{v:.4g}"
