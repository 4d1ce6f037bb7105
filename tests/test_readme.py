"""The README's result tables are generated from the metrics the runs wrote (results/), never typed:
every block between `<!-- table ... -->` / `<!-- file ... -->` and `<!-- /generated -->` must equal
what `python -m drivers.report --readme` makes of the files it names."""
import json

import pytest

from conftest import ROOT
from drivers import report as ev


@pytest.mark.parametrize("readme, least", [("README.md", 2), ("results/README.md", 10)])
def test_readme_tables_match_the_runs_metrics(readme, least):
    path = ROOT / readme
    text = path.read_text(encoding="utf-8")
    assert sum(map(bool, map(ev.MARKER.fullmatch, text.splitlines(keepends=True)))) >= least  # the main job, SmolLM2; results/: every other table
    assert ev.render_readme(text, str(path.parent)) == text, f"{readme} is stale: run python -m drivers.report --readme {readme}"


METRICS = dict(logloss=0.6, precision=0.5, recall=0.5, f1=0.5, accuracy=0.5, auc=0.7, uauc=0.7)  # a part's all


def test_a_changed_metric_makes_the_check_fail(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "a.json").write_text(json.dumps({"test": {**METRICS, "auc": 0.75}}))
    readme = "x\n<!-- table test | joint: r/a.json -->\n<!-- /generated -->\ny\n"
    fresh = ev.render_readme(readme, str(tmp_path))
    assert "| joint |" in fresh and "0.7500" in fresh
    assert ev.render_readme(fresh, str(tmp_path)) == fresh
    (tmp_path / "r" / "a.json").write_text(json.dumps({"test": {**METRICS, "auc": 0.76}}))
    assert ev.render_readme(fresh, str(tmp_path)) != fresh


def test_a_row_of_several_runs_is_their_mean_and_sample_std(tmp_path):
    for name, auc in (("s0", 0.70), ("s1", 0.72), ("s2", 0.77)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"test": {**METRICS, "auc": auc, "uauc": 0.6}}))
    out = ev.render_readme("<!-- table test norel | seeds: s0.json + s1.json + s2.json | one: s0.json -->\n"
                           "<!-- /generated -->\n", str(tmp_path))
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| s") or "| one" in line}
    assert "0.7300 ± 0.0361" in rows["seeds"] and "0.6000 ± 0.0000" in rows["seeds"]  # std of .70 .72 .77: 0.0361
    assert "| 0.7000 |" in rows["one"] and "±" not in rows["one"]
