"""Table 1's layout (seven metrics per row, Rel.Imp., mean ± std over seeds) and the readers of a run's
metrics.json and log.jsonl: what train.py and eval.py print their tables with, and drivers/report.py
lays the paper's tables out with. Machinery beside the lesson: metrics.py computes the metrics."""
import json
import math
import os
from pathlib import Path

import numpy as np

from tools.runs import check_metrics_of, peek_args
from tools.sources import DataError, _fields, _is, integer, json_lines, read_json


# -----------------------------------------------------------------------------
# Table 1's layout: seven metrics per row, Rel.Imp., mean ± std over seeds

COLUMNS = [("logloss", "Log Loss"), ("precision", "Precision"), ("recall", "Recall"), ("f1", "F1"),
           ("accuracy", "Accuracy"), ("auc", "AUC"), ("uauc", "UAUC")]
SHARES = {"auc", "uauc", "precision", "recall", "f1", "accuracy"}  # metrics in 0..1


def _num(v):
    return float("nan") if v is None else v


def fmt(v):
    return "nan" if v is None or math.isnan(v) else f"{v:.4f}"


def fmt_mean_std(mean, std):
    """'0.7301 ± 0.0033'; the mean alone for one run (std None) or an undefined mean."""
    return fmt(mean) if std is None or math.isnan(mean) else f"{fmt(mean)} ± {fmt(std)}"


def md_table(head, rows):
    """A markdown table: head is a list of column names, rows lists of cell strings."""
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(cells) + " |" for cells in rows])


def rel_imp(ours, row):
    """The paper's Rel.Imp. of `ours` over `row`: the mean over m in {AUC, UAUC} of (ours_m - row_m) / row_m.
    NaN when a metric is undefined or zero."""
    terms = [(ours[m] - row[m]) / row[m] if ours[m] is not None and row[m] else float("nan") for m in ("auc", "uauc")]
    return float(np.mean(terms))


def markdown_table(rows, rel=True, ours=("joint", "SASRecLLM")):
    """Table 1. rows: [(name, {metric: value, or (mean, std) over seeds})]. Rel.Imp. is the paper's
    (rel_imp) on the means: the gain of SASRecLLM (the first row whose name starts with one of
    `ours`) over each other row; without such a row, the gain of the row with the best AUC."""
    pair = lambda v: v if isinstance(v, tuple) else (v, None)
    means = [{k: pair(v)[0] for k, v in m.items()} for _, m in rows]
    ref = next((mean for (name, _), mean in zip(rows, means) if name.startswith(ours)), None)
    if ref is None:  # no SASRecLLM row: the row with the best AUC
        valid = [m for m in means if not math.isnan(_num(m.get("auc")))]
        ref = max(valid, key=lambda m: m["auc"], default=None)
    body = []
    for (name, m), mean in zip(rows, means):
        body.append([name] + [fmt_mean_std(*pair(m.get(k))) for k, _ in COLUMNS])
        if rel:
            gain = rel_imp(ref, mean) if ref is not None and mean is not ref else None
            body[-1].append("-" if gain is None else "nan" if math.isnan(gain) else f"{100 * gain:+.2f}%")
    return md_table(["model"] + [c for _, c in COLUMNS] + ["Rel. Imp."] * rel, body)


def mean_std(reports, names=None):
    """{part: {metric: (mean, std)}} over a list of metrics.json dicts (names: theirs, for an error): std the
    sample standard deviation (ddof 1), None for a single report; an undefined metric (null) is NaN."""
    names = names or [f"report {i + 1}" for i in range(len(reports))]
    keys = [{(part, k) for part, m in r.items() if isinstance(m, dict) for k in m} for r in reports]
    for name, have in zip(names, keys):
        if have != keys[0]:  # a mean over some of the reports would pass for one over all of them
            part, k = min(have ^ keys[0])
            raise ValueError(f"{name} {'has' if (part, k) in have else 'lacks'} {part}'s {k}, unlike {names[0]}; "
                             "the reports averaged must hold the same parts and metrics")
    out = {}
    for part, m in reports[0].items():
        if isinstance(m, dict):  # not best_epoch
            arrays = {k: np.array([_num(r[part][k]) for r in reports], dtype=np.float64) for k in m}
            out[part] = {k: (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else None) for k, v in arrays.items()}
    return out


def numbers(where, obj, what, null=False, nest=lambda k: True):
    """obj, a JSON object whose values are numbers (or null, with null=True) or, one level down where nest(key),
    objects of numbers or null (metrics: null is undefined); else a DataError naming where (file or file:line)
    and the key."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected {what} (a JSON object), got {type(obj).__name__}")
    for k, v in obj.items():
        if nest(k) and isinstance(v, dict):
            numbers(f"{where}: {k}", v, "metrics", True, lambda k: False)
        elif not (type(v) in (int, float) and not abs(v) > 1e12 or null and v is None):  # (NaN: undefined; not a bool)
            raise DataError(f"{where}: expected {k} to be a number{' or null' * null}, got {json.dumps(v)[:60]}"
                            + " (larger than 1e12)" * (type(v) in (int, float)))
    return obj


RATES = ("seconds", "samples_per_s", "tokens_per_s", "lr")  # a log line's times and rates: finite, >= 0


def read_log(run_dir):
    """log.jsonl's epochs, [] when the run has none (Pop, ICL and the other closed-form rows)."""
    path, log = Path(run_dir, "log.jsonl"), []
    for n, obj in json_lines(path, "a run's log") if path.exists() else []:
        _fields(path, n, obj, epoch=(lambda v: integer(json.dumps(v)), "an integer >= 1"),  # 1, not "1", 1.0 or true
                valid=_is(lambda v: isinstance(v, dict), "an object of metrics"))
        if obj["epoch"] != len(log) + 1:  # (a log edited by hand: one figure drawn twice, a cost table wrong)
            raise DataError(f"{path}:{n}: epoch {obj['epoch']}; expected {len(log) + 1}, the epochs in order from 1")
        log.append(numbers(f"{path}:{n}", obj, "an epoch", nest=lambda k: k == "valid"))  # (the rest: numbers)
        in_range(f"{path}:{n}", "valid", obj["valid"])
        if bad := next((k for k in RATES if k in obj and not 0 <= obj[k] < math.inf), None):  # (NaN fails too)
            raise DataError(f"{path}:{n}: {bad} is {obj[bad]}; expected a time or a rate, a finite number >= 0")
    if (done := Path(run_dir, "metrics.json")).exists() and (last_pt := Path(run_dir, "last.pt")).exists():  # finished:
        last = peek_args(str(last_pt), None).get("epoch")  # its log holds last.pt's epochs, but
        cut = read_metrics_file(done).get("cut_short", 1)  # the one a budget cut short (its last.pt, no log line;
        # a run older than cut_short may have been)
        if type(last) is int and len(log) not in (last, last - cut):  # (a line cut or copied in: another cost row)
            raise DataError(f"{path}: {len(log)} epochs; its last.pt is of epoch {last} (expected one run's files)")
    check_metrics_of(run_dir, log=log)
    return log


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: the run is unfinished or was never trained "
                                f"(python train.py ... --out {run_dir}, with --resume to finish it)")
    return check_metrics_of(run_dir, read_metrics_file(path))


def read_metrics_file(path):
    """A metrics.json (a run's, or a copy under results/): parts of numbers or null, each in its range."""
    m = read_json(path, "a run's metrics", obj=True)
    numbers(path, {k: v for k, v in m.items() if k != "best_valid_auc"}, "a run's metrics")
    if not ((auc := m.get("best_valid_auc")) is None or type(auc) is float and 0 <= auc <= 1):  # (null: undefined)
        raise DataError(f"{path}: best_valid_auc is {json.dumps(auc)[:40]}; expected a number 0..1 or null")
    if m.get("best_epoch") is not None and not (type(m["best_epoch"]) is int and m["best_epoch"] >= 0):
        raise DataError(f"{path}: best_epoch is {m['best_epoch']}; expected an epoch, an integer >= 0 (0: no training)")
    if m.get("cut_short", 0) not in (0, 1):  # (loop.finish: 1 when a budget ended the training first)
        raise DataError(f"{path}: cut_short is {m['cut_short']}; expected 0 or 1")
    for part, ms in m.items():
        if part not in ("best_epoch", "cut_short", "best_valid_auc") and not isinstance(ms, dict):
            raise DataError(f"{path}: {part} is {json.dumps(ms)[:60]}; expected an object of metrics")
        if isinstance(ms, dict) and (lost := [k for k, _ in COLUMNS if k not in ms]):
            raise DataError(f"{path}: {part} has no {lost[0]}; expected the metrics {', '.join(k for k, _ in COLUMNS)}")
        if isinstance(ms, dict):
            in_range(path, part, ms)
    return m


def in_range(where, part, ms):
    """Each share (AUC, precision...) of a part's metrics in 0..1 and its logloss >= 0 (None or NaN: undefined)."""
    for k, v in ms.items():
        if k in ("n", "uauc_users") and not (type(v) is int and v >= 0):  # counts: a table prints them
            raise DataError(f"{where}: {part}'s {k} is {v}; expected a count, an integer >= 0")
        if v is not None and v == v and (k in SHARES and not 0 <= v <= 1 or k == "logloss" and v < 0):
            raise DataError(f"{where}: {part}'s {k} is {v}; expected {'>= 0' if k == 'logloss' else '0..1'}")
