"""Reports for SASRecLLM: the paper's Table 1 from runs, re-scored runs, the --shuffle-cf
ablation, mean ± std over seeds, and hand-written SVG plots. The metrics themselves (AUC, UAUC,
LogLoss, P/R/F1/accuracy, Rel.Imp.) are in metrics.py, each with its formula.

CLI:
    python eval.py --preds FILE.tsv       # metrics for a prediction file
    python eval.py --table runs/*         # the paper-style table over runs' metrics.json
    python eval.py runs/joint             # re-score a run's best.pt
    python eval.py runs/joint --shuffle-cf --repeats 3   # the CF tokens permuted across rows
    python eval.py --seeds runs/s0 runs/s1 runs/s2       # mean ± std over seeds
    python eval.py runs/joint --plot      # curves across the stages, bars of warm/cold AUC
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

import data
import train
from metrics import metrics, rel_imp, split_report

# -----------------------------------------------------------------------------
# tables

COLUMNS = [("logloss", "Log Loss"), ("precision", "Precision"), ("recall", "Recall"), ("f1", "F1"),
           ("accuracy", "Accuracy"), ("auc", "AUC"), ("uauc", "UAUC")]


def fmt(v):
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def fmt_pct(v):
    return "nan" if math.isnan(v) else f"{100 * v:+.2f}%"


def _num(v):
    return float("nan") if v is None else v


def markdown_table(rows, rel=True, ours=("joint", "SASRecLLM")):
    """rows: list of (name, metrics dict). Rel.Imp. is the paper's: the relative gain of SASRecLLM
    (the row named in `ours`) over each other row, averaged over AUC and UAUC; without such a
    row, the gain of the row with the best AUC."""
    head = ["model"] + [c for _, c in COLUMNS] + (["Rel. Imp."] if rel else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref = next((m for name, m in rows if name in ours), None)
    if ref is None:
        valid = [m for _, m in rows if not math.isnan(_num(m.get("auc")))]
        ref = max(valid, key=lambda m: m["auc"]) if valid else None
    for name, m in rows:
        cells = [name] + [fmt(m.get(k)) for k, _ in COLUMNS]
        if rel:
            cells.append("-" if ref is None or m is ref else fmt_pct(rel_imp(ref, m)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_preds(path):
    """A TSV with header: user_id, item_id, label, score, and optionally split, seen, warm."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        need = ["user_id", "item_id", "label", "score"]
        missing = [c for c in need if c not in header]
        if missing:
            raise ValueError(f"{path}:1: missing column(s) {missing}; expected at least {need}")
        cols = {c: [] for c in header}
        for lineno, line in enumerate(f, start=2):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(header):
                raise ValueError(f"{path}:{lineno}: expected {len(header)} tab-separated fields, got {len(parts)}")
            for c, v in zip(header, parts):
                cols[c].append(v)
    try:
        out = dict(user=np.array(cols["user_id"], dtype=np.int64),
                   label=np.array(cols["label"], dtype=np.float64).astype(np.int64),
                   score=np.array(cols["score"], dtype=np.float64))
    except ValueError as e:
        raise ValueError(f"{path}: non-numeric user_id/label/score ({e})") from None
    if not np.isin(out["label"], (0, 1)).all():
        raise ValueError(f"{path}: labels must be 0 or 1")
    for c in ("split", "seen", "warm"):
        if c in cols:
            out[c] = np.array(cols[c])
    return out


def _truthy(a):
    return np.isin(np.char.lower(a.astype(str)), ("1", "true", "yes"))


def preds_table(path):
    """Markdown table for a prediction file: test (or all rows) and its seen/unseen/warm/cold parts.

    Scores are treated as logits unless they all lie in [0, 1], in which case they are probabilities."""
    d = read_preds(path)
    keep = d["split"] == "test" if "split" in d else np.ones(len(d["user"]), dtype=bool)
    if not keep.any():
        raise ValueError(f"{path}: no test rows")
    s = d["score"]
    if s.min() >= 0 and s.max() <= 1:  # probabilities -> logits, so that metrics() sees one kind
        s = np.log(np.clip(s, 1e-7, 1 - 1e-7) / np.clip(1 - s, 1e-7, 1))
    rows = [("test", metrics(d["user"][keep], d["label"][keep], s[keep]))]
    for col, pos, neg in (("seen", "seen", "unseen"), ("warm", "warm", "cold")):
        if col in d:
            flag = _truthy(d[col])
            for name, m in ((pos, flag), (neg, ~flag)):
                m = keep & m
                if m.any():
                    rows.append((f"test_{name}", metrics(d["user"][m], d["label"][m], s[m])))
    return markdown_table(rows, rel=False)


def runs_table(run_dirs, part="test"):
    rows = []
    for d in run_dirs:
        path = os.path.join(d, "metrics.json")
        if not os.path.exists(path):
            print(f"warning: {path} not found, skipped", file=sys.stderr)
            continue
        with open(path) as f:
            m = json.load(f)
        if part not in m:
            raise ValueError(f"{path}: no '{part}' section")
        rows.append((os.path.basename(os.path.normpath(d)), m[part]))
    if not rows:
        raise ValueError("no metrics.json found in the given run directories")
    return markdown_table(rows)


# -----------------------------------------------------------------------------
# runs: re-evaluate a run's best checkpoint, the --shuffle-cf ablation, mean +- std


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; train the run first (python train.py ... --out {run_dir})")
    with open(path) as f:
        return json.load(f)


def evaluate_run(run_dir, shuffle_cf=False, repeats=1, data_dir=None):
    """Rebuild the run from its best.pt (args + trainable tensors) and score valid and test,
    `repeats` times; returns one metrics.json-style report per evaluation.

    shuffle_cf permutes the collaborative inputs (user, history, target item fed to the CF
    encoder) across each evaluation split, with seed k on the k-th repeat, while every prompt keeps
    its own text: if the spliced tokens carry signal, AUC must drop."""
    args, ds, model, make_predict = train.load_run(run_dir, data_dir)
    model.eval()
    reports = []
    for seed in range(repeats):
        predict = make_predict(shuffle_cf, seed)
        with torch.no_grad():
            reports.append(split_report(ds, predict(model, "valid"), predict(model, "test")))
    return reports


PARTS = ("valid", "test", "test_seen", "test_unseen", "test_warm", "test_cold")


def shuffle_cf_report(run_dir, repeats=1, data_dir=None):
    """The --shuffle-cf ablation beside the unshuffled scores: AUC and UAUC per part, and the drop.
    With repeats > 1, the shuffled figures are mean ± std over that many permutations."""
    args, ds, model, make_predict = train.load_run(run_dir, data_dir)
    model.eval()
    with torch.no_grad():
        predict = make_predict()
        plain = split_report(ds, predict(model, "valid"), predict(model, "test"))
        shuffled = []
        for seed in range(repeats):
            predict = make_predict(shuffle_cf=True, seed=seed)
            shuffled.append(split_report(ds, predict(model, "valid"), predict(model, "test")))
    stats = mean_std(shuffled)
    lines = [f"{run_dir}: CF tokens permuted across rows ({repeats} permutation{'s' * (repeats > 1)})",
             "| part | AUC | AUC shuffled | drop | UAUC | UAUC shuffled | drop |", "|" + "---|" * 7]
    for p in PARTS:
        cells = [p]
        for k in ("auc", "uauc"):
            mean, std = stats[p][k]
            cells += [fmt(plain[p][k]), fmt(mean) + (f" ± {std:.4f}" if repeats > 1 else ""),
                      fmt(_num(plain[p][k]) - mean)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_std(reports):
    """{part: {metric: (mean, std)}} over a list of metrics.json dicts (std over runs, ddof 0)."""
    out = {}
    for part, m in reports[0].items():
        if not isinstance(m, dict):
            continue
        values = {k: [_num(r[part][k]) for r in reports] for k in m}
        out[part] = {k: (float(np.mean(v)), float(np.std(v))) for k, v in values.items()}
    return out


def mean_std_table(stats, parts=("valid", "test", "test_seen", "test_unseen", "test_warm", "test_cold")):
    head = ["part"] + [c for _, c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for part in parts:
        if part in stats:
            lines.append("| " + " | ".join([part] + [f"{stats[part][k][0]:.4f} ± {stats[part][k][1]:.4f}"
                                                     for k, _ in COLUMNS]) + " |")
    return "\n".join(lines)


def plot_run(run_dir):
    """RQ4 curves and RQ2/RQ3 bars beside a run. For a joint run, the curves run through the
    SASRec and text stages it was built from (boundaries marked), and the bars compare SASRec,
    TALLRec (text) and SASRecLLM (joint) on test and its warm and cold parts."""
    chain = train.run_chain(run_dir)  # [(stage name, run dir)], oldest first, ending with run_dir
    curves = {"valid AUC": [], "valid UAUC": [], "train loss": []}
    boundaries, offset = [], 0
    for name, d in chain:
        path = os.path.join(d, "log.jsonl")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            log = [json.loads(line) for line in f if line.strip()]
        if offset:
            boundaries.append((offset + 0.5, name))
            for series in curves.values():  # no line across a stage boundary
                series.append((offset + 0.5, None))
        for rec in log:
            x = offset + max(1, rec["epoch"])
            curves["valid AUC"].append((x, rec["valid"]["auc"]))
            curves["valid UAUC"].append((x, rec["valid"]["uauc"]))
            curves["train loss"].append((x, rec["train_loss"]))
        offset += max(1, max(rec["epoch"] for rec in log)) if log else 0
    written = []
    auc_curves = {k: v for k, v in curves.items() if k != "train loss"}
    for fname, series, title in (("curves_auc.svg", auc_curves, "validation AUC / UAUC per epoch"),
                                 ("curves_loss.svg", {"train loss": curves["train loss"]}, "train loss per epoch")):
        path = os.path.join(run_dir, fname)
        with open(path, "w") as f:
            f.write(svg_lines(series, title, xlabel="epoch (stages in turn)", boundaries=boundaries))
        written.append(path)
    labels = {"sasrec": "SASRec", "text": "TALLRec", "joint": "SASRecLLM"}
    groups = {"test": {}, "test_warm": {}, "test_cold": {}}
    for name, d in chain:
        if os.path.exists(os.path.join(d, "metrics.json")):
            m = read_metrics(d)
            for g in groups:
                groups[g][labels.get(name, name)] = m[g]["auc"]
    path = os.path.join(run_dir, "bars_auc.svg")
    with open(path, "w") as f:
        f.write(svg_bars(groups, "test AUC: all, warm and cold rows"))
    written.append(path)
    return written


# -----------------------------------------------------------------------------
# plots: hand-written SVG, no plotting dependency

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def _esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg_lines(series, title, xlabel="epoch", boundaries=(), width=640, height=360):
    """A line chart. series: {name: [(x, y), ...]}; boundaries: [(x, label)] drawn as dashed lines."""
    pad_l, pad_r, pad_t, pad_b = 56, 150, 30, 40
    pts = [p for s in series.values() for p in s if p[1] is not None and math.isfinite(p[1])]
    if not pts:
        raise ValueError(f"svg_lines: nothing to plot for '{title}'")
    xs = [p[0] for p in pts] + [b[0] for b in boundaries]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    m = 0.05 * (y1 - y0)
    y0, y1 = y0 - m, y1 + m
    W, H = width - pad_l - pad_r, height - pad_t - pad_b
    X = lambda x: pad_l + W * (x - x0) / (x1 - x0)
    Y = lambda y: pad_t + H * (1 - (y - y0) / (y1 - y0))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{pad_l}" y="18" font-size="13">{_esc(title)}</text>',
           f'<rect x="{pad_l}" y="{pad_t}" width="{W}" height="{H}" fill="none" stroke="#444"/>']
    for k in range(5):  # y ticks
        v = y0 + (y1 - y0) * k / 4
        out.append(f'<text x="{pad_l - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.3f}</text>')
        out.append(f'<line x1="{pad_l}" x2="{pad_l + W}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#eee"/>')
    for k in range(5):  # x ticks
        v = x0 + (x1 - x0) * k / 4
        out.append(f'<text x="{X(v):.1f}" y="{pad_t + H + 16}" text-anchor="middle">{v:g}</text>')
    out.append(f'<text x="{pad_l + W / 2}" y="{height - 6}" text-anchor="middle">{_esc(xlabel)}</text>')
    for bx, label in boundaries:
        out.append(f'<line x1="{X(bx):.1f}" x2="{X(bx):.1f}" y1="{pad_t}" y2="{pad_t + H}" stroke="#888" stroke-dasharray="4,3"/>')
        out.append(f'<text x="{X(bx) + 3:.1f}" y="{pad_t + 12}" fill="#555">{_esc(label)}</text>')
    for n, (name, s) in enumerate(series.items()):
        color = PALETTE[n % len(PALETTE)]
        segments, seg = [], []  # a None value breaks the line (e.g. between training stages)
        for x, y in s:
            if y is None or not math.isfinite(y):
                segments, seg = segments + [seg], []
            else:
                seg.append((x, y))
        for seg in segments + [seg]:
            if seg:
                path = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in seg)
                out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        out.append(f'<rect x="{pad_l + W + 12}" y="{pad_t + 16 * n}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{pad_l + W + 26}" y="{pad_t + 16 * n + 9}">{_esc(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def svg_bars(groups, title, width=640, height=360):
    """A grouped bar chart. groups: {group: {bar name: value}} (e.g. {"test": {"SASRec": 0.7}})."""
    pad_l, pad_r, pad_t, pad_b = 56, 150, 30, 40
    names = list(dict.fromkeys(b for g in groups.values() for b in g))
    vals = [v for g in groups.values() for v in g.values() if v is not None and math.isfinite(v)]
    if not vals:
        raise ValueError(f"svg_bars: nothing to plot for '{title}'")
    y0 = min(0.5, min(vals) - 0.02)  # AUC-like values: start at 0.5 (chance) when everything is above it
    y1 = max(vals) + 0.02
    W, H = width - pad_l - pad_r, height - pad_t - pad_b
    Y = lambda y: pad_t + H * (1 - (y - y0) / (y1 - y0))
    gw = W / len(groups)
    bw = 0.8 * gw / max(1, len(names))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{pad_l}" y="18" font-size="13">{_esc(title)}</text>',
           f'<line x1="{pad_l}" x2="{pad_l + W}" y1="{pad_t + H}" y2="{pad_t + H}" stroke="#444"/>']
    for k in range(5):
        v = y0 + (y1 - y0) * k / 4
        out.append(f'<text x="{pad_l - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.3f}</text>')
        out.append(f'<line x1="{pad_l}" x2="{pad_l + W}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#eee"/>')
    for gi, (group, bars) in enumerate(groups.items()):
        gx = pad_l + gi * gw + 0.1 * gw
        out.append(f'<text x="{pad_l + (gi + 0.5) * gw:.1f}" y="{pad_t + H + 16}" text-anchor="middle">{_esc(group)}</text>')
        for bi, name in enumerate(names):
            v = bars.get(name)
            if v is None or not math.isfinite(v):
                continue
            x = gx + bi * bw
            out.append(f'<rect x="{x:.1f}" y="{Y(v):.1f}" width="{bw - 2:.1f}" height="{Y(y0) - Y(v):.1f}" fill="{PALETTE[bi % len(PALETTE)]}"/>')
            out.append(f'<text x="{x + bw / 2 - 1:.1f}" y="{Y(v) - 3:.1f}" text-anchor="middle" font-size="9">{v:.3f}</text>')
    for bi, name in enumerate(names):
        out.append(f'<rect x="{pad_l + W + 12}" y="{pad_t + 16 * bi}" width="10" height="10" fill="{PALETTE[bi % len(PALETTE)]}"/>')
        out.append(f'<text x="{pad_l + W + 26}" y="{pad_t + 16 * bi + 9}">{_esc(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", help="a run directory: re-evaluate its best.pt, write metrics.json")
    ap.add_argument("--preds", help="TSV with user_id, item_id, label, score [, split, seen, warm]")
    ap.add_argument("--table", nargs="+", metavar="RUN", help="run directories holding metrics.json")
    ap.add_argument("--part", default="test", help="which metrics.json section --table shows")
    ap.add_argument("--shuffle-cf", action="store_true",
                    help="ablation: permute the collaborative tokens across the evaluation set")
    ap.add_argument("--repeats", type=int, default=1, help="evaluate K times (K permutation seeds with --shuffle-cf)")
    ap.add_argument("--seeds", nargs="+", metavar="RUN", help="runs trained with different --seed: mean +- std")
    ap.add_argument("--plot", action="store_true", help="write SVG curves and bars beside RUN")
    ap.add_argument("--data-dir", default=None, help="re-scoring: the data root, if it moved since training")
    args = ap.parse_args(argv)
    try:
        if args.preds:
            print(preds_table(args.preds))
        elif args.table:
            print(runs_table(args.table, args.part))
        elif args.seeds:
            reports = [read_metrics(d) for d in args.seeds]
            print(f"mean ± std over {len(reports)} runs: {', '.join(args.seeds)}")
            print(mean_std_table(mean_std(reports)))
        elif args.run:
            if args.plot:
                for path in plot_run(args.run):
                    print(f"wrote {path}")
                return 0
            if args.shuffle_cf:
                print(shuffle_cf_report(args.run, args.repeats, args.data_dir))
                return 0
            reports = evaluate_run(args.run, repeats=args.repeats, data_dir=args.data_dir)
            if args.repeats == 1:
                train.loop.write_json(reports[0], os.path.join(args.run, "metrics.json"))
                print(f"wrote {os.path.join(args.run, 'metrics.json')}")
                print(markdown_table([(p, reports[0][p]) for p in PARTS], rel=False))
            else:
                print(f"{args.run}, mean ± std over {args.repeats} evaluations:")
                print(mean_std_table(mean_std(reports)))
        else:
            ap.print_help()
            return 2
    except (OSError, ValueError, KeyError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
