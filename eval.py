"""Evaluation (paper Section 4.2): a trained run re-scored, the --shuffle-cf / --shuffle-text ablations, and metrics
for anyone's prediction file (the metrics themselves, each with its formula, are in metrics.py).

    python eval.py runs/joint                            # re-score a finished run's best.pt
    python eval.py runs/joint --shuffle-cf --repeats 3   # the CF tokens permuted across rows
    python eval.py runs/joint --shuffle-text             # the prompts' text permuted, each row its CF tokens
    python eval.py runs/joint --dtype float32            # a bf16 run re-scored in fp32
    python eval.py runs/sasrec --fuse runs/text          # the fusion probe: SASRec's and TALLRec's logits
    python eval.py --preds FILE.tsv --scores logits      # metrics for a prediction file

eval.py only reads a run: it refuses one still training (run.lock held) or unfinished (no metrics.json)
and writes a re-score to RUN/rescored.json or --into DIR/<run>.json, never over the run's metrics.json.
"""
import argparse
import contextlib
import os
import sys
import time

import numpy as np

import llama
import loop
import train
from metrics import PARTS, auc, metrics, sigmoid, uauc
from tools import runs, sources
from tools.tables import _num, fmt, fmt_mean_std, markdown_table, md_table, mean_std, read_metrics


def finished_run(run_dir, data_dir=None, device=None, dtype=None, hold=None):
    """A finished run, rebuilt (train.load_run); hold (an ExitStack): its run.lock held until that closes, so
    that no run starts over there while a re-score is on its way into it."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir}: no such run directory (train.py --out DIR writes one)")
    if hold:
        runs.refuse_link(run_dir)  # (its lock and re-score would land wherever it points)
        hold.callback(runs.unlock, *runs.lock(run_dir))
    elif (holder := runs.live_lock(run_dir)) is not None:  # ({}: held, its holder unreadable)
        raise runs.RunError(runs.busy_message(run_dir, holder))
    read_metrics(run_dir)  # unfinished runs have none
    return train.load_run(run_dir, data_dir, device, dtype)


def score_run(run, shuffle=None, repeats=1, test_only=False):
    """`repeats` metrics.json-style reports of a run. shuffle "cf" permutes the CF inputs across the rows
    (seed k on the k-th repeat) while each prompt keeps its text, "text" the prompts while each row keeps its
    CF inputs: if what was permuted carries signal, AUC drops."""
    args, ds, model, make_predict = run
    if shuffle and args.stage != "joint":
        raise ValueError(f"--shuffle-{shuffle} needs a joint run, not a '{args.stage}' run")
    splits = ["test"] if test_only else ["valid", "test"]
    autocast = loop.autocast_for(args)  # the run's own, as training scored it
    return [loop.evaluate(model, make_predict(shuffle, seed), ds, splits, autocast) for seed in range(repeats)]


def shuffle_report(run_dir, shuffle, repeats=1, data_dir=None, device=None, dtype=None, test_only=False):
    """AUC and UAUC per part, unshuffled, shuffled (mean ± std over `repeats` permutations), the drop."""
    if (stage := runs.peek_args(os.path.join(run_dir, "best.pt")).get("stage", "joint")) != "joint":  # (before the
        raise ValueError(f"--shuffle-{shuffle} needs a joint run, not a '{stage}' run")  # LLM is built: minutes)
    run = finished_run(run_dir, data_dir, device, dtype)  # built once for both the plain and the shuffled scores
    [plain] = score_run(run, test_only=test_only)
    stats = mean_std(score_run(run, shuffle, repeats, test_only))
    def cells(p, k):
        mean, std = stats[p][k]
        return [fmt(plain[p][k]), fmt_mean_std(mean, std), fmt(_num(plain[p][k]) - mean)]
    what = "CF tokens" if shuffle == "cf" else "prompt texts (titles and slots)"
    title = f"{run_dir}: {what} permuted across rows ({repeats} permutation{'s' * (repeats > 1)})"
    return title + "\n" + md_table(["part", "AUC", "AUC shuffled", "drop", "UAUC", "UAUC shuffled", "drop"],
                                   [[p, *cells(p, "auc"), *cells(p, "uauc")] for p in PARTS if p in plain])


def row_scores(run, split):
    """{(user, item): (logit, label)} of a finished run on one split (its own rows: --valid-rows keeps a subset)."""
    args, ds, model, make_predict = run
    s = loop.evaluate(model, make_predict(), ds, [split], loop.autocast_for(args), raw=True)[split]
    rows = ds.idx(split)
    out = {(int(u), int(i)): (float(x), int(y)) for u, i, y, x in zip(ds.user[rows], ds.item[rows], ds.label[rows], s)}
    if len(out) < len(rows):  # (a later row of a pair would replace the earlier: its score and label lost)
        raise ValueError(f"{args.out}: its {split} split holds a (user, item) pair twice; --fuse matches rows by pair")
    return out


def fit_logistic(X, y, l2=1e-6, steps=100):
    """Weights w minimising the log-loss of sigmoid(X @ w) on labels y (summed), plus l2/2 |w|^2: Newton's method,
    each step halved until the loss falls (a full step from logits that saturate the sigmoid overshoots by
    millions), until the Newton decrement is negligible."""
    if not np.isfinite(X).all():
        raise ValueError("a logit that is not finite; the probe fits finite logits only")
    def loss(w):
        z = X @ w
        return np.sum(np.logaddexp(0, np.where(y == 1, -z, z))) + l2 / 2 * w @ w
    w = np.zeros(X.shape[1])
    for _ in range(steps):
        p = sigmoid(X @ w)
        grad = X.T @ (p - y) + l2 * w
        step = np.linalg.solve((X.T * p * (1 - p)) @ X + l2 * np.eye(len(w)), grad)
        if grad @ step < 1e-12:  # the Newton decrement: the loss cannot fall by more than about half of it
            return w
        t, now = 1.0, loss(w)
        while not loss(w - t * step) <= now and t > 1e-12:  # (a NaN loss is no decrease)
            t /= 2
        w = w - t * step
    raise ValueError(f"the logistic fit did not converge in {steps} Newton steps (weights {np.array2string(w, precision=3)})")


def fusion_table(run_a, run_b, data_dir=None, device=None, dtype=None):
    """The fusion probe: a logistic regression over [A's logit, B's logit] (e.g. SASRec's and TALLRec's), fitted
    on the valid rows both runs scored, then scoring test. If it beats A on test, B holds signal A lacks."""
    runs_ = [finished_run(r, data_dir, device, dtype) for r in (run_a, run_b)]
    a, b = (runs.peek_args(os.path.join(r, "best.pt"), "made_from") for r in (run_a, run_b))
    if other := [k for k in ("data", "domain") if k in a and k in b and a[k] != b[k]]:  # (an older run may lack one)
        raise ValueError(f"{run_a} and {run_b}: made from other data ({' and '.join(other)} differ in their "
                         "best.pt); fuse two runs of one data set")
    split = {p: [row_scores(r, p) for r in runs_] for p in ("valid", "test")}
    keys = {p: sorted(set(a) & set(b)) for p, (a, b) in split.items()}
    for p, (a, b) in split.items():  # one data set: the same rows, each with the same label
        if not keys[p] or (k := next((k for k in keys[p] if a[k][1] != b[k][1]), None)):
            why = f"(user, item) {k} is labelled {a[k][1]} in one, {b[k][1]} in the other" if keys[p] else \
                f"no {p} row in both"
            raise ValueError(f"{run_a} and {run_b}: {why}; fuse two runs of one data set")
    X = {p: np.array([[1.0, a[k][0], b[k][0]] for k in keys[p]]) for p, (a, b) in split.items()}
    y = {p: np.array([split[p][0][k][1] for k in keys[p]], dtype=float) for p in split}
    for p, labels in y.items():  # (a fit on one class is its L2's artefact; an AUC of one class is undefined)
        if labels.min() == labels.max():
            raise ValueError(f"{run_a} and {run_b}: the {len(labels)} {p} rows both scored are all "
                             f"{'liked' if labels[0] else 'disliked'}; the probe needs likes and dislikes in both")
    w = fit_logistic(X["valid"], y["valid"])
    users = np.array([u for u, _ in keys["test"]])
    rows = [(f"{run_a} alone", metrics(users, y["test"], X["test"][:, 1])),
            (f"{run_b} alone", metrics(users, y["test"], X["test"][:, 2])),
            (f"fused: {w[1]:+.3f} x A {w[2]:+.3f} x B {w[0]:+.3f}", metrics(users, y["test"], X["test"] @ w))]
    return (f"fitted on {len(keys['valid'])} valid rows both runs scored; test on {len(keys['test'])} rows\n"
            + markdown_table(rows, rel=False))


def preds_table(path, scores):
    """Metrics of a prediction file's test rows (or all rows) and their seen/unseen/warm/cold parts."""
    d = sources.read_preds(path)
    test = d["split"] == "test" if "split" in d else np.ones(len(d["user"]), dtype=bool)
    if (likes := int(d["label"][test].sum())) in (0, test.sum()):  # (AUC is undefined on one class)
        raise ValueError(f"{path}: {test.sum()} test rows, {likes} of them liked; expected likes and dislikes")
    s = d["score"]
    if scores == "probs":
        if s.min() < 0 or s.max() > 1:
            raise ValueError(f"{path}: --scores probs, but a score lies outside [0, 1] ({s.min():g} .. {s.max():g})")
        # -> logits, as metrics() takes; only exact 0 and 1 are clipped (a clip at 1e-7 tied close scores)
        s = np.clip(s, np.finfo(float).tiny, 1 - np.finfo(float).epsneg)
        s = np.log(s) - np.log1p(-s)
    parts = [("test", test)]
    for pos, neg in (("seen", "unseen"), ("warm", "cold")):
        if pos in d:
            parts += [(f"test_{pos}", test & d[pos]), (f"test_{neg}", test & ~d[pos])]
    rows = []
    for name, m in ((n, m) for n, m in parts if m.any()):
        r = metrics(d["user"][m], d["label"][m], s[m])
        if scores == "probs":  # AUC and UAUC from the probabilities' own order: two close ones can share a logit
            r.update(auc=auc(d["label"][m], d["score"][m]), uauc=uauc(d["user"][m], d["label"][m], d["score"][m])[0])
        rows.append((name, r))
    return markdown_table(rows, rel=False)


def write_rescore(report, run_dir, into):
    """INTO/<run>.json, or RUN/rescored.json; an earlier one is moved aside, and metrics.json never touched."""
    folder, name = (into, os.path.basename(os.path.abspath(run_dir))) if into else (run_dir, "rescored")
    runs.refuse_link(folder)  # (a linked RUN or INTO: the file lands wherever it points)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + ".json")
    runs.refuse_link(path)
    if os.path.exists(path):
        stamp, n = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}", 0
        while os.path.exists(aside := os.path.join(folder, f"{stamp}{f'-{n}' if n else ''}.json")):
            n += 1  # two re-scores within a second: neither earlier one is overwritten
        os.replace(path, aside)
    runs.write_json(report, path)
    return path


@runs.cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("run", nargs="?", type=runs.path, help="a finished run directory: re-score its best.pt")
    ap.add_argument("--device", default=None, type=runs.device, help="score on this device, not the run's own (a GPU run on cpu)")
    ap.add_argument("--data-dir", type=runs.path, help="the data root, if it moved since training")
    ap.add_argument("--dtype", default=None, choices=llama.DTYPES,
                    help="an LLM run's weights in this dtype, not its own (a bf16 run on a CPU without native bf16)")
    ap.add_argument("--test-only", action="store_true", help="score the test split alone")
    ap.add_argument("--into", type=runs.path, help="write the re-score to INTO/<run name>.json")
    ap.add_argument("--shuffle-cf", action="store_true", help="ablation: permute the CF tokens across the rows")
    ap.add_argument("--shuffle-text", action="store_true", help="ablation: permute the prompts' text across the rows")
    ap.add_argument("--repeats", type=runs.number(1, 100, int), default=1, help="--shuffle-*: K permutations")
    ap.add_argument("--fuse", metavar="RUN_B", type=runs.path,
                    help="the fusion probe: RUN's and RUN_B's logits, fitted on valid")
    ap.add_argument("--preds", type=runs.path, help="TSV with user_id, item_id, label, score [, split, seen, warm]")
    ap.add_argument("--scores", choices=("logits", "probs"), help="--preds: what the score column holds")
    args = ap.parse_args(argv)
    modes = [f"--{f.replace('_', '-')}" for f in ("shuffle_cf", "shuffle_text", "fuse", "preds") if getattr(args, f)]
    if len(modes) > 1:  # (the first one ran, the others were dropped without a word)
        ap.error(f"{' and '.join(modes)}: one at a time")
    if args.preds and args.run:
        ap.error("--preds scores its file alone; give no RUN")
    if args.into and modes:
        ap.error(f"--into keeps a plain re-score; {modes[0]} prints its table")
    if args.fuse and args.test_only:
        ap.error("--fuse fits on valid and scores test: no --test-only")
    if unread := [f"--{k.replace('_', '-')}" for k, v in vars(args).items() if v != ap.get_default(k) and not (
            k in ("run", "preds", "scores") and args.preds or k not in ("preds", "scores", "repeats") and args.run or
            k == "repeats" and (args.shuffle_cf or args.shuffle_text))]:  # (each mode's own; the rest was ignored)
        ap.error(f"{', '.join(unread)}: not read {'with --preds' if args.preds else 'by this mode'}")
    if args.run:  # in the numerics the run was trained in (runs.numerics), before torch's first op
        saved = [runs.peek_args(os.path.join(r, "best.pt")) for r in (args.run, args.fuse) if r]
        dtype = next((a.get("dtype") for a in saved if a.get("dtype") != "float32"), "float32")  # bf16: native
        numerics = runs.numerics(args.dtype or dtype, args.device or saved[0].get("device", "cpu"))
    if args.preds:
        if not args.scores:
            ap.error("--preds needs --scores logits or --scores probs (what the score column holds)")
        print(preds_table(args.preds, args.scores))
    elif args.run and (args.fuse or args.shuffle_cf or args.shuffle_text):
        with contextlib.redirect_stdout(sys.stderr):  # progress lines; stdout keeps the report alone
            print(numerics)
            report = fusion_table(args.run, args.fuse, args.data_dir, args.device, args.dtype) if args.fuse else shuffle_report(
                args.run, "cf" if args.shuffle_cf else "text", args.repeats, args.data_dir, args.device, args.dtype,
                args.test_only)
        print(report)
    elif args.run:
        with contextlib.ExitStack() as held:
            run = finished_run(args.run, args.data_dir, args.device, args.dtype, hold=None if args.into else held)
            if args.into:  # (into the LLM's folder, it would change the digest the run was made from)
                runs.refuse_overlap(args.into, train.inputs(run[0]), "--into")
                runs.refuse_artefact(args.into, "--into")
            [report] = score_run(run, test_only=args.test_only)
            print(numerics)
            print(f"wrote {write_rescore(report, args.run, args.into)}")
        print(markdown_table([(p, report[p]) for p in PARTS if p in report], rel=False))
    else:
        ap.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
