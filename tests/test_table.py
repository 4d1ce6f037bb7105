"""drivers/table.sh, the one table driver: every row of the paper's Table 1 trained on a tiny slice of
ML-1M (100 rows per split, 2 optimizer steps, the random tiny backbone), seed 0 first, then a second
seed of SASRec, TALLRec and SASRecLLM alone (as the real-LLM table does), then checked against the
runs' own metrics.json: each cell is the mean ± sample std over the row's seeds, Rel.Imp. is the
paper's formula on the seed means, a second call trains nothing, and drivers.report --plot draws
Figs. 10-12."""
import json
import os
import re
import shutil
import statistics
import subprocess

import pytest

from conftest import ROOT
from drivers import report
from tools import runs
from tools.tables import COLUMNS, markdown_table

ROWS = {"pop": "Pop", "mf": "MF", "ncf": "NCF", "gru4rec": "RNN", "mc": "MC", "sasrec": "SASRec",
        "icl": "ICL", "text": "TALLRec", "joint": "SASRecLLM"}
KEYS = [k for k, _ in COLUMNS]  # logloss, precision, recall, f1, accuracy, auc, uauc
SEEDS, MULTI = 2, ("sasrec", "text", "joint")  # the rows trained on both seeds; the others on seed 0


def table_sh(root, data_dir, *flags, seeds=SEEDS, rows=" ".join(ROWS)):
    env = {**os.environ, "SEEDS": str(seeds), "ROWS": rows, "LLM": "tiny", "OMP_NUM_THREADS": "1",
           "SHUFFLE_FLAGS": "--test-only"}
    return subprocess.run(["bash", "drivers/table.sh", str(root), "--data-dir", str(data_dir), "--limit", "100",
                           "--max-steps", "2", "--threads", "1", *flags], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def table(tmp_path_factory, data_dir):
    """The table's root, trained once for the module: every row on seed 0, then MULTI's on seed 1."""
    root = tmp_path_factory.mktemp("table") / "table_ml1m"
    for out in (table_sh(root, data_dir, seeds=1), table_sh(root, data_dir, rows=" ".join(MULTI))):
        assert out.returncode == 0, out.stderr[-3000:]
    return root


def parse(md):
    """{part: (header line, {row name: {column: cell}})} from the .md's '**part**' tables."""
    out = {}
    for block in md.split("\n**")[1:]:  # [0]: the title line, the command and the times
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
    seeds = range(SEEDS) if stage in MULTI else [0]
    return [json.loads((root / f"seed{s}" / stage / "metrics.json").read_text())[part][key] for s in seeds]


def test_every_row_and_part_in_the_papers_columns(table):
    md = (table.parent / "table_ml1m.md").read_text()
    assert "bash drivers/table.sh" in md and "times.tsv" in md
    calls = [line for line in md.splitlines() if line.startswith("`SEEDS=")]  # both calls, in order
    assert [c.split()[0:2] for c in calls] == [["`SEEDS=1", "ROWS='pop"], ["`SEEDS=2", "ROWS='sasrec"]], calls
    assert "Rows on fewer seeds: Pop (seed 0), MF (seed 0), NCF (seed 0), RNN (seed 0), MC (seed 0), ICL (seed 0)." in md
    tables = parse(md)
    assert list(tables) == ["test", "test_warm", "test_cold", "paper", "cost"]
    head, cost = tables.pop("cost")
    _, paper = tables.pop("paper")
    assert list(paper) == ["SASRec", "TALLRec", "SASRecLLM"]
    for stage, (auc, uauc) in report.PAPER["ml1m"].items():
        row = paper[ROWS[stage]]
        assert (row["AUC (paper, TinyLlama-1.1B)"], row["UAUC (paper)"]) == (f"{auc:.3f}", f"{uauc:.3f}")
        assert row["AUC (ours)"] == tables["test"][1][ROWS[stage]]["AUC"]  # the test table's seed-mean cell
    assert list(cost) == list(ROWS.values())
    times = report.row_seconds(table)
    for stage, name in ROWS.items():
        epochs = len((table / "seed0" / stage / "log.jsonl").read_text().splitlines()) if stage not in ("pop", "mc", "icl") else 0
        assert cost[name]["epochs (best)"].startswith(str(epochs)) if epochs else cost[name]["epochs (best)"] == "-"
        h, m, sec = map(int, cost[name]["wall time"].split(":"))
        assert h * 3600 + m * 60 + sec == round(times[f"seed0/{stage}"]), name
    assert cost["TALLRec"]["train tokens/s"] != "-" and cost["SASRec"]["train tokens/s"] == "-"
    header = markdown_table([]).splitlines()[0]  # Table 1's columns as metrics.py writes them
    for part, (head, cells) in tables.items():
        assert head == header, part
        assert list(cells) == list(ROWS.values()), part
    shuffled = (table / "shuffle_cf.md").read_text()  # SHUFFLE_FLAGS=--test-only: the test parts alone
    assert "CF tokens permuted across rows" in shuffled and "| test_cold |" in shuffled and "| valid |" not in shuffled


def test_cells_are_mean_and_sample_std_over_seeds(table):
    tables = parse((table.parent / "table_ml1m.md").read_text())
    tables.pop("cost"), tables.pop("paper")
    stds = []
    for part, (_, cells) in tables.items():
        for stage, name in ROWS.items():
            for key, column in COLUMNS:
                v = seed_values(table, stage, part, key)
                cell = cells[name][column]
                if None in v:  # undefined on a seed (e.g. UAUC with no eligible user)
                    assert cell == "nan", (part, name, column)
                    continue
                if len(v) == 1:  # a row on seed 0 alone: its value, no std
                    assert float(cell) == pytest.approx(v[0], abs=5.01e-5), (part, name, column)
                    continue
                mean, std = (float(x) for x in cell.split(" ± "))
                assert mean == pytest.approx(statistics.mean(v), abs=5.01e-5), (part, name, column)
                assert std == pytest.approx(statistics.stdev(v), abs=5.01e-5), (part, name, column)
                stds.append(std)
    assert max(stds) > 0  # the seeds differ somewhere, so the std is really computed


def test_rel_imp_is_the_papers_formula_on_seed_means(table):
    tables = parse((table.parent / "table_ml1m.md").read_text())
    tables.pop("cost"), tables.pop("paper")
    mean = lambda v: float("nan") if None in v else statistics.mean(v)  # (None: undefined on a seed, a few rows)
    for part, (_, cells) in tables.items():
        ours = {k: mean(seed_values(table, "joint", part, k)) for k in ("auc", "uauc")}
        assert cells["SASRecLLM"]["Rel. Imp."] == "-"
        for stage, name in ROWS.items():
            if stage == "joint":
                continue
            row = {k: mean(seed_values(table, stage, part, k)) for k in ("auc", "uauc")}
            want = (ours["auc"] / row["auc"] + ours["uauc"] / row["uauc"]) / 2 - 1
            if want != want:
                assert cells[name]["Rel. Imp."] == "nan", (part, name)
                continue
            got = float(cells[name]["Rel. Imp."].rstrip("%")) / 100
            assert got == pytest.approx(want, abs=5.01e-5), (part, name)


def test_a_row_on_a_later_seed_alone_and_a_stray_seed_directory(table, tmp_path):
    """A row missing on seed 0 is laid out from the seeds it has (its cost from the first); a seed<N>/
    that holds no row is no seed of the table."""
    root = tmp_path / "t"
    shutil.copytree(table, root)
    shutil.rmtree(root / "seed0" / "sasrec")
    (root / "seed7").mkdir()
    report.build_table(str(root))
    md = (tmp_path / "t.md").read_text()
    assert "over 2 seeds (0, 1)" in md and "SASRec (seed 1)" in md
    assert parse(md)["cost"][1]["SASRec"]["epochs (best)"] != "-"


def test_a_second_call_trains_nothing(table, data_dir):
    files = [p for p in table.rglob("*") if p.is_file() and "figures" not in p.parts]
    before = {p: p.stat().st_mtime_ns for p in files}
    for out, skipped in ((table_sh(table, data_dir, seeds=1), len(ROWS)),
                         (table_sh(table, data_dir, rows=" ".join(MULTI)), SEEDS * len(MULTI))):
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.count("done before, skipped") == skipped
        assert "train.py" not in out.stdout  # no row was started
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_an_unfinished_row_is_run_again_alone_and_its_files_kept(table, data_dir):
    (table / "seed0" / "pop" / "metrics.json").unlink()  # as if killed before it was written
    out = table_sh(table, data_dir, seeds=1)
    assert out.returncode == 0, out.stderr[-2000:]
    started = re.findall(r"\[table\] (\S+), seed (\d): \S*python train.py (.*)", out.stdout)
    assert [(s, k) for s, k, _ in started] == [("pop", "0")] and "--overwrite" in started[0][2]
    assert (table / "seed0" / "pop" / "metrics.json").exists()
    assert list((table / "seed0" / "pop").glob("old-*"))  # its partial files moved aside, not deleted


def test_minutes_pauses_a_row_and_the_next_call_resumes_it(tmp_path, data_dir):
    """MINUTES: the row pauses after its first epoch (it would not end in time), the table stops there
    without a report; the same command without MINUTES resumes the row, and its times add up."""
    root = tmp_path / "t"
    call = lambda **env: subprocess.run(
        ["bash", "drivers/table.sh", str(root), "--data-dir", str(data_dir), "--limit", "300", "--max-epochs", "2",
         "--threads", "1"], cwd=ROOT, env={**os.environ, "ROWS": "sasrec", "OMP_NUM_THREADS": "1", **env},
        capture_output=True, text=True, timeout=300)
    out = call(MINUTES="0.0001", SASREC_FLAGS="--lr 2e-3")  # <STAGE>_FLAGS: that stage's rows only
    assert out.returncode == 0, out.stderr[-2000:]
    assert runs.read_checkpoint(str(root / "seed0" / "sasrec" / "last.pt"))["args"]["lr"] == 2e-3
    assert "not finished" in out.stdout and not (root.parent / "t.md").exists()
    assert (root / "seed0" / "sasrec" / "last.pt").exists() and not (root / "seed0" / "sasrec" / "metrics.json").exists()
    out = call(SASREC_FLAGS="--lr 2e-3")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SASREC_FLAGS='--lr 2e-3'" in (root.parent / "t.md").read_text()  # the report's command says it
    assert "--resume" in out.stdout and (root / "seed0" / "sasrec" / "metrics.json").exists()
    log = [json.loads(line) for line in (root / "seed0" / "sasrec" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    lines = [line.split("\t") for line in (root / "times.tsv").read_text().splitlines()]
    assert [(n, how) for n, _, how in lines] == [("seed0/sasrec", "started"), ("seed0/sasrec", "resumed")]
    assert report.row_seconds(root) == {"seed0/sasrec": sum(float(sec) for _, sec, _ in lines)}
    # a row started over replaces its time; resumed parts add to it; old two-column lines still read
    (root / "times.tsv").write_text("seed0/mf\t10\tstarted\nseed0/mf\t5\tresumed\nseed1/mf\t4\nseed0/mf\t7\tstarted\n"
                                    "seed0/mf\t3\tresumed\n")
    assert report.row_seconds(root) == {"seed0/mf": 10.0, "seed1/mf": 4.0}


def test_lr_sweep_chooses_on_valid_only(tmp_path, data_dir):
    """drivers/lr_sweep.sh: one epoch per LR, no test scoring (no metrics.json), and sweep.md lists each
    LR's first-epoch valid AUC from its log, best first; a second call trains nothing."""
    root = tmp_path / "sweep"
    call = lambda lrs="1e-3 1e-2": subprocess.run(
        ["bash", "drivers/lr_sweep.sh", str(root), "--stage", "sasrec", "--data-dir", str(data_dir), "--limit", "300",
         "--threads", "1"], cwd=ROOT, env={**os.environ, "LRS": lrs, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300)
    out = call()
    assert out.returncode == 0, out.stderr[-2000:]
    aucs = {lr: json.loads((root / f"lr{lr}" / "log.jsonl").read_text().splitlines()[0])["valid"]["auc"]
            for lr in ("1e-3", "1e-2")}
    assert not list(root.glob("*/metrics.json"))
    rows = [line.split("|")[1:4] for line in (root / "sweep.md").read_text().splitlines() if line.startswith("| 1e")]
    assert [(lr.strip(), float(auc)) for lr, _, auc in rows] == \
        sorted(((lr, round(a, 4)) for lr, a in aucs.items()), key=lambda t: -t[1])
    again = call()
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == 2
    assert call("1e-3").returncode == 0  # sweep.md names the last call, and says which rows it holds: both
    assert "LRS='1e-3' bash" in (md := (root / "sweep.md").read_text()) and "(lr 1e-3, 1e-2)" in md


@pytest.mark.parametrize("how", ["--dtype bfloat16", "--dtype=bfloat16", "--amp bf16",
                                 "--amp=bf16 --dtype float32", "a bf16 last.pt"])
def test_a_bf16_row_is_neither_started_nor_resumed_where_bf16_is_emulated(tmp_path, data_dir, how):
    """The suite's ONEDNN_MAX_CPU_ISA=AVX2 (conftest) leaves bf16 emulated here, as on an AVX2-only CPU: a bf16
    LLM row stops the table (exit 3) before it trains, so that no seed mixes precisions or CPU kernels."""
    root, flags = tmp_path / "t", how.split() if how.startswith("--") else []
    if not flags:
        runs.save_atomic(dict(args=dict(dtype="bfloat16")), str(tmp_path / "last.pt"))
        (root / "seed0" / "text").mkdir(parents=True)
        os.replace(tmp_path / "last.pt", root / "seed0" / "text" / "last.pt")
    out = subprocess.run(["bash", "drivers/table.sh", str(root), "--data-dir", str(data_dir), "--limit", "100", *flags],
                         cwd=ROOT, env={**os.environ, "ROWS": "text", "LLM": "tiny"}, capture_output=True, text=True)
    assert out.returncode == 3 and "no native bf16" in out.stderr, out.stderr[-2000:]
    kept = sorted(os.listdir(root / "seed0" / "text")) if (root / "seed0" / "text").exists() else []
    assert kept == ([] if flags else ["last.pt"]) and not (root / "times.tsv").exists()


@pytest.mark.parametrize("flag", ["--seed", "--out=x", "--stage", "--llm"])
def test_flags_the_table_sets_are_refused_before_any_row(tmp_path, data_dir, flag):
    out = table_sh(tmp_path / "t", data_dir, flag, "1")
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "sets" in out.stderr
    assert not (tmp_path / "t").exists()


def test_plot_draws_the_four_rows_and_the_stage_switch(table):
    assert report.main(["--plot", str(table)]) == 0
    figures = sorted(p.name for p in (table / "figures").iterdir())
    assert figures == ["fig10_ablation.svg", "fig11_warm_cold.svg", "fig12_curves_accuracy.svg",
                       "fig12_curves_auc.svg", "fig12_curves_logloss.svg"]
    for name in ("fig10_ablation.svg", "fig11_warm_cold.svg"):
        svg = (table / "figures" / name).read_text()
        assert all(f">{row}</text>" in svg for row in ("ICL", "TALLRec", "SASRec", "SASRecLLM")), name
    curves = (table / "figures" / "fig12_curves_auc.svg").read_text()
    assert 'stroke-dasharray' in curves  # the switch from the text stage to the joint stage
    assert '>TALLRec</text>' in curves and '>SASRecLLM</text>' in curves
