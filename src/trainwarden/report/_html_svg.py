"""Inline SVG charts for the HTML report, drawn in Python so they exist with JavaScript off.

Charts are plain SVG (paths, text, a PNG image for heatmaps), styled by the page's one style
sheet through classes (never ``style`` attributes, which the page's Content-Security-Policy
forbids). Every label that comes from the run is escaped here.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

__all__ = [
    "Marker",
    "Series",
    "fmt_num",
    "heatmap_svg",
    "legend_html",
    "line_chart",
    "nice_ticks",
    "png_rgb",
    "stacked_chart",
]

Number = float | None


@dataclass(frozen=True, slots=True)
class Series:
    """One line (or band) of a chart.

    ``values`` are per bin (``None`` where there is no value); a band also has ``upper``.
    ``css`` is the class that colours it (``s-median``, ``s-flag1``...).
    """

    name: str
    values: Sequence[Number]
    css: str
    upper: Sequence[Number] | None = None


@dataclass(frozen=True, slots=True)
class Marker:
    """A vertical marker at a step (a finding), labelled with its technique."""

    step: int
    label: str
    css: str = "m-bad"
    title: str = ""


@dataclass(frozen=True, slots=True)
class _Frame:
    width: int = 1120
    height: int = 210
    left: int = 64
    right: int = 16
    top: int = 22
    bottom: int = 30
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom


def fmt_num(value: float) -> str:
    """A short label for an axis tick or a value: ``0.25``, ``1.2k``, ``3e-4``."""
    if value == 0:
        return "0"
    a = abs(value)
    if a >= 1e6:
        return f"{value / 1e6:.3g}M"
    if a >= 1e4:
        return f"{value / 1e3:.3g}k"
    if a >= 1e3:
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:.4g}"
    if a >= 1e-2:
        return f"{value:.3g}"
    return f"{value:.1e}".replace("e-0", "e-").replace("e+0", "e")


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 times a power of ten) covering ``lo..hi``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.floor(lo / step) * step
    ticks: list[float] = []
    value = start
    while value <= hi + step * 1e-9 and len(ticks) < 50:
        if value >= lo - step * 1e-9:
            ticks.append(round(value, 12))
        value += step
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    stride = max(1, (b - a) // 5)
    return [10.0**e for e in range(a, b + 1, stride)]


def _y_scale(
    series: Sequence[Series], *, log: bool, frame: _Frame, floor: float | None = None
) -> tuple[Callable[[float], float], list[float], float, float] | None:
    values = [
        v
        for s in series
        for seq in (s.values, s.upper or ())
        for v in seq
        if v is not None and math.isfinite(v) and (not log or v > 0)
    ]
    if floor is not None and log:
        values = [max(v, floor) for v in values]
    if not values:
        return None
    lo, hi = min(values), max(values)
    if log:
        lo = 10 ** math.floor(math.log10(lo))
        hi = 10 ** math.ceil(math.log10(hi))
        if hi <= lo:
            hi = lo * 10
        ticks = _log_ticks(lo, hi)
        llo, lhi = math.log10(lo), math.log10(hi)

        def scale(v: float) -> float:
            v = max(v, lo)
            return frame.top + frame.plot_h * (1 - (math.log10(v) - llo) / (lhi - llo))

        return scale, ticks, lo, hi
    if lo > 0 and lo < 0.35 * hi:
        lo = 0.0
    pad = (hi - lo) * 0.06 or abs(hi) * 0.1 or 1.0
    ticks = nice_ticks(lo, hi + pad)
    lo2, hi2 = min([lo, *ticks]), max([hi + pad, *ticks])

    def lin(v: float) -> float:
        return frame.top + frame.plot_h * (1 - (v - lo2) / (hi2 - lo2))

    return lin, ticks, lo2, hi2


def _x_scale(bins: int, frame: _Frame) -> Callable[[float], float]:
    def scale(index: float) -> float:
        return frame.left + frame.plot_w * (index + 0.5) / max(1, bins)

    return scale


def _path(
    values: Sequence[Number], x: Callable[[float], float], y: Callable[[float], float]
) -> str:
    parts = []
    pen = False
    for i, v in enumerate(values):
        if v is None or not math.isfinite(v):
            pen = False
            continue
        parts.append(f"{'L' if pen else 'M'}{x(i):.1f} {y(v):.1f}")
        pen = True
    return "".join(parts)


def _band(
    lower: Sequence[Number],
    upper: Sequence[Number],
    x: Callable[[float], float],
    y: Callable[[float], float],
) -> str:
    # One closed polygon per run of bins where both bounds exist.
    out = []
    run: list[int] = []

    def flush() -> None:
        if len(run) >= 1:
            top = [f"{x(i):.1f} {y(upper[i]):.1f}" for i in run]  # type: ignore[arg-type]
            bottom = [f"{x(i):.1f} {y(lower[i]):.1f}" for i in reversed(run)]  # type: ignore[arg-type]
            out.append("M" + "L".join(top + bottom) + "Z")
        run.clear()

    for i, (a, b) in enumerate(zip(lower, upper, strict=False)):
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            flush()
        else:
            run.append(i)
    flush()
    return "".join(out)


def _axes(
    frame: _Frame,
    *,
    y: Callable[[float], float],
    ticks: Sequence[float],
    bins: int,
    width: int,
    y_label: str,
) -> list[str]:
    out = [
        f'<rect class="plot-bg" x="{frame.left}" y="{frame.top}" width="{frame.plot_w:.0f}" '
        f'height="{frame.plot_h:.0f}"/>'
    ]
    for t in ticks:
        py = y(t)
        if frame.top - 0.5 <= py <= frame.top + frame.plot_h + 0.5:
            out.append(
                f'<line class="grid" x1="{frame.left}" x2="{frame.left + frame.plot_w:.0f}" '
                f'y1="{py:.1f}" y2="{py:.1f}"/>'
                f'<text class="tick" x="{frame.left - 6}" y="{py + 3.5:.1f}" '
                f'text-anchor="end">{escape(fmt_num(t))}</text>'
            )
    out.extend(_x_axis(frame, bins=bins, width=width))
    out.append(
        f'<text class="axis-label" x="12" y="{frame.top + frame.plot_h / 2:.0f}" '
        f'transform="rotate(-90 12 {frame.top + frame.plot_h / 2:.0f})" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    return out


def _x_axis(frame: _Frame, *, bins: int, width: int) -> list[str]:
    out = []
    last_step = bins * width
    ticks = [
        t for t in nice_ticks(0, last_step, max(3, int(frame.plot_w // 130))) if 0 <= t <= last_step
    ]
    base = frame.top + frame.plot_h
    for t in ticks:
        px = frame.left + frame.plot_w * t / max(1, last_step)
        out.append(
            f'<line class="xtick" x1="{px:.1f}" x2="{px:.1f}" y1="{base}" y2="{base + 4}"/>'
            f'<text class="tick" x="{px:.1f}" y="{base + 16}" text-anchor="middle">'
            f"{escape(fmt_num(t))}</text>"
        )
    out.append(
        f'<text class="axis-label" x="{frame.left + frame.plot_w:.0f}" y="{frame.height - 2}" '
        'text-anchor="end">step</text>'
    )
    return out


def _markers(frame: _Frame, markers: Sequence[Marker], *, bins: int, width: int) -> list[str]:
    out = []
    last_step = max(1, bins * width)
    placed: list[float] = []
    for m in sorted(markers, key=lambda m: m.step):
        px = frame.left + frame.plot_w * min(max(m.step, 0), last_step) / last_step
        out.append(
            f'<line class="marker {m.css}" x1="{px:.1f}" x2="{px:.1f}" y1="{frame.top}" '
            f'y2="{frame.top + frame.plot_h:.0f}">'
            f"<title>{escape(m.title or m.label)}</title></line>"
        )
        # Labels that would overlap are stacked rather than drawn over each other.
        # Labels sit above the plot; ones that would overlap move right.
        shift = 0.0
        while any(abs(p - (px + shift)) < 20 for p in placed) and shift < 80:
            shift += 20
        placed.append(px + shift)
        out.append(
            f'<text class="marker-label {m.css}" x="{px + shift:.1f}" y="{frame.top - 6}" '
            f'text-anchor="middle">{escape(m.label)}</text>'
        )
    return out


def line_chart(
    series: Sequence[Series],
    *,
    bins: int,
    width: int,
    y_label: str,
    title: str,
    log: bool = False,
    markers: Sequence[Marker] = (),
    height: int = 210,
    css: str = "",
) -> str:
    """An SVG line chart over step bins (bands drawn first, lines on top).

    The legend is left to the page (:func:`legend_html`), where it stays readable at any
    width.
    """
    frame = _Frame(height=height)
    scale = _y_scale(series, log=log, frame=frame)
    head = (
        f'<svg class="plot {escape(css)}" viewBox="0 0 {frame.width} {frame.height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    )
    if scale is None:
        return (
            head + f'<text class="empty" x="{frame.width / 2:.0f}" y="{frame.height / 2:.0f}" '
            f'text-anchor="middle">no values recorded</text></svg>'
        )
    y, ticks, _, _ = scale
    x = _x_scale(bins, frame)
    parts = [head, *_axes(frame, y=y, ticks=ticks, bins=bins, width=width, y_label=y_label)]
    for s in series:
        if s.upper is not None:
            d = _band(s.values, s.upper, x, y)
            if d:
                parts.append(
                    f'<path class="band {escape(s.css)}" d="{d}">'
                    f"<title>{escape(s.name)}</title></path>"
                )
    for s in series:
        if s.upper is None:
            d = _path(s.values, x, y)
            if d:
                parts.append(
                    f'<path class="line {escape(s.css)}" d="{d}">'
                    f"<title>{escape(s.name)}</title></path>"
                )
    parts.extend(_markers(frame, markers, bins=bins, width=width))
    parts.append("</svg>")
    return "".join(parts)


def legend_html(series: Sequence[Series]) -> str:
    """The legend of a chart as HTML (swatches coloured by the same classes)."""
    items = "".join(
        f'<span class="lg"><i class="sw {escape(s.css)}{" band" if s.upper is not None else ""}">'
        f"</i>{escape(s.name)}</span>"
        for s in series
    )
    return f'<div class="legend">{items}</div>'


def stacked_chart(
    layers: Sequence[Series],
    *,
    bins: int,
    width: int,
    title: str,
    y_label: str = "seconds",
    markers: Sequence[Marker] = (),
    height: int = 230,
    view_width: int = 560,
) -> str:
    """Stacked areas (e.g. forward, backward, optimizer, wait per step) over step bins."""
    frame = _Frame(width=view_width, height=height, left=52, right=10)
    totals: list[Number] = []
    for i in range(bins):
        vals = [layer.values[i] if i < len(layer.values) else None for layer in layers]
        known = [v for v in vals if v is not None and math.isfinite(v)]
        totals.append(sum(known) if known else None)
    scale = _y_scale([Series("total", totals, "")], log=False, frame=frame)
    head = (
        f'<svg class="plot stacked" viewBox="0 0 {frame.width} {frame.height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    )
    if scale is None:
        return (
            head + f'<text class="empty" x="{frame.width / 2:.0f}" y="{frame.height / 2:.0f}" '
            'text-anchor="middle">no timings</text></svg>'
        )
    y, ticks, _, _ = scale
    # The stack starts at zero, whatever the range of the totals.
    lo = 0.0
    hi = max(t for t in totals if t is not None) * 1.08 or 1.0
    ticks = nice_ticks(lo, hi)
    hi = max(hi, *ticks)

    def ys(v: float) -> float:
        return frame.top + frame.plot_h * (1 - v / hi)

    x = _x_scale(bins, frame)
    parts = [head, *_axes(frame, y=ys, ticks=ticks, bins=bins, width=width, y_label=y_label)]
    base: list[float] = [0.0] * bins
    for layer in layers:
        top = [
            (base[i] + v)
            if (v := (layer.values[i] if i < len(layer.values) else None)) is not None
            and math.isfinite(v)
            else base[i]
            for i in range(bins)
        ]
        lower: list[Number] = [b if totals[i] is not None else None for i, b in enumerate(base)]
        upper: list[Number] = [t if totals[i] is not None else None for i, t in enumerate(top)]
        d = _band(lower, upper, x, ys)
        if d:
            parts.append(
                f'<path class="area {escape(layer.css)}" d="{d}">'
                f"<title>{escape(layer.name)}</title></path>"
            )
        base = top
    parts.extend(_markers(frame, markers, bins=bins, width=width))
    parts.append("</svg>")
    del y
    return "".join(parts)


def png_rgb(width: int, height: int, pixels: Sequence[Sequence[tuple[int, int, int]]]) -> bytes:
    """A minimal 8-bit RGB PNG of ``pixels`` (rows of ``(r, g, b)``)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    raw = bytearray()
    for row in pixels:
        raw.append(0)
        for r, g, b in row:
            raw += bytes((r, g, b))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(raw), 9))
        + chunk(b"IEND", b"")
    )


def heatmap_svg(
    rows: Sequence[Sequence[Number]],
    *,
    labels: Sequence[str],
    colour: Callable[[Number], tuple[int, int, int]],
    bins: int,
    width: int,
    title: str,
    css: str,
    flagged: Sequence[int] = (),
    legend: Sequence[tuple[str, tuple[int, int, int]]] = (),
) -> str:
    """Ranks x step bins as one PNG inside an SVG with axes (compact for 64+ ranks)."""
    n = len(rows)
    row_h = max(4, min(16, 420 // max(1, n)))
    frame = _Frame(height=14 + row_h * n + 30 + 22, top=14 + 22, left=64)
    pixels = [[colour(v) for v in row] for row in rows]
    png = png_rgb(max(1, bins), max(1, n), pixels) if n and bins else b""
    href = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    plot_h = row_h * n
    out = [
        f'<svg class="plot heatmap {escape(css)}" viewBox="0 0 {frame.width} {frame.height}" '
        f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg" '
        f'data-rows="{n}" data-bins="{bins}" data-left="{frame.left}" data-top="{frame.top}" '
        f'data-plot-w="{frame.plot_w:.0f}" data-plot-h="{plot_h}"><title>{escape(title)}</title>',
        f'<image href="{href}" x="{frame.left}" y="{frame.top}" width="{frame.plot_w:.0f}" '
        f'height="{plot_h}" preserveAspectRatio="none"/>',
        f'<rect class="heat-frame" x="{frame.left}" y="{frame.top}" width="{frame.plot_w:.0f}" '
        f'height="{plot_h}"/>',
    ]
    # Row labels at least 11 px apart: flagged rows first, then every k-th row where room is
    # left, so a flagged rank's label is never hidden under its neighbours'.
    every = 1 if n <= 24 else (2 if n <= 48 else 4)
    flagged_set = set(flagged)
    gap = max(1, math.ceil(11 / row_h))
    placed: list[int] = []
    for i in [*sorted(flagged_set), *(i for i in range(n) if i % every == 0)]:
        room = i in flagged_set or all(abs(i - p) >= gap for p in placed)
        if i < n and room and i not in placed:
            placed.append(i)
    for i in sorted(placed):
        cls = "tick flagged" if i in flagged_set else "tick"
        out.append(
            f'<text class="{cls}" x="{frame.left - 6}" '
            f'y="{frame.top + row_h * (i + 0.5) + 3.5:.1f}" '
            f'text-anchor="end">{escape(labels[i])}</text>'
        )
    axis_frame = _Frame(height=frame.top + plot_h + 30, top=frame.top, left=frame.left, bottom=30)
    out.extend(_x_axis(axis_frame, bins=bins, width=width))
    x = float(frame.left)
    for text, rgb in legend:
        out.append(
            f'<rect x="{x}" y="8" width="14" height="10" fill="rgb{rgb}" class="legend-swatch"/>'
            f'<text class="legend-text" x="{x + 18}" y="17">{escape(text)}</text>'
        )
        x += 30 + 6.2 * len(text)
    out.append("</svg>")
    return "".join(out)
