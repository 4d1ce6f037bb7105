"""The README's result tables are generated from the metrics the runs wrote (results/), never typed:
every block between `<!-- table ... -->` / `<!-- file ... -->` and `<!-- /generated -->` must equal
what `python -m tools.report --readme` makes of the files it names."""
from tools import report as ev
from conftest import ROOT


def test_readme_tables_match_the_runs_metrics():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = ev.GENERATED.findall(text)
    assert len(blocks) >= 8  # the tiny chain, SmolLM2, the CF models: test, warm and cold
    assert ev.render_readme(text, str(ROOT)) == text, "README tables are stale: run python -m tools.report --readme"


def test_a_changed_metric_makes_the_check_fail(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "a.json").write_text('{"test": {"auc": 0.75, "uauc": 0.7, "logloss": 0.6}}')
    readme = "x\n<!-- table test | joint: r/a.json -->\n<!-- /generated -->\ny\n"
    fresh = ev.render_readme(readme, str(tmp_path))
    assert "| joint |" in fresh and "0.7500" in fresh
    assert ev.render_readme(fresh, str(tmp_path)) == fresh
    (tmp_path / "r" / "a.json").write_text('{"test": {"auc": 0.76, "uauc": 0.7, "logloss": 0.6}}')
    assert ev.render_readme(fresh, str(tmp_path)) != fresh
