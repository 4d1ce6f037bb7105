"""The metrics of the paper's Table 1 (Section 4.2), hand-written with numpy, each with its formula.

- AUC: rank-based (Mann-Whitney U), tie-aware, O(n log n).
- UAUC: the mean of per-user AUC over users with both classes (CoLLM's definition).
- LogLoss; precision, recall, F1, accuracy at threshold 0.5.
- Rel.Imp.: the paper's relative improvement of SASRecLLM over a row, averaged over AUC and UAUC.

Models hand us logits s (pre-sigmoid); p = sigmoid(s) is the probability of "like". Scores must be finite: a NaN or an
infinite score has no rank, and AUC over it would be an artefact of row order, so every metric refuses one
(FloatingPointError, naming the count). A file of its own so that imports run one way: metrics <- loop <- train <- eval.
"""
import math

import numpy as np


def finite_scores(scores):
    s = np.asarray(scores, dtype=np.float64).ravel()
    if bad := int((~np.isfinite(s)).sum()):
        raise FloatingPointError(f"{bad} of {len(s)} scores are NaN or infinite; a metric of them would be "
                                 "meaningless (the model's weights or inputs hold non-finite values)")
    return s


def auc(labels, scores):
    """AUC = P(s+ > s-) + 1/2 P(s+ = s-), via ranks:

        AUC = (sum_{i: y_i=1} rank_i - n1 (n1 + 1) / 2) / (n1 n0)

    with tied scores sharing their mean rank. NaN when a class is absent."""
    y, s = np.asarray(labels).astype(bool).ravel(), finite_scores(scores)
    if len(y) != len(s):
        raise ValueError(f"auc: {len(y)} labels but {len(s)} scores")
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    xs = s[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # where each run of tied scores starts
    counts, rank = np.diff(np.r_[starts, len(s)]), np.empty(len(s), dtype=np.float64)
    rank[order] = np.repeat(starts + (counts + 1) / 2.0, counts)  # 1-based; ties share their mean rank
    return float((rank[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def uauc(users, labels, scores):
    """UAUC = (1/|U'|) sum_{u in U'} AUC_u, U' = users with both a positive and a negative. Returns (uauc, |U'|)."""
    u, y, s = np.asarray(users).ravel(), np.asarray(labels).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(u, kind="mergesort")
    u, y, s = u[order], y[order], s[order]
    bounds = np.flatnonzero(np.r_[True, u[1:] != u[:-1], True])  # each user's rows: bounds[k]:bounds[k+1]
    aucs = [auc(y[a:b], s[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    aucs = [v for v in aucs if not math.isnan(v)]
    return (float(np.mean(aucs)), len(aucs)) if aucs else (float("nan"), 0)


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))  # safe for large |x|


def logloss(labels, probs, eps=1e-7):
    """LogLoss = -mean(y log p + (1 - y) log(1 - p)), p clipped to [eps, 1 - eps]; NaN for no rows
    (a test part can be empty, e.g. no warm rows in a small slice)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else float("nan")


def at_threshold(labels, probs, threshold=0.5):
    """The metrics of the prediction p >= threshold, from its TP, FP, FN and TN:
        precision = TP / (TP + FP)              (0 when nothing is predicted positive)
        recall    = TP / (TP + FN)              (0 when there are no positives)
        F1        = 2 P R / (P + R) = 2 TP / (2 TP + FP + FN)
        accuracy  = (TP + TN) / n"""
    y = np.asarray(labels).astype(bool).ravel()
    yhat = np.asarray(probs, dtype=np.float64).ravel() >= threshold
    tp, fp, fn, tn = (int((y & yhat).sum()), int((~y & yhat).sum()), int((y & ~yhat).sum()), int((~y & ~yhat).sum()))
    return dict(precision=tp / (tp + fp) if tp + fp else 0.0, recall=tp / (tp + fn) if tp + fn else 0.0,
                f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
                accuracy=(tp + tn) / len(y) if len(y) else float("nan"))


def metrics(users, labels, logits):
    """All of Table 1's metrics for one set of predictions; logits are pre-sigmoid scores."""
    logits = finite_scores(logits)
    p, a = sigmoid(logits), auc(labels, logits)  # auc first: it refuses labels and logits of two lengths
    u, n_users = uauc(users, labels, logits)
    return dict(auc=a, uauc=u, uauc_users=n_users, logloss=logloss(labels, p), **at_threshold(labels, p),
                n=int(len(np.asarray(labels).ravel())))


PARTS = ("valid", "test", "test_seen", "test_unseen", "test_warm", "test_cold")  # metrics.json's sections


def split_report(ds, logits_valid, logits_test):
    """metrics.json's content: valid, test, and test's seen/unseen (CoLLM) and warm/cold (paper) parts.
    ds is a data.Dataset; logits_* follow ds.idx("valid") / ds.idx("test"); logits_valid=None
    leaves valid out (a test-only re-scoring)."""
    out = {}
    for name, logits in (("valid", logits_valid), ("test", logits_test)):
        if logits is None:
            continue
        rows, logits = ds.idx(name), np.asarray(logits, dtype=np.float64).ravel()
        out[name] = metrics(ds.user[rows], ds.label[rows], logits)
        if name == "test":
            for part, mask in (("seen", ds.seen[rows]), ("unseen", ~ds.seen[rows]),
                               ("warm", ds.warm[rows]), ("cold", ~ds.warm[rows])):
                out[f"test_{part}"] = metrics(ds.user[rows][mask], ds.label[rows][mask], logits[mask])
    return out
