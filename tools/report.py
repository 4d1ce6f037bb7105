"""The paper's tables and figures over many runs, and the README's generated blocks: reporting
machinery beside the lesson (metrics.py computes the metrics and eval.py scores one run; this
file lays them out).

    python -m tools.report --table ROOT            # Table 1 or 2 over ROOT/seed<s>/<stage> -> ROOT.md
    python -m tools.report --plot ROOT             # Figs. 10-12 of that table -> ROOT/figures/
    python -m tools.report RUN --plot              # curves across a run's stages, warm/cold bars
    python -m tools.report --collect RUN... --into results/x   # copy their metrics.json
    python -m tools.report --readme [FILE]         # rebuild FILE's generated blocks from results/
    python -m tools.report --check-readme [FILE]   # exit 1 when they differ

tools/table.sh trains the rows that --table lays out.
"""
import argparse
import datetime
import json
import os
import math
import re
import sys

import numpy as np

from metrics import PARTS, rel_imp
from tools.runs import cli, read_checkpoint, write_json
from tools.svg import finite, svg_bars, svg_lines


# -----------------------------------------------------------------------------
# Table 1's layout: seven metrics per row, Rel.Imp., mean ± std over seeds

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
    (the first row whose name starts with one of `ours`) over each other row, averaged over AUC and
    UAUC; without such a row, the gain of the row with the best AUC."""
    head = ["model"] + [c for _, c in COLUMNS] + (["Rel. Imp."] if rel else [])
    body = []
    ref = next((m for name, m in rows if name in ours or name.startswith(ours)), None)
    if ref is None:
        valid = [m for _, m in rows if not math.isnan(_num(m.get("auc")))]
        ref = max(valid, key=lambda m: m["auc"]) if valid else None
    for name, m in rows:
        cells = [name] + [fmt(m.get(k)) for k, _ in COLUMNS]
        if rel:
            cells.append("-" if ref is None or m is ref else fmt_pct(rel_imp(ref, m)))
        body.append(cells)
    return md_table(head, body)


def md_table(head, rows):
    """A markdown table: head is a list of column names, rows lists of cell strings."""
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(cells) + " |" for cells in rows])


def mean_std(reports):
    """{part: {metric: (mean, std)}} over a list of metrics.json dicts. std is the sample standard
    deviation (ddof 1) over the reports, None for a single report; an undefined metric (null) is NaN."""
    out = {}
    for part, m in reports[0].items():
        if not isinstance(m, dict):  # best_epoch
            continue
        out[part] = {}
        for k in m:
            v = np.array([_num(r[part][k]) for r in reports], dtype=np.float64)
            out[part][k] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else None)
    return out


def fmt_mean_std(mean, std):
    """'0.7301 ± 0.0033'; the mean alone for one run (std None) or an undefined mean."""
    return fmt(mean) if std is None or math.isnan(mean) else f"{fmt(mean)} ± {fmt(std)}"


def mean_std_table(stats, parts=PARTS):
    return md_table(["part"] + [c for _, c in COLUMNS],
                    [[part] + [fmt_mean_std(*stats[part][k]) for k, _ in COLUMNS] for part in parts if part in stats])


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: the run is unfinished or was never trained "
                                f"(python train.py ... --out {run_dir}, with --resume to finish it)")
    with open(path) as f:
        return json.load(f)


# -----------------------------------------------------------------------------
# the README's tables, generated from the metrics the runs wrote
#
# results/ keeps a copy of each cited run's metrics.json (`--collect`), and the README marks
# every generated block:
#     <!-- table PART [norel] | label: results/x/a.json | label: results/x/b.json -->  ...  <!-- /generated -->
#     <!-- file results/x/shuffle_cf.md -->  ...  <!-- /generated -->
# `--readme` rewrites the blocks from those files; a test fails when they differ.

GENERATED = re.compile(r"(<!-- (table|file) (.*?) -->\n)(.*?)(<!-- /generated -->)", re.S)


def generated_block(kind, spec, root):
    if kind == "file":
        with open(os.path.join(root, spec.strip()), encoding="utf-8") as f:
            return f.read().rstrip("\n") + "\n"
    head, *rows = [field.strip() for field in spec.split("|")]
    part, *flags = head.split()  # "test", or "test norel" for a table without Rel.Imp.
    table = []
    for row in rows:
        label, path = (x.strip() for x in row.rsplit(":", 1))
        with open(os.path.join(root, path), encoding="utf-8") as f:
            m = json.load(f)
        if part not in m:
            raise ValueError(f"{path}: no '{part}' section")
        table.append((label, m[part]))
    return markdown_table(table, rel="norel" not in flags) + "\n"


def render_readme(text, root="."):
    """The README with every generated block rebuilt from the files its marker names."""
    return GENERATED.sub(lambda g: g[1] + generated_block(g[2], g[3], root) + g[5], text)


def collect(run_dirs, into):
    """Copy each run's metrics.json to INTO/<run name>.json: the files the README's tables cite."""
    names = [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"--collect: two runs named {clash[0]} would write the same {into}/{clash[0]}.json; "
                         "collect them into different --into folders")
    os.makedirs(into, exist_ok=True)
    for d, name in zip(run_dirs, names):
        write_json(read_metrics(d), os.path.join(into, name + ".json"))
        print(f"{d}/metrics.json -> {into}/{name}.json")


# -----------------------------------------------------------------------------
# runs: re-evaluate a run's best checkpoint, the --shuffle-cf ablation, mean +- std


# -----------------------------------------------------------------------------
# Table 1 (or 2) over seeds: ROOT/seed<s>/<stage>/metrics.json, as tools/table.sh trains them

# Table 1's rows in order, train.py stage -> the paper's name (also the plots' labels).
ROWS = {"pop": "Pop", "mf": "MF", "ncf": "NCF", "gru4rec": "RNN", "mc": "MC", "sasrec": "SASRec",
        "icl": "ICL", "text": "TALLRec", "joint": "SASRecLLM"}
OURS = "joint"
TABLE_PARTS = ("test", "test_warm", "test_cold")  # Table 1 on all test rows, then the warm/cold split


def row_dir(root, seed, stage):
    return os.path.join(root, f"seed{seed}", stage)


def table_runs(root, stages):
    """(seeds, {stage: [run dir of each seed]}) under a table root, for the stages that have runs,
    or one error naming every missing metrics.json."""
    seeds = sorted(int(m[1]) for m in (re.fullmatch(r"seed(\d+)", n) for n in
                                       (os.listdir(root) if os.path.isdir(root) else [])) if m)
    if not seeds:
        raise FileNotFoundError(f"{root}: no seed<N>/ run directories; expected the root that tools/table.sh "
                                "wrote (e.g. runs/table_ml1m). For one run's curves and bars: "
                                "python -m tools.report RUN --plot")
    runs = {s: [row_dir(root, k, s) for k in seeds] for s in stages
            if any(os.path.isdir(row_dir(root, k, s)) for k in seeds)}
    missing = [os.path.join(d, "metrics.json") for dirs in runs.values() for d in dirs
               if not os.path.exists(os.path.join(d, "metrics.json"))]
    if missing:
        raise FileNotFoundError(f"{root}: {len(missing)} run(s) of the table unfinished, no {', '.join(missing[:4])}"
                                f"{', ...' if len(missing) > 4 else ''}; finish them with the tools/table.sh "
                                "command that made it (finished rows are skipped)")
    return seeds, runs


def read_times(root):
    """{seed<s>/<stage>: seconds} from ROOT/times.tsv, the last line of each row winning."""
    path = os.path.join(root, "times.tsv")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {k: float(v) for k, v in (line.rstrip("\n").split("\t")[:2] for line in f if line.strip())}


def seeds_table(stats, part):
    """Table 1's layout over seeds. stats: {stage: mean_std(its seeds' metrics.json)}. Each cell is
    'mean ± std'; Rel.Imp. is metrics.rel_imp (the paper's: SASRecLLM's mean relative gain over
    the row on AUC and UAUC) on the seed means."""
    ours = {k: mean for k, (mean, _) in stats[OURS][part].items()} if OURS in stats else None
    rows = []
    for stage, st in stats.items():
        means = {k: mean for k, (mean, _) in st[part].items()}
        rows.append([ROWS[stage]] + [fmt_mean_std(*st[part][k]) for k, _ in COLUMNS] +
                    ["-" if stage == OURS or ours is None else fmt_pct(rel_imp(ours, means))])
    return md_table(["model"] + [c for _, c in COLUMNS] + ["Rel. Imp."], rows)


def build_table(root, command=""):
    """ROOT.md from the finished rows under root -> (its text, its path)."""
    seeds, runs = table_runs(root, ROWS)
    stats = {stage: mean_std([read_metrics(d) for d in dirs]) for stage, dirs in runs.items()}
    times = read_times(root)
    n = len(seeds)
    spread = "mean ± sample std" if n > 1 else "one seed, no std"
    # Bold lines, not headings: a README embeds this file inside its own sections.
    lines = [f"**{len(runs)} rows over {n} seed{'s' * (n > 1)} ({', '.join(map(str, seeds))}), {spread}**", ""]
    lines += [f"`{command}`", ""] if command else []
    lines += [f"The rows' own training times add up to {datetime.timedelta(seconds=round(sum(times.values())))} "
              f"({root}/times.tsv). Rel. Imp.: SASRecLLM's gain over the row, the mean over AUC and UAUC of "
              "(ours - row) / row, on the seed means."]
    for part in TABLE_PARTS:
        if all(part in st for st in stats.values()):
            lines += ["", f"**{part}**", "", seeds_table(stats, part)]
    text = "\n".join(lines) + "\n"
    path = os.path.normpath(root) + ".md"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return text, path
# -----------------------------------------------------------------------------
# figures: the paper's Fig. 12 curves across the stages, Figs. 10 and 11's bars

# (file, title, y-axis label, [(legend name, key)]): the paper's Fig. 12 panels, then the train loss.
# train_loss stays apart from valid LogLoss: SASRec's next-item objective is not the same BCE.
FIG12 = [("curves_auc.svg", "validation AUC and UAUC per epoch", "AUC", [("valid AUC", "auc"), ("valid UAUC", "uauc")]),
         ("curves_logloss.svg", "validation LogLoss per epoch", "LogLoss", [("valid LogLoss", "logloss")]),
         ("curves_accuracy.svg", "validation accuracy per epoch", "accuracy", [("valid accuracy", "accuracy")])]
CURVES = FIG12 + [("curves_loss.svg", "train loss per epoch", "train loss (each stage's objective)",
                   [("train loss", "train_loss")])]
ABLATION = ("icl", "text", "sasrec", "joint")  # Figs. 10 and 11: without CF, without the LLM, both


def read_log(run_dir):
    """log.jsonl's epochs as flat dicts (the valid metrics and train_loss); [] when the run has no
    log (Pop and ICL do not train)."""
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        log = [json.loads(line) for line in f if line.strip()]
    return [dict(rec["valid"], epoch=rec["epoch"], train_loss=rec["train_loss"]) for rec in log]


def write_curves(chain, into, curves=CURVES, prefix="", note=""):
    """One line chart per entry of curves, with the epochs of every stage of chain ([(stage, run
    dir)], oldest first) counted on across the stages: each stage named above its span, a dashed
    line at each switch. A chart with nothing to show is not written; returns the paths written."""
    rows, stages, offset = [], [], 0
    for name, d in chain:
        log = read_log(d)
        if not log:
            continue
        for rec in log:
            rows.append(dict(rec, x=offset + rec["epoch"]))
        last = max(rec["epoch"] for rec in log)
        stages.append((offset + 0.5, offset + last + 0.5, ROWS.get(name, name)))
        offset += last
        rows.append(dict(x=offset + 0.5))  # no key: a gap, so no line joins two stages
    written = []
    for fname, title, ylabel, keys in curves:
        series = {legend: [(r["x"], r.get(k)) for r in rows] for legend, k in keys}
        if not any(finite(y) for s in series.values() for _, y in s):
            continue
        path = os.path.join(into, prefix + fname)
        with open(path, "w") as f:
            f.write(svg_lines(series, title + note, xlabel="epoch, counted on across the stages", ylabel=ylabel,
                              stages=stages))
        written.append(path)
    return written


def plot_run(run_dir):
    """RQ4 / Fig. 12 curves and RQ2/RQ3 bars beside a run. For a joint run, the curves run through
    the SASRec and text stages it was built from (each stage labelled, the switches dashed), and
    the bars compare SASRec, TALLRec (text) and SASRecLLM (joint) on test and its warm and cold
    parts. A file with nothing to show (no log, no metrics.json) is not written."""
    chain = run_chain(run_dir)  # [(stage name, run dir)], oldest first, ending with run_dir
    written = write_curves(chain, run_dir)
    groups = {"all": {}, "warm": {}, "cold": {}}
    for name, d in chain:
        if os.path.exists(os.path.join(d, "metrics.json")):
            m = read_metrics(d)
            for g, part in zip(groups, ("test", "test_warm", "test_cold")):
                groups[g][ROWS.get(name, name)] = (m.get(part) or {}).get("auc")
    if any(finite(v) for g in groups.values() for v in g.values()):
        path = os.path.join(run_dir, "bars_auc.svg")
        with open(path, "w") as f:
            f.write(svg_bars(groups, "test AUC: all, warm and cold rows", xlabel="test rows", ylabel="AUC",
                             ref=(0.5, "chance")))
        written.append(path)
    if not written:
        raise ValueError(f"{run_dir}: nothing to plot (no log.jsonl or metrics.json in {[d for _, d in chain]})")
    return written


def plot_table(root, into=None):
    """The paper's figures from a table's runs, into INTO (default ROOT/figures):
    fig10_ablation.svg (ICL, TALLRec, SASRec, SASRecLLM on every test metric, seed means),
    fig11_warm_cold.svg (the same rows' AUC and UAUC on the warm and cold test rows) and
    fig12_curves_*.svg (the first seed's text then joint stage, per epoch; the switch dashed)."""
    seeds, runs = table_runs(root, ABLATION)
    if len(runs) < len(ABLATION):
        raise FileNotFoundError(f"{root}: the figures need the rows {', '.join(ABLATION)}; it has {', '.join(runs)}")
    into = into or os.path.join(root, "figures")
    os.makedirs(into, exist_ok=True)
    n = len(seeds)
    stats = {stage: mean_std([read_metrics(d) for d in dirs]) for stage, dirs in runs.items()}

    def means(part, k):  # {row name: its seed mean}; None where the part is missing
        return {ROWS[s]: st[part][k][0] if part in st else None for s, st in stats.items()}
    over = f"mean over {n} seed{'s' * (n > 1)}"
    fig10 = os.path.join(into, "fig10_ablation.svg")
    with open(fig10, "w") as f:
        f.write(svg_bars({label: means("test", k) for k, label in COLUMNS}, f"Fig. 10: ablation on test, {over}",
                         xlabel="metric (test rows)", ylabel="value", width=1200))
    fig11 = os.path.join(into, "fig11_warm_cold.svg")
    with open(fig11, "w") as f:
        f.write(svg_bars({f"{label}, {w}": means(f"test_{w}", k) for k, label in (("auc", "AUC"), ("uauc", "UAUC"))
                          for w in ("warm", "cold")}, f"Fig. 11: warm and cold test rows, {over}",
                         xlabel="metric, test rows", ylabel="value", ref=(0.5, "chance"), width=800))
    curves = write_curves([("text", runs["text"][0]), (OURS, runs[OURS][0])], into, FIG12, prefix="fig12_",
                          note=f": text then joint stage (seed {seeds[0]})")
    if not curves:
        raise FileNotFoundError(f"{root}: no log.jsonl in {runs['text'][0]} or {runs[OURS][0]} for Fig. 12")
    return [fig10, fig11] + curves


def run_chain(run_dir):
    """[(stage, run dir)] that built run_dir, oldest first: a joint run names its CF and text runs."""
    a = read_checkpoint(os.path.join(run_dir, "best.pt"))["args"]
    chain = [(a["cf"], os.path.dirname(a["cf_ckpt"])), ("text", os.path.dirname(a["lora"]))] if a["stage"] == "joint" else []
    return chain + [(a["stage"], run_dir)]


# -----------------------------------------------------------------------------
# command line


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", help="RUN --plot: curves and bars beside a run")
    ap.add_argument("--table", metavar="ROOT", help="Table 1 over ROOT/seed<s>/<stage> -> ROOT.md")
    ap.add_argument("--command", default="", help="--table: the command that trained it, printed above the table")
    ap.add_argument("--plot", nargs="?", const=True, metavar="ROOT", help="Figs. 10-12 of a table root (or RUN --plot)")
    ap.add_argument("--collect", nargs="+", metavar="RUN", help="copy the runs' metrics.json into --into")
    ap.add_argument("--into", default=None, help="--collect: the folder; --plot ROOT: where the figures go")
    ap.add_argument("--readme", nargs="?", const="README.md", metavar="FILE", help="rebuild FILE's generated blocks")
    ap.add_argument("--check-readme", nargs="?", const="README.md", metavar="FILE",
                    help="exit 1 when FILE's generated blocks differ from results/")
    args = ap.parse_args(argv)
    if args.table:
        text, path = build_table(args.table, args.command)
        print(text + f"wrote {path}")
    elif isinstance(args.plot, str):
        print("\n".join(f"wrote {p}" for p in plot_table(args.plot, args.into)))
    elif args.run and args.plot:
        print("\n".join(f"wrote {p}" for p in plot_run(args.run)))
    elif args.collect:
        collect(args.collect, args.into or "results")
    elif args.readme or args.check_readme:
        path = args.readme or args.check_readme
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = render_readme(text, os.path.dirname(os.path.abspath(path)))
        if args.check_readme:
            if new != text:
                print(f"error: {path}: generated blocks are out of date; run python -m tools.report --readme {path}",
                      file=sys.stderr)
                return 1
            print(f"{path}: generated blocks match results/")
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
            print(f"rewrote the generated blocks of {path}")
    else:
        ap.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
