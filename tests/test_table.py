"""python eval.py --table: every row of the paper's Table 1 trained for two seeds on a tiny slice of
ML-1M (300 rows per split, 2 optimizer steps, the random tiny backbone), then checked against the
runs' own metrics.json: each cell is the mean ± sample std over the seeds, Rel.Imp. is the paper's
formula on the seed means, a second call trains nothing, and --plot draws Figs. 10-12."""
import json
import os
import re
import statistics

import pytest

import eval as ev
import metrics

ROWS = {"pop": "Pop", "mf": "MF", "ncf": "NCF", "gru4rec": "RNN", "mc": "MC", "sasrec": "SASRec",
        "icl": "ICL", "text": "TALLRec", "joint": "SASRecLLM"}
KEYS = [k for k, _ in metrics.COLUMNS]  # logloss, precision, recall, f1, accuracy, auc, uauc
SEEDS = 2


def table_argv(runs, data_dir):
    return ["--table", "--data", "ml1m", "--data-dir", str(data_dir), "--llm", "tiny", "--seeds", str(SEEDS),
            "--limit", "300", "--max-steps", "2", "--threads", "1", "--runs", str(runs),
            "--table-dir", str(runs / "table_ml1m")]


@pytest.fixture(scope="module")
def table(tmp_path_factory, data_dir):
    """The table's root, trained once for the module (about 20 s on two idle cores)."""
    runs = tmp_path_factory.mktemp("table")
    assert ev.main(table_argv(runs, data_dir)) == 0
    return runs / "table_ml1m"


def parse(md):
    """{part: (header line, {row name: {column: cell}})} from the .md's '**part**' tables."""
    out = {}
    for block in md.split("\n**")[1:]:  # [0]: the title line, the command and the wall time
        part, *lines = block.strip().splitlines()
        part = part.rstrip("*")
        rows = [line for line in lines if line.startswith("|")]
        head = [c.strip() for c in rows[0].strip("|").split("|")]
        cells = {}
        for line in rows[2:]:
            c = [x.strip() for x in line.strip("|").split("|")]
            cells[c[0]] = dict(zip(head, c))
        out[part] = (rows[0], cells)
    return out


def seed_values(root, stage, part, key):
    return [json.loads((root / f"seed{s}" / stage / "metrics.json").read_text())[part][key] for s in range(SEEDS)]


def test_every_row_and_part_in_the_papers_columns(table):
    md = (table.parent / "table_ml1m.md").read_text()
    assert "`python eval.py --table --data ml1m" in md and "Wall time: " in md
    tables = parse(md)
    assert list(tables) == ["test", "test_warm", "test_cold"]
    header = metrics.markdown_table([]).splitlines()[0]  # Table 1's columns as metrics.py writes them
    for part, (head, cells) in tables.items():
        assert head == header, part
        assert list(cells) == list(ROWS.values()), part


def test_cells_are_mean_and_sample_std_over_seeds(table):
    tables = parse((table.parent / "table_ml1m.md").read_text())
    stds = []
    for part, (_, cells) in tables.items():
        for stage, name in ROWS.items():
            for key, column in metrics.COLUMNS:
                v = seed_values(table, stage, part, key)
                cell = cells[name][column]
                if None in v:  # undefined on a seed (e.g. UAUC with no eligible user)
                    assert cell == "nan", (part, name, column)
                    continue
                mean, std = (float(x) for x in cell.split(" ± "))
                assert mean == pytest.approx(statistics.mean(v), abs=5.01e-5), (part, name, column)
                assert std == pytest.approx(statistics.stdev(v), abs=5.01e-5), (part, name, column)
                stds.append(std)
    assert max(stds) > 0  # the seeds differ somewhere, so the std is really computed


def test_rel_imp_is_the_papers_formula_on_seed_means(table):
    tables = parse((table.parent / "table_ml1m.md").read_text())
    for part, (_, cells) in tables.items():
        ours = {k: statistics.mean(seed_values(table, "joint", part, k)) for k in ("auc", "uauc")}
        assert cells["SASRecLLM"]["Rel. Imp."] == "-"
        for stage, name in ROWS.items():
            if stage == "joint":
                continue
            row = {k: statistics.mean(seed_values(table, stage, part, k)) for k in ("auc", "uauc")}
            want = (ours["auc"] / row["auc"] + ours["uauc"] / row["uauc"]) / 2 - 1
            got = float(cells[name]["Rel. Imp."].rstrip("%")) / 100
            assert got == pytest.approx(want, abs=5.01e-5), (part, name)


def test_a_second_call_trains_nothing(table, data_dir, capsys):
    files = [p for p in table.rglob("*") if p.is_file() and "figures" not in p.parts]
    before = {p: p.stat().st_mtime_ns for p in files}
    assert ev.main(table_argv(table.parent, data_dir)) == 0
    out = capsys.readouterr().out
    assert out.count("done before, skipped") == SEEDS * len(ROWS)
    assert "python train.py" not in out  # no row was started
    assert {p: p.stat().st_mtime_ns for p in files if p.name != "times.json"} == \
           {p: t for p, t in before.items() if p.name != "times.json"}


def test_an_unfinished_row_is_run_again_alone(table, data_dir, capsys):
    (table / "seed1" / "pop" / "metrics.json").unlink()  # as if killed before it was written
    assert ev.main(table_argv(table.parent, data_dir)) == 0
    started = re.findall(r"\[table\] (\S+), seed (\d): python train.py .*", capsys.readouterr().out)
    assert started == [("Pop", "1")]
    assert (table / "seed1" / "pop" / "metrics.json").exists()
    assert list((table / "seed1" / "pop").glob("old-*"))  # its partial files moved aside, not deleted


def test_row_argv_resumes_or_moves_aside(tmp_path):
    def argv(stage="mf"):
        return ev.row_argv(str(tmp_path), 0, stage, "ml1m", ["--limit", "5"])
    assert argv()[-2:] == ["--limit", "5"] and "--resume" not in argv() and "--overwrite" not in argv()
    out = tmp_path / "seed0" / "mf"
    out.mkdir(parents=True)
    (out / "log.jsonl").write_text("")
    assert "--overwrite" in argv()
    (out / "last.pt").write_text("")
    assert "--resume" in argv() and "--overwrite" not in argv()
    joint = argv("joint")
    assert joint[joint.index("--cf-ckpt") + 1] == os.path.join(str(tmp_path), "seed0", "sasrec", "best.pt")
    assert joint[joint.index("--lora") + 1] == os.path.join(str(tmp_path), "seed0", "text", "adapter")


@pytest.mark.parametrize("flags, words", [(["--seeds", "2", "--seed", "1"], "--table sets --seed"),
                                          (["--seeds", "2", "--out=x"], "--table sets --out"),
                                          (["--seeds", "two"], "give --seeds N"),
                                          (["--seeds", "1", "--no-such-flag", "3"], "train.py refused")])
def test_bad_flags_stop_the_table_before_any_row(tmp_path, capsys, flags, words):
    assert ev.main(["--table", "--table-dir", str(tmp_path / "t"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and words in err[-1]  # after train.py's own usage, for a flag it lacks
    assert not (tmp_path / "t").exists()


def test_plot_draws_the_four_rows_and_the_stage_switch(table):
    assert ev.main(["--plot", str(table)]) == 0
    figures = sorted(p.name for p in (table / "figures").iterdir())
    assert figures == ["fig10_ablation.svg", "fig11_warm_cold.svg", "fig12_curves_accuracy.svg",
                       "fig12_curves_auc.svg", "fig12_curves_logloss.svg"]
    for name in ("fig10_ablation.svg", "fig11_warm_cold.svg"):
        svg = (table / "figures" / name).read_text()
        assert all(f">{row}</text>" in svg for row in ("ICL", "TALLRec", "SASRec", "SASRecLLM")), name
    curves = (table / "figures" / "fig12_curves_auc.svg").read_text()
    assert 'stroke-dasharray' in curves  # the switch from the text stage to the joint stage
    assert '>TALLRec</text>' in curves and '>SASRecLLM</text>' in curves
