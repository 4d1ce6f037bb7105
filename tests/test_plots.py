"""drivers/report.py's SVG plots, parsed back with ElementTree: every stage named, whole-epoch x ticks, bars
on a y axis from zero, axis labels, and the paper's Figs. 10-12 from a --table root. Tiny fake run
directories, no data and no training."""
import json
import os
import statistics
import xml.etree.ElementTree as ET

import pytest

from conftest import fake_best
from drivers import report as ev
from tools import svg as charts

SVG = "{http://www.w3.org/2000/svg}"


def texts(svg, cls):
    return [t.text for t in ET.fromstring(svg).iter(SVG + "text") if t.get("class") == cls]


def fake_run(path, epochs=0, null_uauc_at=None, metrics=None):
    """A run directory holding what the figures read: log.jsonl and metrics.json."""
    path.mkdir()
    log = []
    for e in range(1, epochs + 1):
        valid = dict(auc=0.6 + 0.01 * e, uauc=None if e == null_uauc_at else 0.55 + 0.01 * e,
                     logloss=0.7 - 0.01 * e, accuracy=0.55 + 0.01 * e, n=100)
        log.append(json.dumps(dict(epoch=e, train_loss=0.7 - 0.02 * e, valid=valid, lr=1e-3, seconds=1.0,
                                   samples_per_s=10.0)) + "\n")
    if log:
        (path / "log.jsonl").write_text("".join(log))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
        fake_best(path)
    return path


def test_curves_name_every_stage_on_whole_epochs(tmp_path):
    """12 SASRec, 8 text and 8 joint epochs: the layout whose old x ticks fell on 7.5 and 20.5."""
    chain = [("sasrec", fake_run(tmp_path / "sasrec", epochs=12)),
             ("text", fake_run(tmp_path / "text", epochs=8, null_uauc_at=4)),
             ("icl", fake_run(tmp_path / "icl")),  # no log: no span
             ("joint", fake_run(tmp_path / "joint", epochs=8))]
    written = ev.write_curves(chain, str(tmp_path))
    names = sorted(p.rsplit("/", 1)[1] for p in written)
    assert names == ["fig12_curves_accuracy.svg", "fig12_curves_auc.svg", "fig12_curves_logloss.svg"]
    for name in names:
        svg = (tmp_path / name).read_text()
        assert texts(svg, "stage") == ["SASRec", "TALLRec", "SASRecLLM"], name
        ticks = texts(svg, "xtick")
        assert len(ticks) >= 3 and all(t == str(int(t)) for t in ticks), (name, ticks)
        assert max(int(t) for t in ticks) <= 28  # ticks stay on epochs the chart shows
        assert texts(svg, "xlabel")[0].startswith("epoch") and texts(svg, "ylabel")[0], name
        dashed = [e for e in ET.fromstring(svg).iter(SVG + "line") if e.get("stroke-dasharray")]
        assert len(dashed) == 2, name  # the two stage switches
    # 3 stages x 2 series, plus the break a null UAUC leaves inside the text stage
    svg = (tmp_path / "fig12_curves_auc.svg").read_text()
    assert len(list(ET.fromstring(svg).iter(SVG + "polyline"))) == 7
    assert texts(svg, "ylabel") == ["AUC"] and texts(svg, "legend") == ["valid AUC", "valid UAUC"]
    assert ev.write_curves(chain[2:3], str(tmp_path / "none")) == []  # nothing to show: no file


def test_bars_start_at_zero_and_say_na():
    groups = {"all": {"SASRec": 0.73, "TALLRec": 0.53}, "cold": {"SASRec": 0.69, "TALLRec": None}}
    svg = charts.svg_bars(groups, "t", xlabel="test rows", ylabel="AUC", ref=(0.5, "chance"))
    assert float(texts(svg, "ytick")[0]) == 0.0
    assert texts(svg, "xlabel") == ["test rows"] and texts(svg, "ylabel") == ["AUC"]
    assert texts(svg, "legend") == ["SASRec", "TALLRec"] and texts(svg, "xtick") == ["all", "cold"]
    assert texts(svg, "value").count("n/a") == 1  # TALLRec's cold AUC is null: no bar, not a zero bar
    assert len([r for r in ET.fromstring(svg).iter(SVG + "rect") if r.get("class") == "bar"]) == 3
    assert texts(svg, "ref") == ["chance"]


def test_bar_heights_are_proportional_to_values():
    svg = charts.svg_bars({"test": {"a": 0.49, "b": 0.51}}, "close values", xlabel="x", ylabel="AUC")
    bars = [r for r in ET.fromstring(svg).iter(SVG + "rect") if r.get("class") == "bar"]
    (ya, ha), (yb, hb) = ((float(r.get("y")), float(r.get("height"))) for r in bars)
    assert ya + ha == pytest.approx(yb + hb)  # one baseline
    assert texts(svg, "ytick")[0] == "0.0"
    assert ha / hb == pytest.approx(0.49 / 0.51, rel=0.02)  # from zero: a 4% gap looks like 4%


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 28, 150])
def test_x_ticks_are_whole_epochs(n):
    svg = charts.svg_lines({"auc": [(e, 0.5 + 0.001 * e) for e in range(1, n + 1)]}, "t", xlabel="epoch", ylabel="AUC")
    ticks = texts(svg, "xtick")
    assert ticks and all(t == str(int(t)) and 1 <= int(t) <= n for t in ticks), ticks
    assert texts(svg, "xlabel") == ["epoch"] and texts(svg, "ylabel") == ["AUC"]


# -----------------------------------------------------------------------------
# Figs. 10-12 from a table root (python -m drivers.report --plot ROOT)

ABLATION = ["ICL", "TALLRec", "SASRec", "SASRecLLM"]
METRICS = [("logloss", "Log Loss"), ("precision", "Precision"), ("recall", "Recall"), ("f1", "F1"),
           ("accuracy", "Accuracy"), ("auc", "AUC"), ("uauc", "UAUC")]


def full_report(auc):
    """metrics.json with every metric of Table 1 in each part, warm and cold a little apart."""
    part = lambda a: dict(auc=a, uauc=a - 0.05, logloss=1.2 - a, precision=0.6, recall=0.7, f1=0.65,
                          accuracy=a + 0.02, n=100)
    return dict(valid=part(auc), test=part(auc), test_warm=part(auc + 0.03), test_cold=part(auc - 0.03))


@pytest.fixture
def table_root(tmp_path):
    """ROOT/seed<s>/<stage> as drivers/table.sh writes it: two seeds of the four ablation
    rows; text trains 3 epochs and joint 2, ICL and SASRec leave no log that matters here."""
    root = tmp_path / "table_ml1m"
    for s in (0, 1):
        (root / f"seed{s}").mkdir(parents=True)
        for i, stage in enumerate(("icl", "text", "sasrec", "joint")):
            fake_run(root / f"seed{s}" / stage, epochs={"text": 3, "joint": 2}.get(stage, 0),
                     metrics=full_report(0.5 + 0.05 * i + 0.01 * s))
    return root


def test_table_figures_are_the_papers(table_root):
    written = ev.plot_table(str(table_root))
    assert sorted(os.path.relpath(p, table_root) for p in written) == [
        "figures/fig10_ablation.svg", "figures/fig11_warm_cold.svg", "figures/fig12_curves_accuracy.svg",
        "figures/fig12_curves_auc.svg", "figures/fig12_curves_logloss.svg"]
    fig10 = (table_root / "figures" / "fig10_ablation.svg").read_text()
    assert texts(fig10, "legend") == ABLATION
    assert texts(fig10, "xtick") == [label for _, label in METRICS]
    # one bar per (metric, row), each the mean over the two seeds; SASRecLLM's AUC is the 6th group's 4th bar
    values = texts(fig10, "value")
    assert len(values) == 7 * 4
    assert values[5 * 4 + 3] == f"{statistics.mean([0.65, 0.66]):.3f}"
    fig11 = (table_root / "figures" / "fig11_warm_cold.svg").read_text()
    assert texts(fig11, "legend") == ABLATION
    assert texts(fig11, "xtick") == ["AUC, warm", "AUC, cold", "UAUC, warm", "UAUC, cold"]
    assert texts(fig11, "ref") == ["chance"]
    for name in ("auc", "logloss", "accuracy"):
        svg = (table_root / "figures" / f"fig12_curves_{name}.svg").read_text()
        assert texts(svg, "stage") == ["TALLRec", "SASRecLLM"], name
        dashed = [e for e in ET.fromstring(svg).iter(SVG + "line") if e.get("stroke-dasharray")]
        assert len(dashed) == 1, name  # the switch from the text stage to the joint stage
        assert "seed 0" in texts(svg, "title")[0]
    before = {p: open(p).read() for p in written}
    ev.plot_table(str(table_root))
    assert {p: open(p).read() for p in written} == before  # deterministic


def test_table_figures_go_where_asked(table_root, tmp_path):
    ev.main(["--plot", str(table_root), "--into", str(tmp_path / "figs")])
    assert len(list((tmp_path / "figs").glob("fig1*.svg"))) == 5
    assert not (table_root / "figures").exists()


def test_table_figures_name_what_is_missing(table_root, tmp_path, capsys):
    (table_root / "seed1" / "joint" / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match="seed1/joint/metrics.json"):
        ev.plot_table(str(table_root))
    # a single run is no table root: one error line that says what --plot expects
    run = table_root / "seed0" / "joint"
    assert ev.main(["--plot", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no seed<N>/" in err[0] and "drivers/table.sh" in err[0]


def test_one_epoch_stage_is_drawn_as_a_dot():
    svg = charts.svg_lines({"auc": [(1, 0.6), (1.5, None), (2, 0.62), (3, 0.63)]}, "t")
    assert len(list(ET.fromstring(svg).iter(SVG + "circle"))) == 1
    assert len(list(ET.fromstring(svg).iter(SVG + "polyline"))) == 1
