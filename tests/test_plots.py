"""eval.py's SVG plots, parsed back with ElementTree: every stage named, whole-epoch x ticks, bars
on a y axis from zero, axis labels. Tiny fake run directories, no data and no training."""
import json
import xml.etree.ElementTree as ET

import pytest
import torch

import eval as ev

SVG = "{http://www.w3.org/2000/svg}"


def texts(svg, cls):
    return [t.text for t in ET.fromstring(svg).iter(SVG + "text") if t.get("class") == cls]


def fake_run(path, args=None, epochs=0, null_uauc_at=None, metrics=None):
    """A run directory holding what plot_run reads: best.pt's args, log.jsonl, metrics.json."""
    path.mkdir()
    if args is not None:
        torch.save({"args": args, "model": {}}, path / "best.pt")
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
    return path


def report(auc, warm, cold):
    part = lambda a: dict(auc=a, uauc=None if a is None else a - 0.05, logloss=0.6, accuracy=0.6, n=100)
    return dict(valid=part(auc), test=part(auc), test_seen=part(warm), test_unseen=part(cold),
                test_warm=part(warm), test_cold=part(cold))


@pytest.fixture
def joint_chain(tmp_path):
    """12 SASRec, 8 text and 8 joint epochs: the layout whose old x ticks fell on 7.5 and 20.5."""
    cf = fake_run(tmp_path / "sasrec", epochs=12, metrics=report(0.73, 0.76, 0.69))
    text = fake_run(tmp_path / "text", epochs=8, null_uauc_at=4, metrics=report(0.53, 0.51, None))
    return fake_run(tmp_path / "joint", epochs=8, metrics=report(0.734, 0.766, 0.698),
                    args=dict(stage="joint", cf_ckpt=str(cf / "best.pt"), lora=str(text / "adapter")))


def test_curves_name_every_stage_on_whole_epochs(joint_chain):
    written = ev.plot_run(str(joint_chain))
    names = sorted(p.rsplit("/", 1)[1] for p in written)
    assert names == ["bars_auc.svg", "curves_accuracy.svg", "curves_auc.svg", "curves_logloss.svg", "curves_loss.svg"]
    for name in names[1:]:
        svg = (joint_chain / name).read_text()
        assert texts(svg, "stage") == ["SASRec", "TALLRec", "SASRecLLM"], name
        ticks = texts(svg, "xtick")
        assert len(ticks) >= 3 and all(t == str(int(t)) for t in ticks), (name, ticks)
        assert max(int(t) for t in ticks) <= 28  # ticks stay on epochs the chart shows
        assert texts(svg, "xlabel")[0].startswith("epoch") and texts(svg, "ylabel")[0], name
        dashed = [e for e in ET.fromstring(svg).iter(SVG + "line") if e.get("stroke-dasharray")]
        assert len(dashed) == 2, name  # the two stage switches
    # 3 stages x 2 series, plus the break a null UAUC leaves inside the text stage
    svg = (joint_chain / "curves_auc.svg").read_text()
    assert len(list(ET.fromstring(svg).iter(SVG + "polyline"))) == 7
    assert texts(svg, "ylabel") == ["AUC"]


def test_bars_start_at_zero_and_say_na(joint_chain):
    ev.plot_run(str(joint_chain))
    svg = (joint_chain / "bars_auc.svg").read_text()
    assert float(texts(svg, "ytick")[0]) == 0.0
    assert texts(svg, "xlabel") == ["test rows"] and texts(svg, "ylabel") == ["AUC"]
    assert texts(svg, "legend") == ["SASRec", "TALLRec", "SASRecLLM"]
    assert texts(svg, "value").count("n/a") == 1  # text's cold AUC is null: no bar, not a zero bar
    assert texts(svg, "ref") == ["chance"]


def test_bar_heights_are_proportional_to_values():
    svg = ev.svg_bars({"test": {"a": 0.49, "b": 0.51}}, "close values", xlabel="x", ylabel="AUC")
    bars = [r for r in ET.fromstring(svg).iter(SVG + "rect") if r.get("class") == "bar"]
    (ya, ha), (yb, hb) = ((float(r.get("y")), float(r.get("height"))) for r in bars)
    assert ya + ha == pytest.approx(yb + hb)  # one baseline
    assert texts(svg, "ytick")[0] == "0.0"
    assert ha / hb == pytest.approx(0.49 / 0.51, rel=0.02)  # from zero: a 4% gap looks like 4%


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 28, 150])
def test_x_ticks_are_whole_epochs(n):
    svg = ev.svg_lines({"auc": [(e, 0.5 + 0.001 * e) for e in range(1, n + 1)]}, "t", xlabel="epoch", ylabel="AUC")
    ticks = texts(svg, "xtick")
    assert ticks and all(t == str(int(t)) and 1 <= int(t) <= n for t in ticks), ticks
    assert texts(svg, "xlabel") == ["epoch"] and texts(svg, "ylabel") == ["AUC"]


def test_runs_without_log_get_bars_only(tmp_path):
    pop = fake_run(tmp_path / "pop", args=dict(stage="pop"), metrics=report(0.6, 0.62, None))
    assert [p.rsplit("/", 1)[1] for p in ev.plot_run(str(pop))] == ["bars_auc.svg"]
    empty = fake_run(tmp_path / "icl", args=dict(stage="icl"))
    with pytest.raises(ValueError, match="nothing to plot"):
        ev.plot_run(str(empty))
