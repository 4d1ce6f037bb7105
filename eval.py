"""Reports for SASRecLLM: the paper's results tables (Tables 1 and 2: the baselines, ICL, TALLRec
and SASRecLLM on seven metrics with Rel.Imp.; --data picks the data set) trained and tabled in one
command, with the warm and cold test rows; the ablation and training-curve figures (Figs. 10-12);
re-scored runs, the --shuffle-cf ablation, mean ± std over seeds, and hand-written SVG plots. The
metrics themselves (AUC, UAUC, LogLoss, P/R/F1/accuracy, Rel.Imp.) are in metrics.py, each with
its formula.

CLI:
    python eval.py --table --data ml1m --llm tiny --seeds 3 [train.py flags]   # Table 1, trained
    python eval.py --plot runs/table_ml1m # Figs. 10-12 from that table's runs
    python eval.py --preds FILE.tsv       # metrics for a prediction file
    python eval.py --table runs/*         # the paper-style table over runs' metrics.json
    python eval.py runs/joint             # re-score a run's best.pt
    python eval.py runs/joint --shuffle-cf --repeats 3   # the CF tokens permuted across rows
    python eval.py --seeds runs/s0 runs/s1 runs/s2       # mean ± std over seeds
    python eval.py runs/joint --plot      # curves across the stages, bars of warm/cold AUC

`--table` with no run after it trains every row of Table 1 (ROWS) for seeds 0..N-1 by calling
train.main in this process, into TABLE_DIR/seed<s>/<stage> (default runs/table_<data>), skipping
rows whose metrics.json exists, so an interrupted table resumes where it stopped. Flags that
eval.py does not know (--limit, --max-steps, --llm, --template...) go to every train.py call.
It writes TABLE_DIR.md: each cell mean ± std over the seeds, and Rel.Imp. on the seed means.
"""
import argparse
import contextlib
import datetime
import json
import math
import os
import re
import shlex
import sys
import time

import numpy as np
import torch

import data
import train
from metrics import COLUMNS, _num, fmt, fmt_pct, markdown_table, md_table, metrics, rel_imp, split_report
from svg import finite, svg_bars, svg_lines

# -----------------------------------------------------------------------------
# tables

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
    os.makedirs(into, exist_ok=True)
    for d in run_dirs:
        name = os.path.basename(os.path.normpath(d))
        train.loop.write_json(read_metrics(d), os.path.join(into, name + ".json"))
        print(f"{d}/metrics.json -> {into}/{name}.json")


# -----------------------------------------------------------------------------
# runs: re-evaluate a run's best checkpoint, the --shuffle-cf ablation, mean +- std


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; train the run first (python train.py ... --out {run_dir})")
    with open(path) as f:
        return json.load(f)


def score_run(run, shuffle_cf=False, repeats=1, test_only=False):
    """One metrics.json-style report per evaluation of a run rebuilt by train.load_run, `repeats`
    times; with shuffle_cf, the k-th evaluation permutes the CF inputs with seed k. test_only
    leaves the valid split out (it costs an LLM run more than the test split)."""
    args, ds, model, make_predict = run
    model.eval()
    reports = []
    with torch.no_grad():
        for seed in range(repeats):
            predict = make_predict(shuffle_cf, seed)
            reports.append(split_report(ds, None if test_only else predict(model, "valid"), predict(model, "test")))
    return reports


def evaluate_run(run_dir, shuffle_cf=False, repeats=1, data_dir=None, device=None, test_only=False):
    """Rebuild the run from its best.pt (args + trainable tensors) on its own device (or `device`)
    and score valid and test (test alone with test_only), `repeats` times; returns one
    metrics.json-style report per evaluation.

    shuffle_cf permutes the collaborative inputs (user, history, target item fed to the CF
    encoder) across each evaluation split, with seed k on the k-th repeat, while every prompt keeps
    its own text: if the spliced tokens carry signal, AUC must drop."""
    return score_run(train.load_run(run_dir, data_dir, device), shuffle_cf, repeats, test_only)


PARTS = ("valid", "test", "test_seen", "test_unseen", "test_warm", "test_cold")


def shuffle_cf_report(run_dir, repeats=1, data_dir=None):
    """The --shuffle-cf ablation beside the unshuffled scores: AUC and UAUC per part, and the drop.
    With repeats > 1, the shuffled figures are mean ± std over that many permutations."""
    run = train.load_run(run_dir, data_dir)  # built once for both the plain and the shuffled scores
    [plain] = score_run(run)
    stats = mean_std(score_run(run, shuffle_cf=True, repeats=repeats))
    rows = []
    for p in PARTS:
        cells = [p]
        for k in ("auc", "uauc"):
            mean, std = stats[p][k]
            cells += [fmt(plain[p][k]), fmt_mean_std(mean, std), fmt(_num(plain[p][k]) - mean)]
        rows.append(cells)
    title = f"{run_dir}: CF tokens permuted across rows ({repeats} permutation{'s' * (repeats > 1)})"
    return title + "\n" + md_table(["part", "AUC", "AUC shuffled", "drop", "UAUC", "UAUC shuffled", "drop"], rows)


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

# -----------------------------------------------------------------------------
# the paper's Table 1, trained for N seeds in one command (python eval.py --table --seeds N ...)
#
#   TABLE_DIR/seed<s>/<stage>/   one train.py run per row and seed (metrics.json, log.jsonl, ...)
#   TABLE_DIR/times.json         {"seed<s>/<stage>": seconds} of each row when it was trained
#   TABLE_DIR.md                 the tables (test, warm, cold), the wall time and the command

# Table 1's rows in order, train.py stage -> the paper's name (also the plots' labels). SASRec and
# TALLRec (text) come before SASRecLLM (joint), which is built from both of the same seed.
ROWS = {"pop": "Pop", "mf": "MF", "ncf": "NCF", "gru4rec": "RNN", "mc": "MC", "sasrec": "SASRec",
        "icl": "ICL", "text": "TALLRec", "joint": "SASRecLLM"}
OURS = "joint"
TABLE_PARTS = ("test", "test_warm", "test_cold")  # Table 1 on all test rows, then the warm/cold split
# train.py flags that the table sets for every row itself
MANAGED = ("--stage", "--data", "--seed", "--out", "--cf-ckpt", "--lora", "--resume", "--overwrite")


def _hms(seconds):
    return str(datetime.timedelta(seconds=round(seconds)))


def read_times(root):
    path = os.path.join(root, "times.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def row_dir(root, seed, stage):
    return os.path.join(root, f"seed{seed}", stage)


def row_argv(root, seed, stage, data_name, extra):
    """train.py's argv for one row: the joint row reads its seed's SASRec checkpoint and text
    adapter; a row that an interrupt left unfinished continues from its last.pt (--resume), or
    starts over with its partial files moved aside (--overwrite) when it has none."""
    out = row_dir(root, seed, stage)
    argv = ["--stage", stage, "--data", data_name, "--seed", str(seed), "--out", out]
    if stage == "joint":
        argv += ["--cf-ckpt", os.path.join(row_dir(root, seed, "sasrec"), "best.pt"),
                 "--lora", os.path.join(row_dir(root, seed, "text"), "adapter")]
    if os.path.exists(os.path.join(out, "last.pt")):
        argv.append("--resume")
    elif train.loop.run_files(out):
        argv.append("--overwrite")
    return argv + list(extra)


def train_table(root, data_name, seeds, extra):
    """Train (in this process) every row of ROWS for seeds 0..seeds-1 whose metrics.json is missing,
    printing one line per row; returns how many rows were trained."""
    bad = sorted({x.split("=", 1)[0] for x in extra} & set(MANAGED))
    if bad:
        raise ValueError(f"--table sets {', '.join(bad)} for every row itself (the seed with --seeds N, the data with "
                         f"--data, the run directories under --table-dir); remove {'it' if len(bad) == 1 else 'them'}")
    try:
        train.parse_args(["--stage", "pop", *extra])  # a flag train.py does not take stops here, before any row
    except SystemExit:
        raise ValueError(f"train.py refused the flags that --table passes on ({shlex.join(extra)}); see its "
                         "message above") from None
    times, t0, trained = read_times(root), time.time(), 0
    for seed in range(seeds):
        for stage, name in ROWS.items():
            out = row_dir(root, seed, stage)
            if os.path.exists(os.path.join(out, "metrics.json")):
                state = "done before, skipped"
            else:
                argv = row_argv(root, seed, stage, data_name, extra)
                print(f"[table] {name}, seed {seed}: python train.py {shlex.join(argv)}", flush=True)
                start = time.time()
                rc = train.main(argv)
                if rc == 130:  # Ctrl-C inside train.main, which has said so
                    raise KeyboardInterrupt
                if rc != 0 or not os.path.exists(os.path.join(out, "metrics.json")):
                    raise train.loop.RunError(
                        f"row {name} (seed {seed}) failed (exit status {rc}, no {out}/metrics.json); its command: "
                        f"python train.py {shlex.join(argv)}")
                times[f"seed{seed}/{stage}"] = time.time() - start
                train.loop.write_json(times, os.path.join(root, "times.json"))
                trained += 1
                state = f"trained in {_hms(time.time() - start)}"
            test = read_metrics(out)["test"]
            print(f"[table] {name}, seed {seed}: {state} (elapsed {_hms(time.time() - t0)}); "
                  f"test AUC {fmt(test['auc'])} UAUC {fmt(test['uauc'])}", flush=True)
    return trained


def seeds_table(stats, part):
    """Table 1's layout over seeds. stats: {stage: mean_std(its seeds' metrics.json)}. Each cell is
    'mean ± std'; Rel.Imp. is metrics.rel_imp (the paper's: SASRecLLM's mean relative gain over
    the row on AUC and UAUC) on the seed means."""
    ours = {k: mean for k, (mean, _) in stats[OURS][part].items()}
    rows = []
    for stage, st in stats.items():
        means = {k: mean for k, (mean, _) in st[part].items()}
        rows.append([ROWS[stage]] + [fmt_mean_std(*st[part][k]) for k, _ in COLUMNS] +
                    ["-" if stage == OURS else fmt_pct(rel_imp(ours, means))])
    return md_table(["model"] + [c for _, c in COLUMNS] + ["Rel. Imp."], rows)


def build_table(root, data_name, seeds, extra, command):
    """Train what is missing of Table 1 under root, then write root + '.md' -> (its text, its path)."""
    t0 = time.time()
    trained = train_table(root, data_name, seeds, extra)
    stats = {stage: mean_std([read_metrics(row_dir(root, s, stage)) for s in range(seeds)]) for stage in ROWS}
    parts = [p for p in TABLE_PARTS if p in stats[OURS]]
    times = read_times(root)
    spread = "mean ± sample std" if seeds > 1 else "one seed, no std"
    # Bold lines, not headings: the README embeds this file inside its own sections.
    lines = [f"**Table 1's rows on {data_name}: {seeds} seed{'s' * (seeds > 1)} (0..{seeds - 1}), {spread}**", "",
             f"`{command}`", "",
             f"Wall time: {_hms(time.time() - t0)} for this call ({trained} rows trained, "
             f"{seeds * len(ROWS) - trained} found done); the rows' own training times add up to "
             f"{_hms(sum(times.values()))} ({root}/times.json). Rel. Imp.: SASRecLLM's gain over the row, "
             "the mean over AUC and UAUC of (ours - row) / row, on the seed means."]
    for part in parts:
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
    chain = train.run_chain(run_dir)  # [(stage name, run dir)], oldest first, ending with run_dir
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


def table_runs(root, stages):
    """(seeds, {stage: [run dir of each seed]}) under a table root (ROOT/seed<s>/<stage>), or one
    error naming every missing metrics.json."""
    seeds = sorted(int(m[1]) for m in (re.fullmatch(r"seed(\d+)", n) for n in
                                       (os.listdir(root) if os.path.isdir(root) else [])) if m)
    if not seeds:
        raise FileNotFoundError(f"{root}: no seed<N>/ run directories; expected the root that python eval.py "
                                "--table wrote (e.g. runs/table_ml1m). For one run's curves and bars: "
                                "python eval.py RUN --plot")
    runs = {stage: [row_dir(root, s, stage) for s in seeds] for stage in stages}
    missing = [os.path.join(d, "metrics.json") for dirs in runs.values() for d in dirs
               if not os.path.exists(os.path.join(d, "metrics.json"))]
    if missing:
        raise FileNotFoundError(f"{root}: {len(missing)} run(s) of the table unfinished, no {', '.join(missing[:4])}"
                                f"{', ...' if len(missing) > 4 else ''}; finish them with the python eval.py --table "
                                "command that made it (finished rows are skipped)")
    return seeds, runs


def plot_table(root, into=None):
    """The paper's figures from a table's runs, into INTO (default ROOT/figures):
    fig10_ablation.svg (ICL, TALLRec, SASRec, SASRecLLM on every test metric, seed means),
    fig11_warm_cold.svg (the same rows' AUC and UAUC on the warm and cold test rows) and
    fig12_curves_*.svg (the first seed's text then joint stage, per epoch; the switch dashed)."""
    seeds, runs = table_runs(root, ABLATION)
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

def builds_table(argv):
    """True for `--table` with no run directory after it: train and table Table 1 (--seeds N)."""
    i = argv.index("--table") if "--table" in argv else -1
    return i >= 0 and (i + 1 == len(argv) or argv[i + 1].startswith("-"))


def parser(build):
    """The CLI. When building the table (build=True) there is no RUN positional and no abbreviated
    flags, so that flags meant for train.py (--limit 300, --seed...) pass through unparsed."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=not build)
    if not build:  # (with --table, --device goes to train.py)
        ap.add_argument("run", nargs="?", help="a run directory: re-evaluate its best.pt, write metrics.json")
        ap.add_argument("--device", default=None, help="re-scoring: score on this device, not the run's own "
                                                       "(a GPU run re-scored on cpu)")
        ap.add_argument("--test-only", action="store_true",
                        help="re-scoring: the test split alone, written to --into DIR/<run name>.json (the run's "
                             "metrics.json stays as it is)")
    ap.add_argument("--preds", help="TSV with user_id, item_id, label, score [, split, seen, warm]")
    ap.add_argument("--table", nargs="*", metavar="RUN",
                    help="run directories holding metrics.json; with none, train Table 1 (--data, --seeds N, "
                         "--table-dir; other flags go to train.py)")
    ap.add_argument("--data", default="ml1m", help="--table: the data set of every row")
    ap.add_argument("--table-dir", default=None, help="--table: root of the rows' runs (default runs/table_<data>)")
    ap.add_argument("--part", default="test", help="which metrics.json section --table RUN... shows")
    ap.add_argument("--collect", nargs="+", metavar="RUN", help="copy the runs' metrics.json into --into")
    ap.add_argument("--into", default=None, help="--collect: the folder (default results); --plot ROOT: where the "
                                                 "figures go (default ROOT/figures)")
    ap.add_argument("--readme", nargs="?", const="README.md", metavar="FILE",
                    help="rewrite the generated tables of the README from results/")
    ap.add_argument("--check-readme", nargs="?", const="README.md", metavar="FILE",
                    help="exit 1 when the README's generated tables differ from results/")
    ap.add_argument("--shuffle-cf", action="store_true",
                    help="ablation: permute the collaborative tokens across the evaluation set")
    ap.add_argument("--repeats", type=int, default=1, help="evaluate K times (K permutation seeds with --shuffle-cf)")
    ap.add_argument("--seeds", nargs="+", metavar="RUN",
                    help="runs trained with different --seed: mean ± std; with --table: N, the seeds 0..N-1")
    ap.add_argument("--plot", nargs="?", const=True, metavar="ROOT",
                    help="RUN --plot: SVG curves and bars beside RUN; --plot ROOT: Figs. 10-12 of a --table root")
    ap.add_argument("--data-dir", default=None, help="re-scoring: the data root, if it moved since training; "
                                                     "--table: passed to train.py")
    return ap


def table_main(args, extra, command):
    """python eval.py --table --data D --seeds N [train.py flags]: train Table 1, write and print it."""
    seeds = args.seeds or ["1"]
    if len(seeds) != 1 or not seeds[0].isdigit() or int(seeds[0]) < 1:
        raise ValueError(f"--table trains seeds 0..N-1: give --seeds N (a number >= 1), got --seeds {' '.join(seeds)}")
    root = args.table_dir or os.path.join("runs", f"table_{args.data}")
    extra += ["--data-dir", args.data_dir] if args.data_dir else []
    try:
        text, path = build_table(root, args.data, int(seeds[0]), extra, command)
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to go on (finished rows are skipped)", file=sys.stderr)
        return 130
    print(text + f"wrote {path}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    build = builds_table(argv)
    ap = parser(build)
    args, extra = ap.parse_known_args(argv) if build else (ap.parse_args(argv), [])
    if not build and args.plot is True and not args.run:
        ap.error("--plot needs a run (python eval.py RUN --plot) or a table root (python eval.py --plot ROOT)")
    try:
        if build:
            return table_main(args, extra, "python eval.py " + shlex.join(argv))
        if args.preds:
            print(preds_table(args.preds))
        elif args.table:
            print(runs_table(args.table, args.part))
        elif args.collect:
            collect(args.collect, args.into or "results")
        elif args.readme or args.check_readme:
            path = args.readme or args.check_readme
            with open(path, encoding="utf-8") as f:
                text = f.read()
            new = render_readme(text, os.path.dirname(os.path.abspath(path)))
            if args.check_readme:
                if new != text:
                    print(f"error: {path}: generated tables are out of date; run python eval.py --readme", file=sys.stderr)
                    return 1
                print(f"{path}: generated tables match results/")
            else:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
                print(f"rewrote the generated tables of {path}")
        elif args.seeds:
            reports = [read_metrics(d) for d in args.seeds]
            print(f"mean ± std over {len(reports)} runs: {', '.join(args.seeds)}")
            print(mean_std_table(mean_std(reports)))
        elif isinstance(args.plot, str):
            for path in plot_table(args.plot, args.into):
                print(f"wrote {path}")
        elif args.run:
            if args.plot:
                for path in plot_run(args.run):
                    print(f"wrote {path}")
                return 0
            if args.shuffle_cf:
                with contextlib.redirect_stdout(sys.stderr):  # progress lines; stdout keeps the report alone
                    report = shuffle_cf_report(args.run, args.repeats, args.data_dir)
                print(report)
                return 0
            if args.test_only and (not args.into or args.repeats != 1):  # before the (long) scoring, not after
                raise ValueError("--test-only writes INTO/<run name>.json: give --into DIR, and no --repeats")
            reports = evaluate_run(args.run, repeats=args.repeats, data_dir=args.data_dir, device=args.device,
                                   test_only=args.test_only)
            if args.test_only:
                os.makedirs(args.into, exist_ok=True)
                path = os.path.join(args.into, os.path.basename(os.path.normpath(args.run)) + ".json")
                train.loop.write_json(reports[0], path)
                print(f"wrote {path}")
                print(markdown_table([(p, reports[0][p]) for p in PARTS if p in reports[0]], rel=False))
            elif args.repeats == 1:
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
        print(train.loop.error_line(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
