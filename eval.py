"""Evaluation (paper Section 4.2): a trained run re-scored, the --shuffle-cf ablation, and metrics
for anyone's prediction file. The metrics themselves (AUC, UAUC, LogLoss, P/R/F1/accuracy, each
with its formula) are in metrics.py; the paper's tables and figures over many runs are drawn by
tools/report.py.

    python eval.py runs/joint                        # re-score a finished run's best.pt
    python eval.py runs/joint --shuffle-cf --repeats 3   # the CF tokens permuted across rows
    python eval.py --seeds runs/s0 runs/s1 runs/s2   # mean ± std over seeds
    python eval.py --preds FILE.tsv --scores logits  # metrics for a prediction file

eval.py only reads a run: it refuses a run that is still training (its run.lock is held) or that
never finished (no metrics.json), and a re-score is written to RUN/rescored.json (an earlier one
is moved aside), or to --into DIR/<run>.json, never over the run's own metrics.json.
"""
import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np
import torch

import train
from metrics import PARTS, metrics, split_report
from tools import runs, sources
from tools.report import _num, fmt, fmt_mean_std, markdown_table, md_table, mean_std, mean_std_table, read_metrics
from tools.runs import cli


# -----------------------------------------------------------------------------
# a run, rebuilt from its best.pt and scored again


def finished_run(run_dir, data_dir=None, device=None):
    """train.load_run of a run that no process is writing and that has finished."""
    holder = runs.live_lock(run_dir)
    if holder:
        raise runs.RunError(runs.busy_message(run_dir, holder))
    read_metrics(run_dir)  # unfinished runs have none
    return train.load_run(run_dir, data_dir, device)


def score_run(run, shuffle_cf=False, repeats=1, test_only=False):
    """One metrics.json-style report per evaluation of a run rebuilt by train.load_run, `repeats`
    times. shuffle_cf permutes the collaborative inputs (user, history, target item fed to the CF
    encoder) across each split, with seed k on the k-th repeat, while every prompt keeps its own
    text: if the spliced tokens carry signal, AUC must drop. test_only leaves valid out."""
    args, ds, model, make_predict = run
    model.eval()
    reports = []
    with torch.no_grad():
        for seed in range(repeats):
            predict = make_predict(shuffle_cf, seed)
            reports.append(split_report(ds, None if test_only else predict(model, "valid"), predict(model, "test")))
    return reports


def shuffle_cf_report(run_dir, repeats=1, data_dir=None, device=None):
    """The --shuffle-cf ablation beside the unshuffled scores: AUC and UAUC per part, and the drop.
    With repeats > 1, the shuffled figures are mean ± std over that many permutations."""
    run = finished_run(run_dir, data_dir, device)  # built once for both the plain and the shuffled scores
    [plain] = score_run(run)
    stats = mean_std(score_run(run, shuffle_cf=True, repeats=repeats))
    rows = []
    for p in PARTS:
        cells = [p]
        for k in ("auc", "uauc"):
            mean, std = stats[p][k]
            cells += [fmt(plain[p][k]), fmt_mean_std(mean, std),
                      fmt(_num(plain[p][k]) - mean)]
        rows.append(cells)
    title = f"{run_dir}: CF tokens permuted across rows ({repeats} permutation{'s' * (repeats > 1)})"
    return title + "\n" + md_table(["part", "AUC", "AUC shuffled", "drop", "UAUC", "UAUC shuffled", "drop"], rows)

# -----------------------------------------------------------------------------
# a prediction file: user_id, item_id, label, score [, split, seen, warm] (tools.sources reads it)

def preds_table(path, scores="logits"):
    """Markdown table for a prediction file: test (or all rows) and its seen/unseen/warm/cold parts.
    scores says what the score column holds: logits, or probabilities in [0, 1]."""
    d = sources.read_preds(path)
    keep = d["split"] == "test" if "split" in d else np.ones(len(d["user"]), dtype=bool)
    if not keep.any():
        raise ValueError(f"{path}: no test rows")
    s = d["score"]
    if scores == "probs":
        if s.min() < 0 or s.max() > 1:
            raise ValueError(f"{path}: --scores probs, but a score lies outside [0, 1] ({s.min():g} .. {s.max():g})")
        s = np.log(np.clip(s, 1e-7, 1 - 1e-7) / np.clip(1 - s, 1e-7, 1))  # -> logits, as metrics() takes
    rows = [("test", metrics(d["user"][keep], d["label"][keep], s[keep]))]
    for col, pos, neg in (("seen", "seen", "unseen"), ("warm", "warm", "cold")):
        for name, m in (((pos, d[col]), (neg, ~d[col])) if col in d else ()):
            if (keep & m).any():
                rows.append((f"test_{name}", metrics(d["user"][keep & m], d["label"][keep & m], s[keep & m])))
    return markdown_table(rows, rel=False)

# -----------------------------------------------------------------------------
# command line


def write_rescore(report, run_dir, into):
    """INTO/<run>.json, or RUN/rescored.json with an earlier one moved aside; never metrics.json."""
    if into:
        os.makedirs(into, exist_ok=True)
        path = os.path.join(into, os.path.basename(os.path.normpath(run_dir)) + ".json")
        if os.path.exists(path):
            raise runs.RunError(f"{path} exists; remove it or choose another --into")
    else:
        path = os.path.join(run_dir, "rescored.json")
        if os.path.exists(path):
            stamp, n = time.strftime("rescored-%Y%m%d-%H%M%S"), 0
            while os.path.exists(aside := os.path.join(run_dir, f"{stamp}{f'-{n}' if n else ''}.json")):
                n += 1  # two re-scores within a second: neither earlier one is overwritten
            os.replace(path, aside)
    runs.write_json(report, path)
    return path


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", help="a finished run directory: re-score its best.pt")
    ap.add_argument("--device", default=None, help="score on this device, not the run's own (a GPU run on cpu)")
    ap.add_argument("--data-dir", default=None, help="the data root, if it moved since training")
    ap.add_argument("--test-only", action="store_true", help="score the test split alone")
    ap.add_argument("--into", default=None, help="write the re-score to INTO/<run name>.json")
    ap.add_argument("--shuffle-cf", action="store_true", help="ablation: permute the CF tokens across the rows")
    ap.add_argument("--repeats", type=runs.positive, default=1, help="evaluate K times (K permutations with --shuffle-cf)")
    ap.add_argument("--seeds", nargs="+", metavar="RUN", help="runs trained with different --seed: mean ± std")
    ap.add_argument("--preds", help="TSV with user_id, item_id, label, score [, split, seen, warm]")
    ap.add_argument("--scores", choices=("logits", "probs"), help="--preds: what the score column holds")
    args = ap.parse_args(argv)
    if args.preds:
        if not args.scores:
            ap.error("--preds needs --scores logits or --scores probs (what the score column holds)")
        print(preds_table(args.preds, args.scores))
    elif args.seeds:
        print(f"mean ± std over {len(args.seeds)} runs: {', '.join(args.seeds)}")
        print(mean_std_table(mean_std([read_metrics(d) for d in args.seeds])))
    elif args.run and args.shuffle_cf:
        with contextlib.redirect_stdout(sys.stderr):  # progress lines; stdout keeps the report alone
            report = shuffle_cf_report(args.run, args.repeats, args.data_dir, args.device)
        print(report)
    elif args.run:
        if args.repeats != 1:
            ap.error("--repeats goes with --shuffle-cf (a plain re-score gives the same scores each time)")
        [report] = score_run(finished_run(args.run, args.data_dir, args.device), test_only=args.test_only)
        print(f"wrote {write_rescore(report, args.run, args.into)}")
        print(markdown_table([(p, report[p]) for p in PARTS if p in report], rel=False))
    else:
        ap.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
