"""The metrics of the paper's Table 1 (Section 4.2), hand-written with numpy, each with its formula.

- AUC: rank-based (Mann-Whitney U), tie-aware, O(n log n).
- UAUC: the mean of per-user AUC over users with both classes (CoLLM's definition).
- LogLoss, precision, recall, F1, accuracy at threshold 0.5.
- Rel.Imp.: the paper's relative improvement of SASRecLLM over a row, averaged over AUC and UAUC.

Models hand us logits s (pre-sigmoid); p = sigmoid(s) is the probability of "like".

Scores must be finite: a NaN or an infinite score has no rank, and AUC over it would be an
artefact of row order, so every metric refuses one (FloatingPointError, naming the count).

Why a file of its own: the training loop needs AUC for early stopping, and eval.py needs the
training side to rebuild runs. With the metrics here, the imports form one direction:
metrics <- loop <- train <- eval. How tables lay them out is tools/report.py's business.
"""
import math

import numpy as np

# -----------------------------------------------------------------------------
# metrics


def finite_scores(scores):
    s = np.asarray(scores, dtype=np.float64).ravel()
    bad = int((~np.isfinite(s)).sum())
    if bad:
        raise FloatingPointError(f"{bad} of {len(s)} scores are NaN or infinite; a metric of them would be "
                                 "meaningless (the model's weights or inputs hold non-finite values)")
    return s


def _average_ranks(x):
    """1-based ranks of x, tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # start index of each run of equal values, and the run lengths
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    counts = np.diff(np.r_[starts, len(xs)])
    mean_rank = starts + (counts + 1) / 2.0  # mean of ranks starts+1 .. starts+counts
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, counts)
    return ranks


def auc(labels, scores):
    """AUC = P(s+ > s-) + 1/2 P(s+ = s-), via ranks:

        AUC = (sum_{i: y_i=1} rank_i - n1 (n1 + 1) / 2) / (n1 n0)

    with tied scores sharing their mean rank. NaN when a class is absent.
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = finite_scores(scores)
    if len(y) != len(s):
        raise ValueError(f"auc: {len(y)} labels but {len(s)} scores")
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = _average_ranks(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def uauc(users, labels, scores):
    """UAUC = (1/|U'|) sum_{u in U'} AUC_u, U' = users with both a positive and a negative.

    Returns (uauc, |U'|)."""
    u = np.asarray(users).ravel()
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(u, kind="mergesort")
    u, y, s = u[order], y[order], s[order]
    bounds = np.flatnonzero(np.r_[True, u[1:] != u[:-1], True])
    aucs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        v = auc(y[a:b], s[a:b])
        if not math.isnan(v):
            aucs.append(v)
    if not aucs:
        return float("nan"), 0
    return float(np.mean(aucs)), len(aucs)


def sigmoid(x):
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # numerically safe for large |x|


def logloss(labels, probs, eps=1e-7):
    """LogLoss = -mean(y log p + (1 - y) log(1 - p)), p clipped to [eps, 1 - eps]; NaN for no rows
    (a test part can be empty, e.g. no warm rows in a small slice)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else float("nan")


def _confusion(labels, probs, threshold):
    y = np.asarray(labels).astype(bool).ravel()
    yhat = np.asarray(probs, dtype=np.float64).ravel() >= threshold
    tp = int((y & yhat).sum())
    fp = int((~y & yhat).sum())
    fn = int((y & ~yhat).sum())
    tn = int((~y & ~yhat).sum())
    return tp, fp, fn, tn


def precision(labels, probs, threshold=0.5):
    """TP / (TP + FP); 0 when nothing is predicted positive."""
    tp, fp, _, _ = _confusion(labels, probs, threshold)
    return tp / (tp + fp) if tp + fp else 0.0


def recall(labels, probs, threshold=0.5):
    """TP / (TP + FN); 0 when there are no positives."""
    tp, _, fn, _ = _confusion(labels, probs, threshold)
    return tp / (tp + fn) if tp + fn else 0.0


def f1(labels, probs, threshold=0.5):
    """2 P R / (P + R) = 2 TP / (2 TP + FP + FN)."""
    tp, fp, fn, _ = _confusion(labels, probs, threshold)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def accuracy(labels, probs, threshold=0.5):
    """(TP + TN) / n."""
    tp, fp, fn, tn = _confusion(labels, probs, threshold)
    n = tp + fp + fn + tn
    return (tp + tn) / n if n else float("nan")


def metrics(users, labels, logits):
    """All of Table 1's metrics for one set of predictions; logits are pre-sigmoid scores."""
    logits = finite_scores(logits)
    p = sigmoid(logits)
    u, n_users = uauc(users, labels, logits)
    return dict(auc=auc(labels, logits), uauc=u, uauc_users=n_users, logloss=logloss(labels, p),
                precision=precision(labels, p), recall=recall(labels, p), f1=f1(labels, p),
                accuracy=accuracy(labels, p), n=int(len(np.asarray(labels).ravel())))


def rel_imp(ours, row):
    """The paper's Rel.Imp. of `ours` (SASRecLLM) over `row`: the mean over m in {AUC, UAUC} of
    (ours_m - row_m) / row_m. NaN when a metric is undefined or zero."""
    terms = [(ours[m] - row[m]) / row[m] if ours[m] is not None and row[m] else float("nan") for m in ("auc", "uauc")]
    return float(np.mean(terms))


PARTS = ("valid", "test", "test_seen", "test_unseen", "test_warm", "test_cold")  # metrics.json's sections


def split_report(ds, logits_valid, logits_test):
    """metrics.json's content: valid, test, and test's seen/unseen (CoLLM) and warm/cold (paper) parts.

    ds is a data.Dataset; logits_* follow the row order of ds.idx("valid") / ds.idx("test");
    logits_valid=None leaves valid out (a test-only re-scoring)."""
    out = {}
    for name, logits in (("valid", logits_valid), ("test", logits_test)):
        if logits is None:
            continue
        rows = ds.idx(name)
        logits = np.asarray(logits, dtype=np.float64).ravel()
        if len(logits) != len(rows):
            raise ValueError(f"split_report: {len(logits)} {name} logits for {len(rows)} {name} rows")
        out[name] = metrics(ds.user[rows], ds.label[rows], logits)
        if name == "test":
            for part, mask in (("seen", ds.seen[rows]), ("unseen", ~ds.seen[rows]),
                               ("warm", ds.warm[rows]), ("cold", ~ds.warm[rows])):
                out[f"test_{part}"] = metrics(ds.user[rows][mask], ds.label[rows][mask], logits[mask])
    return out
