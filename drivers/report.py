"""The paper's tables (mean ± std over seeds) and Figs. 10-12 over a table's runs, and the README's
generated blocks: a driver beside the lesson (metrics.py computes the metrics, eval.py scores one run,
tools/tables.py lays one table out, drivers/table.sh trains the rows)."""
import argparse
import bisect
import datetime
import math
import os
import re
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np

if not __package__:  # run as a file (python drivers/x.py): the lesson's modules are one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))  # (as python: links resolved)
import train
from tools.runs import (changed_flags, cli, files_digest, json_bytes, made_from_changes, move_aside, path, peek_args,
                        read_made_from, refuse_artefact, refuse_link, refuse_overlap, utf8, write_atomic)
from tools.sources import DECIMAL, TIME_MAX, DataError, _lines, integer, read_text
from tools.svg import finite, svg_bars, svg_lines
from tools.tables import (COLUMNS, _num, fmt, fmt_mean_std, markdown_table, md_table, mean_std, read_log, read_metrics,
                          read_metrics_file)


def _write(path, text):
    refuse_artefact(os.path.dirname(os.path.abspath(path)), f"{path}: its folder")  # (ROOT.md, ROOT/sweep.md...)
    write_atomic(path, text.encode("utf-8"))
    return path


# -----------------------------------------------------------------------------
# the README's tables, generated from the metrics the runs wrote: results/ keeps a copy of each
# cited run's metrics.json (--collect), and the README marks every generated block,
#     <!-- table PART [norel] | label: results/x/a.json | label: results/x/b.json -->  ...  <!-- /generated -->
#     <!-- file results/x/shuffle_cf.md -->  ...  <!-- /generated -->

MARKER, CLOSER = re.compile(r"<!-- (table|file) (.*) -->\n"), "<!-- /generated -->"  # each a line of its own


def render_readme(text, root="."):
    """The README with every generated block rebuilt from the files its marker names. A table row is
    `label: a.json`, or `label: a.json + b.json + ...` for the mean ± sample std over those runs (seeds)."""
    def inside(spec, suffix):  # a README someone else wrote may not embed /etc/passwd, ../secret or .ssh/id_rsa
        spec = spec.strip()
        path, real, top = Path(root, spec), os.path.realpath(Path(root, spec)), os.path.realpath(root)
        if os.path.isabs(spec) or os.path.commonpath([real, top]) != top:
            raise ValueError(f"README marker names {spec[:80]!r}; expected a path inside {root}")
        if path.suffix != suffix or any(p.startswith(".") for p in Path(os.path.relpath(real, top)).parts):
            raise ValueError(f"README marker names {spec[:80]!r}; expected a {suffix} file, outside hidden folders")
        return path

    def block(kind, spec):
        if kind == "file":
            text = read_text(inside(spec, ".md"), "a file the README embeds").rstrip("\n")
            if re.search(r"^<!-- ((table|file) .* -->|/generated -->)", text, re.M):  # it would add blocks each time
                raise ValueError(f"{spec.strip()[:80]}: a file the README embeds holds a marker line of its own")
            return text
        head, *rows = [field.strip() for field in spec.split("|")]
        part, *flags = head.split() or [""]  # "test", or "test norel" for a table without Rel.Imp.
        table = []
        for row in rows:
            if ":" not in row:
                raise ValueError(f"README table row {row[:80]!r}; expected 'label: a.json [+ b.json...]'")
            label, paths = (x.strip() for x in row.rsplit(":", 1))
            paths = [p.strip() for p in paths.split("+")]
            files = [inside(p, ".json") for p in paths]
            if len(set(map(os.path.realpath, files))) < len(files):  # (a std of 0 over one run)
                raise ValueError(f"README table row {row[:80]!r} names one file twice; expected each seed's run once")
            ms = [read_metrics_file(f) for f in files]
            for p, m in zip(paths, ms):
                if not isinstance(m, dict) or not isinstance(m.get(part), dict):  # (best_epoch is a number)
                    raise ValueError(f"{p}: no '{part}' section of metrics; a README table marker names one (test...)")
            table.append((label, ms[0][part] if len(ms) == 1 else mean_std(ms, paths)[part]))
        return markdown_table(table, rel="norel" not in flags)
    # line by line, each marker's closer found by bisection: a regex over the text rescanned it from every
    # "<!-- " (a README of 1 MB took minutes)
    lines = text.splitlines(keepends=True)
    closers = [k for k, line in enumerate(lines) if line.startswith(CLOSER)]
    out, k = [], 0
    while k < len(lines):
        m, c = MARKER.fullmatch(lines[k]), bisect.bisect(closers, k)  # the first closer after line k
        if m and c < len(closers):
            out += [lines[k], block(m[1], m[2]) + "\n"]
            k = closers[c]
        out.append(lines[k])
        k += 1
    return "".join(out)


def refuse_into(into, run_dirs):
    """--into neither a link nor in what a run read (its data, LLM, adapter...): one more file there changes
    the digest the run was made from, and eval.py, --resume and the joint stage then refuse the run."""
    refuse_link(into)
    refuse_artefact(into, "--into")
    for best in (os.path.join(d, "best.pt") for d in run_dirs):
        if os.path.exists(best):
            refuse_overlap(into, train.inputs(train.read_run(best)[0]), "--into")


def collect(run_dirs, into):
    """Copy each run's metrics.json to INTO/<run name>.json: the files the README's tables cite."""
    names = [os.path.basename(os.path.abspath(d)) for d in run_dirs]
    if clash := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"--collect: two runs named {clash[0]} would write the same {into}/{clash[0]}.json; "
                         "collect them into different --into folders")
    refuse_into(into, run_dirs)
    files = [(d, json_bytes(read_metrics(d)), name) for d, name in zip(run_dirs, names)]  # all read before one is written
    os.makedirs(into, exist_ok=True)
    for d, new, name in files:
        target = os.path.join(into, name + ".json")
        if os.path.lexists(target) and not (os.path.isfile(target) and os.path.getsize(target) == len(new)
                                            and Path(target).read_bytes() == new):
            move_aside(into, [name + ".json"], "--collect")  # other figures under that name: kept, not overwritten
        write_atomic(target, new)
        print(f"{d}/metrics.json -> {into}/{name}.json")


# -----------------------------------------------------------------------------
# Table 1 (or 2) over seeds: ROOT/seed<s>/<stage>/metrics.json, as drivers/table.sh trains them

# Table 1's rows in order, train.py stage -> the paper's name (also the plots' labels).
ROWS = {"pop": "Pop", "mf": "MF", "ncf": "NCF", "gru4rec": "RNN", "mc": "MC", "sasrec": "SASRec",
        "icl": "ICL", "text": "TALLRec", "joint": "SASRecLLM"}
# The paper's own test AUC / UAUC (its Table 1, TinyLlama-1.1B on ML-1M), set beside ours by --table.
PAPER = {"ml1m": {"sasrec": (0.634, 0.607), "text": (0.689, 0.676), "joint": (0.696, 0.685)}}


def check_alike(dirs, want):
    """Refuse runs that may not share a row: each must have its flags of `want` ({flag: value} per run: a seed
    its --seed and its row's stage, a sweep's LR its --lr) and otherwise the first one's flags and inputs (how
    and where a run ran, its device or paths, may differ; not a smoke run's --max-steps; --max-minutes may, as
    --stage all records each stage's deadline there), else a mean or a sweep would mix experiments."""
    may = {f.name for f in fields(train.Run) if f.metadata["resume_may_change"]} - {"max_steps"}
    may |= set(want[0] if want else ())
    first = None
    for d, w in zip(dirs, want):
        args, made = peek_args(best := os.path.join(d, "best.pt")), peek_args(best, "made_from")
        if bad := next((k for k, v in w.items() if args.get(k) != v), None):
            raise DataError(f"{best}: trained with --{bad.replace('_', '-')} {args.get(bad)!r:.40}, not {w[bad]}"
                            " as its directory says (or unreadable)")
        changed = changed_flags(first[1], args, may) + [  # (a joint run's CF run and adapter are its seed's own)
            f"other {k} (digest {made.get(k)!r:.20})" for k in made_from_changes(first[2], made)
            if k not in ("cf", "adapter")] if first else []
        if changed:
            raise DataError(f"{d} and {first[0]} differ in more than {', '.join(w)}: {'; '.join(changed)[:300]}; "
                            "a row's runs must share their flags and data (train it again, or use another root)")
        if first and cut_short(first[0], first[1]) != cut_short(d, args):  # (a budget given at --resume: not in args)
            short, done = (d, first[0]) if cut_short(d, args) else (first[0], d)
            raise DataError(f"{short} was cut short by a --max-minutes or --max-steps budget (an epoch cut, or epochs "
                            f"left that --max-epochs and --patience would run), {done} was not; a row's runs must end "
                            "alike (resume the short one without the budget, or train it again if an epoch was cut)")
        first = first or (d, args, made)


def cut_short(run_dir, args):
    """Did a budget (--max-minutes, --max-steps) stop the run before --max-epochs or --patience did? metrics.json
    says (cut_short); runs older than it by their log and best epoch. The closed-form rows train nothing: never."""
    if os.path.exists(os.path.join(run_dir, "metrics.json")) and "cut_short" in (m := read_metrics(run_dir)):
        return m["cut_short"] == 1
    top, wait, best = (v if type(v) is int else 0 for v in (
        args.get("max_epochs"), args.get("patience"), peek_args(os.path.join(run_dir, "best.pt"), None).get("epoch")))
    return len(log := read_log(run_dir)) > 0 and len(log) < top and len(log) - best < wait


SEED = r"seed(0|[1-9][0-9]{0,2})"  # a seed's folder in a table's root (table.sh's SEEDS: 1..999)


def table_runs(root, stages):
    """(seeds, {stage: [its run dir on each seed that has one]}, {stage: mean_std over them}) for the
    stages with runs under a table root. A row may have fewer seeds than the table (Pop and ICL are
    deterministic: seed 0 alone); a run directory without metrics.json is an error that names it."""
    names = os.listdir(root) if os.path.isdir(root) else []
    holds = lambda n: any(os.path.isdir(os.path.join(root, n, s)) for s in stages)  # noqa: E731 (a seed that holds a row)
    if odd := next((n for n in names if n.startswith("seed") and holds(n) and not re.fullmatch(SEED, n)), None):
        raise DataError(f"{os.path.join(root, odd)}: expected seed<N> (seed0, seed1...) for a seed's runs; rename it, "
                        "or move it out of the table's root")
    seeds = sorted(int(n[4:]) for n in names if re.fullmatch(SEED, n) and holds(n))
    if not seeds:
        raise FileNotFoundError(f"{root}: no seed<N>/ run directories; expected the root that drivers/table.sh "
                                "wrote (e.g. runs/table_ml1m)")
    dirs = {s: [d for k in seeds if os.path.isdir(d := os.path.join(root, f"seed{k}", s))] for s in stages}
    runs = {s: ds for s, ds in dirs.items() if ds}
    for s, ds in runs.items():  # (a directory's name is no proof of the stage or seed that made it)
        check_alike(ds, [dict(seed=int(os.path.basename(os.path.dirname(d))[4:]), stage=s) for d in ds])
    for d in runs.get("joint", []):  # each seed's joint run built on its own seed's CF run and adapter
        made, cf = peek_args(os.path.join(d, "best.pt"), "made_from"), peek_args(os.path.join(d, "best.pt")).get("cf")
        seed = os.path.join(root, os.path.basename(os.path.dirname(d)))  # (not d/..: the kernel reads a link's)
        for key, part in (("cf", os.path.join(seed, str(cf), "best.pt")), ("adapter", os.path.join(seed, "text",
                                                                                                    "adapter"))):
            if os.path.exists(part) and made.get(key) != files_digest(part):
                raise DataError(f"{d}: its {key} is not {os.path.normpath(part)} (digest {made.get(key)!r:.20}); a "
                                "seed's joint run is built on that seed's runs (drivers/table.sh passes them)")
    for d in runs.get("text", []):  # its adapter is its best epoch's (made_from.json says since session 20)
        made, h = read_made_from(os.path.join(d, "adapter")).get("run"), peek_args(os.path.join(d, "best.pt"), None)
        own = dict(epoch=h.get("epoch"), valid_auc=h.get("best_valid_auc"))
        if made is not None and made != own and not (own["valid_auc"] != own["valid_auc"] and made == dict(own,
                                                                                                     valid_auc=None)):
            raise DataError(f"{d}/adapter was made by another run ({made!r:.60}) than {d}/best.pt ({own!r:.60}); "
                            "expected the run's own adapter")
    return seeds, runs, {s: mean_std([read_metrics(d) for d in ds], ds) for s, ds in runs.items()}


def row_seconds(root):
    """{seed<s>/<stage>: seconds} from table.sh's times.tsv (name TAB seconds [TAB started|resumed]): a
    row started again replaces its time, a resumed one (after a pause or a kill) adds to it."""
    path, seconds = os.path.join(root, "times.tsv"), {}
    lines = _lines(path, "table.sh's row times") if os.path.exists(path) else []
    for n, line in filter(lambda nl: nl[1].strip(), lines):
        try:
            name, sec, *how = line.split("\t")
            if how not in ([], ["started"], ["resumed"]) or not re.fullmatch(r"seed(0|[1-9][0-9]*)/(" + "|".join(
                    ROWS) + ")", name):  # (table.sh's names: "seed9/zzz" or "./seed0/mf" added time to the total)
                raise ValueError(how)
            sec = integer(sec, 0, TIME_MAX)
        except ValueError:
            raise DataError(f"{path}:{n}: expected seed<N>/<row> TAB seconds 0..{TIME_MAX} [TAB started or resumed], "
                            f"got {line[:60]!r}") from None
        seconds[name] = sec + (seconds.get(name, 0) if how == ["resumed"] else 0)
    if sum(seconds.values()) > TIME_MAX:  # (timedelta's limit is 1000 times that)
        raise DataError(f"{path}: its rows add up to more than {TIME_MAX} seconds")
    return seconds


def cost_row(name, run_dir, seconds):
    log = read_log(run_dir)
    median = lambda key: f"{np.median([e[key] for e in log]):,.1f}" if log and all(key in e for e in log) else "-"
    best = read_metrics(run_dir).get("best_epoch") if os.path.exists(os.path.join(run_dir, "metrics.json")) else None
    wall = str(datetime.timedelta(seconds=round(seconds))) if seconds is not None else "-"
    return [name, wall, f"{len(log)} ({best})" if log else "-", median("samples_per_s"), median("tokens_per_s")]


def build_table(root, command="", data=None):
    """ROOT.md from the finished rows under root, written and printed."""
    seeds, runs, stats = table_runs(root, ROWS)
    seconds = row_seconds(root)  # the rows of this table alone add to the total (a row never finished: none)
    mine = sum(seconds.get(os.path.relpath(d, root), 0) for ds in runs.values() for d in ds)
    total, n = datetime.timedelta(seconds=round(mine)), len(seeds)
    spread = "mean ± sample std" if n > 1 else "one seed, no std"
    # Bold lines, not headings: a README embeds this file inside its own sections.
    lines = [f"**{len(runs)} rows over {n} seed{'s' * (n > 1)} ({', '.join(map(str, seeds))}), {spread}**", ""]
    seed_of = lambda d: os.path.basename(os.path.dirname(d))[4:]  # ROOT/seed<k>/<stage> -> k
    fewer = [f"{ROWS[s]} (seed {', '.join(map(seed_of, ds))})" for s, ds in runs.items() if len(ds) < n]
    lines += [f"Rows on fewer seeds: {', '.join(fewer)}.", ""] if fewer else []
    lines += [f"`{c}`" for c in command.splitlines()] + [""] if command else []  # (one call a line)
    ours = "SASRecLLM's" if "joint" in stats else "with no SASRecLLM row, the part's best-AUC row's"
    lines += [f"The rows' own training times add up to {total} ({root}/times.tsv). Rel. Imp.: {ours} gain "
              "over the row, the mean over AUC and UAUC of (ours - row) / row, on the seed means."]
    for part in ("test", "test_warm", "test_cold"):  # Table 1 on all test rows, then the warm/cold split
        if all(part in st for st in stats.values()):
            lines += ["", f"**{part}**", "", markdown_table([(ROWS[s], st[part]) for s, st in stats.items()])]
    paper = {s: v for s, v in PAPER.get(data, {}).items() if s in stats}
    if paper:  # the paper's rows beside ours, on the whole test split
        ours = lambda s, k: fmt_mean_std(*stats[s]["test"][k])
        lines += ["", "**paper**", "", md_table(
            ["model", "AUC (ours)", "UAUC (ours)", "AUC (paper, TinyLlama-1.1B)", "UAUC (paper)"],
            [[ROWS[s], ours(s, "auc"), ours(s, "uauc"), f"{a:.3f}", f"{u:.3f}"] for s, (a, u) in paper.items()])]
    lines += ["", "**cost**", "", md_table(["model", "wall time", "epochs (best)", "train samples/s", "train tokens/s"],
                                          [cost_row(ROWS[s], ds[0], seconds.get(os.path.relpath(ds[0], root)))
                                           for s, ds in runs.items()]),
              "", "The row's first seed: its wall time (times.tsv), its epochs, its training speed (the median over "
              "epochs)."]
    text = "\n".join(lines) + "\n"
    print(text + f"wrote {_write(os.path.abspath(root) + '.md', text)}")


# -----------------------------------------------------------------------------
# the paper's figures: Figs. 10 and 11's bars, Fig. 12's curves across the text and joint stages

ABLATION = ("icl", "text", "sasrec", "joint")  # Figs. 10 and 11: without CF, without the LLM, both
FIG12 = [("auc", "uauc"), ("logloss",), ("accuracy",)]  # Fig. 12's panels: the valid metrics each one draws


def write_curves(chain, into, note=""):
    """Fig. 12's charts over chain's stages ([(stage, run dir)], oldest first), epochs counted on across
    them, each stage named above its span, dashed at each switch; a chart with nothing to show is skipped."""
    rows, stages, offset = [], [], 0
    for name, d in chain:
        log = read_log(d)
        if not log:  # Pop and ICL do not train
            continue
        rows += [dict(rec["valid"], x=offset + rec["epoch"]) for rec in log]
        last = max(rec["epoch"] for rec in log)
        stages.append((offset + 0.5, offset + last + 0.5, ROWS.get(name, name)))
        offset += last
        rows.append(dict(x=offset + 0.5))  # no key: a gap, so no line joins two stages
    written, names = [], dict(COLUMNS)
    for keys in FIG12:
        series = {f"valid {names[k]}": [(r["x"], r.get(k)) for r in rows] for k in keys}
        if any(finite(y) for s in series.values() for _, y in s):
            title = f"validation {' and '.join(names[k] for k in keys)} per epoch{note}"
            written.append(_write(os.path.join(into, f"fig12_curves_{keys[0]}.svg"), svg_lines(
                series, title, xlabel="epoch, counted on across the stages", ylabel=names[keys[0]], stages=stages)))
    return written


def plot_table(root, into=None):
    """Figs. 10-12 from a table's runs, into INTO (default ROOT/figures): the ablation's and the warm/cold
    test bars (seed means), and the curves of the first seed's text then joint stage (the switch dashed)."""
    seeds, runs, stats = table_runs(root, ABLATION)
    if len(runs) < len(ABLATION):
        raise FileNotFoundError(f"{root}: the figures need the rows {', '.join(ABLATION)}; it has {', '.join(runs)}")
    into = into or os.path.join(root, "figures")
    refuse_into(into, [d for ds in runs.values() for d in ds])  # (a link at ROOT/figures: the figures anywhere)
    os.makedirs(into, exist_ok=True)
    over = (f"mean over {len(seeds)} seed{'s' * (len(seeds) > 1)}" if all(len(ds) == len(seeds) for ds in runs.values())
            else "mean over each row's seeds")
    means = lambda part, k: {ROWS[s]: st[part][k][0] if part in st else None for s, st in stats.items()}
    fig10 = _write(os.path.join(into, "fig10_ablation.svg"), svg_bars(
        {label: means("test", k) for k, label in COLUMNS}, f"Fig. 10: ablation on test, {over}",
        xlabel="metric (test rows)", ylabel="value", width=1200))
    warm_cold = {f"{label}, {w}": means(f"test_{w}", k) for k, label in (("auc", "AUC"), ("uauc", "UAUC"))
                 for w in ("warm", "cold")}
    fig11 = _write(os.path.join(into, "fig11_warm_cold.svg"), svg_bars(
        warm_cold, f"Fig. 11: warm and cold test rows, {over}", xlabel="metric, test rows", ylabel="value",
        ref=(0.5, "chance"), width=800))
    seed = next((k for k in seeds if all(os.path.isdir(os.path.join(root, f"seed{k}", s)) for s in ("text", "joint"))),
                None)
    if seed is None:
        raise FileNotFoundError(f"{root}: Fig. 12 needs a seed with both a text and a joint run")
    chain = [(s, os.path.join(root, f"seed{seed}", s)) for s in ("text", "joint")]
    return [fig10, fig11] + write_curves(chain, into, note=f": text then joint stage (seed {seed})")


def sweep_table(root, command):
    """drivers/lr_sweep.sh's ROOT/sweep.md: each lr<LR>/ run's one epoch, best valid AUC first."""
    names = [n for n in os.listdir(root) if n.startswith("lr") and DECIMAL.fullmatch(n[2:])]  # (a name is a cell)
    logs = {n[2:]: log for n in names if (log := read_log(os.path.join(root, n)))}
    for lr, log in logs.items():
        if not {"train_loss", "seconds"} <= log[0].keys() or not {"auc", "uauc", "n"} <= log[0]["valid"].keys():
            raise DataError(f"{os.path.join(root, 'lr' + lr, 'log.jsonl')}:1: expected train_loss, seconds and "
                            "valid's auc, uauc and n")
    check_alike([os.path.join(root, "lr" + lr) for lr in logs], [dict(lr=float(lr)) for lr in logs])  # one stage
    rows = sorted(((log[0]["valid"]["auc"], lr, log[0]) for lr, log in logs.items()),
                  key=lambda row: (ok := not math.isnan(_num(row[0])), _num(row[0]) if ok else 0, row[1]),
                  reverse=True)  # an undefined AUC (NaN, null) last
    table = md_table(["lr", "train loss", "valid AUC", "valid UAUC", "valid rows", "seconds"],
                     [[lr, fmt(e["train_loss"]), fmt(auc), fmt(e["valid"]["uauc"]), str(e["valid"]["n"]),
                       f"{e['seconds']:.0f}"] for auc, lr, e in rows])
    lrs = ", ".join(sorted(logs, key=float))  # (an earlier call's LRS too: the command names the last call's alone)
    return (f"`{command}`\n\nThe rows: every lr<LR>/ under {root} (lr {lrs}), this call's and any earlier "
            f"one's.\n\n{table}\n")


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    ap.add_argument("--table", metavar="ROOT", type=path, help="Table 1 over ROOT/seed<s>/<stage> -> ROOT.md")
    ap.add_argument("--command", default="", type=utf8, help="--table: the commands that trained it (one a line), printed above the table")
    ap.add_argument("--paper", metavar="DATA", choices=list(PAPER),
                    help="--table: set the paper's figures on DATA (ml1m) beside ours")
    ap.add_argument("--plot", metavar="ROOT", type=path,
                    help="Figs. 10-12 of a table root -> --into (default ROOT/figures)")
    ap.add_argument("--sweep", metavar="ROOT", type=path, help="drivers/lr_sweep.sh's table -> ROOT/sweep.md")
    ap.add_argument("--collect", nargs="+", metavar="RUN", type=path, help="copy the runs' metrics.json into --into")
    ap.add_argument("--into", type=path, help="--collect: the folder; --plot ROOT: where the figures go")
    ap.add_argument("--readme", nargs="?", const="README.md", metavar="FILE", type=path,
                    help="rebuild FILE's generated blocks")
    ap.add_argument("--check-readme", nargs="?", const="README.md", metavar="FILE", type=path,
                    help="exit 1 when FILE is stale")
    args = ap.parse_args(argv)
    modes = [m for m in ("table", "plot", "sweep", "collect", "readme", "check_readme") if getattr(args, m)]
    own = dict(command=("table", "sweep"), paper=("table",), into=("collect", "plot"))  # (else ignored)
    if len(modes) > 1:  # (the first one ran, the others were dropped without a word)
        ap.error(f"{' and '.join('--' + m.replace('_', '-') for m in modes)}: one at a time")
    if bad := next((k for k, ms in own.items() if getattr(args, k) and not set(ms) & set(modes)), None):
        ap.error(f"--{bad}: read by {' and '.join('--' + m for m in own[bad])} alone")
    if args.table:
        build_table(args.table, args.command, args.paper)
    elif args.plot:
        print("\n".join(f"wrote {p}" for p in plot_table(args.plot, args.into)))
    elif args.sweep:
        print(text := sweep_table(args.sweep, args.command), end="")
        _write(os.path.join(args.sweep, "sweep.md"), text)
    elif args.collect:
        collect(args.collect, args.into or "results")
    elif readme := args.readme or args.check_readme:
        text = read_text(readme, "a README")
        new = render_readme(text, os.path.dirname(os.path.abspath(readme)))
        if args.check_readme and new != text:
            print(f"error: {readme} is stale; run python -m drivers.report --readme {readme}", file=sys.stderr)
            return 1
        print(f"{readme}: generated blocks match results/" if args.check_readme else
              f"rewrote the generated blocks of {_write(readme, new)}")
    else:
        ap.print_help()
        return 2


if __name__ == "__main__":
    sys.exit(main())
