"""eval.py's metrics: known tiny cases, a brute-force pairwise AUC, and sklearn parity."""
import math
import subprocess
import sys

import numpy as np
import pytest

import metrics as M
from conftest import ROOT
from tools import tables


def brute_auc(y, s):
    """O(n^2): the fraction of (positive, negative) pairs ordered right, ties counting 1/2."""
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_auc_known_cases():
    assert M.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert M.auc([1, 0], [0.3, 0.3]) == 0.5
    assert M.auc([1, 1, 0], [3, 2, 1]) == 1.0
    assert M.auc([1, 1, 0], [1, 2, 3]) == 0.0
    assert math.isnan(M.auc([1, 1], [0.2, 0.3]))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_brute_force_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    n = 500
    y = rng.integers(0, 2, n)
    s = rng.integers(0, 7, n).astype(float)  # only 7 distinct values: ties everywhere
    assert abs(M.auc(y, s) - brute_auc(y, s)) < 1e-12


def test_uauc_known_case_and_counts():
    users = [1, 1, 1, 2, 2, 3, 3]
    labels = [1, 0, 0, 1, 0, 1, 1]  # user 3 has one class only: excluded
    scores = [0.9, 0.1, 0.95, 0.2, 0.8, 0.5, 0.6]
    value, n = M.uauc(users, labels, scores)
    assert n == 2
    assert value == pytest.approx((0.5 + 0.0) / 2)


def test_uauc_matches_loop_over_users():
    rng = np.random.default_rng(0)
    u = rng.integers(0, 40, 2000)
    y = rng.integers(0, 2, 2000)
    s = rng.integers(0, 5, 2000).astype(float)
    per_user = [brute_auc(y[u == k], s[u == k]) for k in np.unique(u)
                if 0 < y[u == k].sum() < (u == k).sum()]
    value, n = M.uauc(u, y, s)
    assert n == len(per_user)
    assert value == pytest.approx(np.mean(per_user), abs=1e-12)


def test_threshold_metrics_and_logloss_known_case():
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.4, 0.6, 0.1, 0.5])  # predicted positive: 0, 2, 4 (0.5 counts)
    assert M.at_threshold(y, p) == pytest.approx(dict(precision=2 / 3, recall=2 / 3, f1=2 / 3, accuracy=3 / 5))
    assert M.at_threshold([0, 0], [0.1, 0.2]) == dict(precision=0.0, recall=0.0, f1=0.0, accuracy=1.0)
    expected = -np.mean(np.log([0.9, 0.4, 0.4, 0.9, 0.5]))
    assert M.logloss(y, p) == pytest.approx(expected)
    assert np.isfinite(M.logloss([1, 0], [0.0, 1.0]))  # clipped, not inf


def test_metrics_agree_with_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 3000)
    logits = np.round(rng.normal(size=3000), 1)  # rounding creates many ties
    p = M.sigmoid(logits)
    m = M.metrics(np.zeros(3000, dtype=int), y, logits)
    assert abs(m["auc"] - skm.roc_auc_score(y, logits)) < 1e-9
    assert abs(m["logloss"] - skm.log_loss(y, p)) < 1e-9
    yhat = (p >= 0.5).astype(int)
    assert abs(m["precision"] - skm.precision_score(y, yhat)) < 1e-9
    assert abs(m["recall"] - skm.recall_score(y, yhat)) < 1e-9
    assert abs(m["f1"] - skm.f1_score(y, yhat)) < 1e-9
    assert abs(m["accuracy"] - skm.accuracy_score(y, yhat)) < 1e-9


def test_rel_imp_and_table():
    best = dict(auc=0.75, uauc=0.70)
    row = dict(auc=0.60, uauc=0.70)
    assert tables.rel_imp(best, row) == pytest.approx((0.25 + 0.0) / 2)
    table = tables.markdown_table([("a", {**best, "logloss": 0.5}), ("b", row)])
    assert "| b |" in table and "+12.50%" in table


def test_mean_std_names_what_differs():
    """Seeds whose metrics.json hold different parts or metrics: one ValueError naming the difference."""
    a = {"test": {"auc": 0.7, "uauc": 0.6}, "best_epoch": 2}
    with pytest.raises(ValueError, match="^report 2 lacks test's uauc, unlike report 1;"):
        tables.mean_std([a, {"test": {"auc": 0.8}}])
    with pytest.raises(ValueError, match="^seed1 has test_cold's auc, unlike seed0;"):
        tables.mean_std([a, {**a, "test_cold": {"auc": 0.5}}], ["seed0", "seed1"])
    assert tables.mean_std([a, {**a, "best_epoch": 5}])["test"]["auc"][0] == pytest.approx(0.7)


def test_preds_cli(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("user_id\titem_id\tlabel\tscore\tsplit\tseen\n"
                    "1\t1\t1\t0.9\ttest\t1\n1\t2\t0\t0.2\ttest\t0\n2\t3\t1\t0.4\ttest\t1\n"
                    "2\t4\t0\t0.6\ttest\t1\n3\t5\t1\t0.1\tvalid\t1\n")
    out = subprocess.run([sys.executable, "eval.py", "--preds", str(path), "--scores", "probs"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "| test |" in out.stdout and "| test_seen |" in out.stdout and "| test_unseen |" in out.stdout
    # the 4 test rows: AUC = 3/4 (0.9, 0.4 positives vs 0.2, 0.6 negatives)
    assert "0.7500" in out.stdout.split("| test |")[1].split("\n")[0]

    bad = tmp_path / "bad.tsv"
    bad.write_text("user_id\titem_id\tlabel\n1\t1\t1\n")
    out = subprocess.run([sys.executable, "eval.py", "--preds", str(bad), "--scores", "logits"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "missing column" in out.stderr and "Traceback" not in out.stderr
