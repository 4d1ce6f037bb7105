"""Hand-written SVG charts for tools/report.py's figures: a line chart (training curves across stages) and
a grouped bar chart (the ablation and warm/cold bars), with no plotting dependency. The output is
plain text, byte-identical from run to run. Every text carries a class (title, xlabel, ylabel,
xtick, ytick, stage, legend, value, ref; a bar's rect: bar) so that tests can find it."""
import math


PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
PAD_L, PAD_R, PAD_T, PAD_B = 70, 150, 44, 44  # room for the y label, legend, stage names, x label


def _esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def finite(v):
    return v is not None and math.isfinite(v)


def _ticks(lo, hi, n=5, integer=False):
    """About n round ticks from at or below lo to at or above hi, and their step: 1, 2, 2.5 or 5
    times a power of ten (whole steps only when integer), so labels read 0.50, 0.55 rather than
    0.454, 0.528."""
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(1, n - 1)
    p = 10.0 ** math.floor(math.log10(raw))
    step = next(m * p for m in ((1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)) if m * p >= raw * (1 - 1e-9))
    if integer:
        step = max(1, round(step))
    ks = range(math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9) + 1)  # the 1e-9: float noise
    return [round(k * step, 12) for k in ks], step


def _fmt_tick(v, step):
    decimals = len(f"{step:.10f}".rstrip("0").partition(".")[2])  # as many as the step needs
    return f"{v:.{decimals}f}"


def _svg_open(width, height, title):
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text class="title" x="{PAD_L}" y="18" font-size="13">{_esc(title)}</text>']


def _axis_labels(width, height, xlabel, ylabel):
    H = height - PAD_T - PAD_B
    yc = PAD_T + H / 2
    return [f'<text class="xlabel" x="{PAD_L + (width - PAD_L - PAD_R) / 2:.1f}" y="{height - 8}" text-anchor="middle">{_esc(xlabel)}</text>',
            f'<text class="ylabel" x="16" y="{yc:.1f}" text-anchor="middle" transform="rotate(-90 16 {yc:.1f})">{_esc(ylabel)}</text>']


def _y_grid(yticks, ystep, Y, W):
    """A light horizontal line and a label at every y tick; Y maps a value to its pixel row."""
    out = []
    for v in yticks:
        out.append(f'<line x1="{PAD_L}" x2="{PAD_L + W}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#eee"/>')
        out.append(f'<text class="ytick" x="{PAD_L - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{_fmt_tick(v, ystep)}</text>')
    return out


def _legend(names, width):
    out = []
    for i, name in enumerate(names):
        color = PALETTE[i % len(PALETTE)]
        out.append(f'<rect x="{width - PAD_R + 12}" y="{PAD_T + 16 * i}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text class="legend" x="{width - PAD_R + 26}" y="{PAD_T + 16 * i + 9}">{_esc(name)}</text>')
    return out


def svg_lines(series, title, xlabel="epoch", ylabel="", stages=(), integer_x=True, width=640, height=360):
    """A line chart. series: {name: [(x, y), ...]}, a None or non-finite y breaks the line;
    stages: [(x_start, x_end, label)], each named above its span, a dashed line where one
    ends and the next begins; integer_x: x ticks on whole numbers only (epochs)."""
    pts = [p for s in series.values() for p in s if finite(p[1])]
    if not pts:
        raise ValueError(f"svg_lines: nothing to plot for '{title}'")
    xs = [p[0] for p in pts] + [x for s in stages for x in s[:2]]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    yticks, ystep = _ticks(min(p[1] for p in pts), max(p[1] for p in pts))
    y0, y1 = yticks[0], yticks[-1]  # the y axis ends on round values
    W, H = width - PAD_L - PAD_R, height - PAD_T - PAD_B
    X = lambda x: PAD_L + W * (x - x0) / (x1 - x0)
    Y = lambda y: PAD_T + H * (1 - (y - y0) / (y1 - y0))
    out = _svg_open(width, height, title) + _y_grid(yticks, ystep, Y, W)
    xticks, xstep = _ticks(x0, x1, n=8, integer=integer_x)
    for v in [v for v in xticks if x0 <= v <= x1]:  # the x axis spans the stages, not the ticks
        out.append(f'<line x1="{X(v):.1f}" x2="{X(v):.1f}" y1="{PAD_T + H}" y2="{PAD_T + H + 4}" stroke="#444"/>')
        out.append(f'<text class="xtick" x="{X(v):.1f}" y="{PAD_T + H + 16}" text-anchor="middle">{_fmt_tick(v, xstep)}</text>')
    out.append(f'<rect x="{PAD_L}" y="{PAD_T}" width="{W}" height="{H}" fill="none" stroke="#444"/>')
    for start, end, label in stages:
        if start > x0:
            out.append(f'<line x1="{X(start):.1f}" x2="{X(start):.1f}" y1="{PAD_T}" y2="{PAD_T + H}" stroke="#888" stroke-dasharray="4,3"/>')
        out.append(f'<text class="stage" x="{X((start + end) / 2):.1f}" y="{PAD_T - 6}" text-anchor="middle" fill="#555">{_esc(label)}</text>')
    for n, s in enumerate(series.values()):
        segments, seg = [], []
        for x, y in s:
            if finite(y):
                seg.append((x, y))
            else:
                segments, seg = segments + [seg], []
        for seg in segments + [seg]:
            if len(seg) == 1:  # a stage of one epoch: a dot, since a one-point line draws nothing
                (x, y), = seg
                out.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="2.5" fill="{PALETTE[n % len(PALETTE)]}"/>')
            elif seg:
                path = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in seg)
                out.append(f'<polyline points="{path}" fill="none" stroke="{PALETTE[n % len(PALETTE)]}" stroke-width="1.8"/>')
    out += _legend(series, width) + _axis_labels(width, height, xlabel, ylabel) + ["</svg>"]
    return "\n".join(out)


def svg_bars(groups, title, xlabel="", ylabel="", ref=None, width=640, height=360):
    """A grouped bar chart on a y axis from zero, so bar heights compare as ratios. groups:
    {group: {bar name: value}} (e.g. {"all": {"SASRec": 0.7}}); a None value is written "n/a".
    ref: (y, label), a dashed reference line such as AUC 0.5, chance."""
    names = list(dict.fromkeys(b for g in groups.values() for b in g))
    vals = [v for g in groups.values() for v in g.values() if finite(v)]
    if not vals:
        raise ValueError(f"svg_bars: nothing to plot for '{title}'")
    yticks, ystep = _ticks(min(0.0, *vals), max(0.0, *vals))
    y0, y1 = yticks[0], yticks[-1]
    W, H = width - PAD_L - PAD_R, height - PAD_T - PAD_B
    Y = lambda y: PAD_T + H * (1 - (y - y0) / (y1 - y0))
    gw = W / len(groups)
    bw = 0.8 * gw / max(1, len(names))
    out = _svg_open(width, height, title) + _y_grid(yticks, ystep, Y, W)
    out.append(f'<line x1="{PAD_L}" x2="{PAD_L}" y1="{PAD_T}" y2="{PAD_T + H}" stroke="#444"/>')
    for gi, (group, bars) in enumerate(groups.items()):
        gx = PAD_L + gi * gw + 0.1 * gw
        out.append(f'<text class="xtick" x="{PAD_L + (gi + 0.5) * gw:.1f}" y="{PAD_T + H + 16}" text-anchor="middle">{_esc(group)}</text>')
        for bi, name in enumerate(names):
            v, x = bars.get(name), gx + bi * bw
            if not finite(v):  # undefined (e.g. AUC on one class): say so, do not draw a zero
                out.append(f'<text class="value" x="{x + bw / 2 - 1:.1f}" y="{Y(0) - 3:.1f}" text-anchor="middle" font-size="9">n/a</text>')
                continue
            top, bottom = min(Y(v), Y(0)), max(Y(v), Y(0))
            out.append(f'<rect class="bar" x="{x:.1f}" y="{top:.1f}" width="{bw - 2:.1f}" height="{bottom - top:.1f}" fill="{PALETTE[bi % len(PALETTE)]}"/>')
            out.append(f'<text class="value" x="{x + bw / 2 - 1:.1f}" y="{top - 3:.1f}" text-anchor="middle" font-size="9">{v:.3f}</text>')
    out.append(f'<line x1="{PAD_L}" x2="{PAD_L + W}" y1="{Y(0):.1f}" y2="{Y(0):.1f}" stroke="#444"/>')
    if ref is not None and y0 <= ref[0] <= y1:
        out.append(f'<line x1="{PAD_L}" x2="{PAD_L + W}" y1="{Y(ref[0]):.1f}" y2="{Y(ref[0]):.1f}" stroke="#888" stroke-dasharray="4,3"/>')
        out.append(f'<text class="ref" x="{PAD_L + W + 4}" y="{Y(ref[0]) + 4:.1f}" fill="#555">{_esc(ref[1])}</text>')
    out += _legend(names, width) + _axis_labels(width, height, xlabel, ylabel) + ["</svg>"]
    return "\n".join(out)
