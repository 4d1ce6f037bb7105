"""Hand-written SVG charts for drivers/report.py's figures: a line chart (training curves across stages) and
a grouped bar chart (the ablation and warm/cold bars), with no plotting dependency. The output is plain
text, byte-identical from run to run; every text and bar carries a class (title, xtick, bar...) for tests."""
import itertools
import math
from xml.sax.saxutils import escape


PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
PAD_L, PAD_R, PAD_T, PAD_B = 70, 150, 44, 44  # room for the y label, legend, stage names, x label


def finite(v):
    return v is not None and math.isfinite(v)


def _ticks(lo, hi, n=5, integer=False):
    """About n round ticks, as (value, label), from at or below lo to at or above hi: steps of 1, 2,
    2.5 or 5 times a power of ten (whole steps only when integer), so labels read 0.50, not 0.454."""
    if hi - lo < 1e-9:  # (one value, or values that differ by float noise)
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(1, n - 1)
    p = 10.0 ** math.floor(math.log10(raw))
    step = next(m * p for m in ((1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)) if m * p >= raw * (1 - 1e-9))
    if integer:
        step = max(1, round(step))
    decimals = len(f"{step:.10f}".rstrip("0").partition(".")[2])  # as many as the step needs
    ks = range(math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9) + 1)  # the 1e-9: float noise
    return [(v, f"{v:.{decimals}f}") for v in (round(k * step, 12) for k in ks)]


def _frame(width, height, title, xlabel, ylabel, ys, legend):
    """What both charts share: the title, a y grid on round ticks spanning ys, the legend and the
    axis labels. -> (the lines before the plot, those after it, Y: a value's pixel row, y ticks, W, H)"""
    W, H = width - PAD_L - PAD_R, height - PAD_T - PAD_B
    yticks = _ticks(min(ys), max(ys))
    y0, y1 = yticks[0][0], yticks[-1][0]  # the y axis ends on round values
    Y = lambda y: PAD_T + H * (1 - (y - y0) / (y1 - y0))
    head = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
            'font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text class="title" x="{PAD_L}" y="18" font-size="13">{escape(title)}</text>']
    for v, label in yticks:
        head += [f'<line x1="{PAD_L}" x2="{PAD_L + W}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#eee"/>',
                 f'<text class="ytick" x="{PAD_L - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{label}</text>']
    tail = []
    for i, name in enumerate(legend):
        x, y = width - PAD_R + 12, PAD_T + 16 * i
        tail += [f'<rect x="{x}" y="{y}" width="10" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>',
                 f'<text class="legend" x="{x + 14}" y="{y + 9}">{escape(name)}</text>']
    yc = PAD_T + H / 2
    tail += [f'<text class="xlabel" x="{PAD_L + W / 2:.1f}" y="{height - 8}" text-anchor="middle">'
             f'{escape(xlabel)}</text>',
             f'<text class="ylabel" x="16" y="{yc:.1f}" text-anchor="middle" transform="rotate(-90 16 {yc:.1f})">'
             f'{escape(ylabel)}</text>', "</svg>"]
    return head, tail, Y, yticks, W, H


def svg_lines(series, title, xlabel="epoch", ylabel="", stages=(), width=640, height=360):
    """A line chart on whole-number x ticks (epochs). series: {name: [(x, y), ...]}, a None or non-finite
    y breaks the line; stages: [(x_start, x_end, label)], each named above its span, dashed where it starts."""
    pts = [p for s in series.values() for p in s if finite(p[1])]
    xs = [p[0] for p in pts] + [x for s in stages for x in s[:2]]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    out, tail, Y, _, W, H = _frame(width, height, title, xlabel, ylabel, [y for _, y in pts], series)
    X = lambda x: PAD_L + W * (x - x0) / (x1 - x0)
    for v, label in _ticks(x0, x1, n=8, integer=True):
        if x0 <= v <= x1:  # the x axis spans the stages, not the ticks
            out += [f'<line x1="{X(v):.1f}" x2="{X(v):.1f}" y1="{PAD_T + H}" y2="{PAD_T + H + 4}" stroke="#444"/>',
                    f'<text class="xtick" x="{X(v):.1f}" y="{PAD_T + H + 16}" text-anchor="middle">{label}</text>']
    out.append(f'<rect x="{PAD_L}" y="{PAD_T}" width="{W}" height="{H}" fill="none" stroke="#444"/>')
    for start, end, label in stages:
        if start > x0:
            out.append(f'<line x1="{X(start):.1f}" x2="{X(start):.1f}" y1="{PAD_T}" y2="{PAD_T + H}" stroke="#888" '
                       'stroke-dasharray="4,3"/>')
        out.append(f'<text class="stage" x="{X((start + end) / 2):.1f}" y="{PAD_T - 6}" text-anchor="middle" '
                   f'fill="#555">{escape(label)}</text>')
    for n, s in enumerate(series.values()):
        color = PALETTE[n % len(PALETTE)]
        for drawn, seg in itertools.groupby(s, lambda p: finite(p[1])):
            seg = [(f"{X(x):.1f}", f"{Y(y):.1f}") for x, y in seg] if drawn else []
            if len(seg) == 1:  # a stage of one epoch: a dot, since a one-point line draws nothing
                out.append(f'<circle cx="{seg[0][0]}" cy="{seg[0][1]}" r="2.5" fill="{color}"/>')
            elif seg:
                points = " ".join(",".join(p) for p in seg)
                out.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.8"/>')
    return "\n".join(out + tail)


def svg_bars(groups, title, xlabel="", ylabel="", ref=None, width=640, height=360):
    """A grouped bar chart on a y axis from zero, so heights compare as ratios. groups: {group: {bar name:
    value}}, a None value written "n/a"; ref: (y, label), a dashed reference line such as AUC 0.5, chance."""
    names = list(dict.fromkeys(b for g in groups.values() for b in g))
    vals = [v for g in groups.values() for v in g.values() if finite(v)]
    out, tail, Y, yticks, W, H = _frame(width, height, title, xlabel, ylabel, [0.0] + vals, names)
    gw = W / len(groups)
    bw = 0.8 * gw / max(1, len(names))
    out.append(f'<line x1="{PAD_L}" x2="{PAD_L}" y1="{PAD_T}" y2="{PAD_T + H}" stroke="#444"/>')
    for gi, (group, bars) in enumerate(groups.items()):
        out.append(f'<text class="xtick" x="{PAD_L + (gi + 0.5) * gw:.1f}" y="{PAD_T + H + 16}" '
                   f'text-anchor="middle">{escape(group)}</text>')
        for bi, name in enumerate(names):
            v, x = bars.get(name), PAD_L + gi * gw + 0.1 * gw + bi * bw
            top = min(Y(v), Y(0)) if finite(v) else Y(0)
            if finite(v):  # undefined (e.g. AUC on one class): say so below, do not draw a zero
                out.append(f'<rect class="bar" x="{x:.1f}" y="{top:.1f}" width="{bw - 2:.1f}" '
                           f'height="{max(Y(v), Y(0)) - top:.1f}" fill="{PALETTE[bi % len(PALETTE)]}"/>')
            out.append(f'<text class="value" x="{x + bw / 2 - 1:.1f}" y="{top - 3:.1f}" text-anchor="middle" '
                       f'font-size="9">{f"{v:.3f}" if finite(v) else "n/a"}</text>')
    out.append(f'<line x1="{PAD_L}" x2="{PAD_L + W}" y1="{Y(0):.1f}" y2="{Y(0):.1f}" stroke="#444"/>')
    if ref is not None and yticks[0][0] <= ref[0] <= yticks[-1][0]:
        out += [f'<line x1="{PAD_L}" x2="{PAD_L + W}" y1="{Y(ref[0]):.1f}" y2="{Y(ref[0]):.1f}" stroke="#888" '
                'stroke-dasharray="4,3"/>',
                f'<text class="ref" x="{PAD_L + W + 4}" y="{Y(ref[0]) + 4:.1f}" fill="#555">{escape(ref[1])}</text>']
    return "\n".join(out + tail)
