"""Statistics and an export of a loaded data set: `python -m drivers.datainfo ml1m --stats` prints one
JSON object (rows, like rates, seen and warm shares, UAUC users); `--export FILE.jsonl` writes one
JSON object per row, the paper's prompts included."""
import argparse
import json
import os
import sys

import numpy as np

if not __package__:  # run as a file (python drivers/x.py): the lesson's modules are one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))  # (as python: links resolved)
import data
import metrics
from tools import sources
from tools.runs import cli, path, refuse_artefact, refuse_overlap, write_atomic


def stats(ds):
    rows = {s: ds.idx(s) for s in data.SPLITS}
    share = lambda a: {s: round(float(a[r].mean()), 3) for s, r in rows.items()}
    return {"dataset": ds.name, "rows": {s: len(r) for s, r in rows.items()}, "users": ds.n_users,
            "items": ds.n_items, "positive_rate": share(ds.label), "seen": share(ds.seen), "warm": share(ds.warm),
            # the users UAUC averages over (those with both a like and a dislike): ties score every AUC 0.5
            "uauc_users": {s: metrics.uauc(ds.user[r], ds.label[r], np.zeros(len(r)))[1] for s, r in rows.items()},
            "notes": ds.notes}


def export(ds, path):
    """One JSON object per row, written whole or not at all (a full disk keeps the old file)."""
    rows = (dict(user_id=int(ds.user[i]), item_id=int(ds.item[i]), label=int(ds.label[i]),
                 timestamp=int(ds.timestamp[i]), split=str(ds.split[i]), history=ds.history[i],
                 seen=bool(ds.seen[i]), warm=bool(ds.warm[i]), prompt_text=data.prompt(ds, i, False),
                 prompt_collab=data.prompt(ds, i, True)) for i in range(len(ds)))
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("dataset", choices=["ml1m", "movielens", "amazon"])
    p.add_argument("--data-dir", type=path, default=data.DATA_DIR)
    p.add_argument("--split", default=None, choices=["months", "ratio"], help="default: ratio for amazon, else months")
    p.add_argument("--reviews", type=path, help="amazon: reviews JSON lines (.gz or plain)")
    p.add_argument("--meta", type=path, help="amazon: metadata JSON lines (.gz or plain)")
    p.add_argument("--stats", action="store_true", help="print one JSON object of statistics")
    p.add_argument("--export", metavar="FILE.jsonl", type=path, help="write one JSON object per row")
    args = p.parse_args(argv)
    if args.dataset != "amazon" and (args.reviews or args.meta):
        p.error(f"--reviews and --meta are amazon's files; {args.dataset} does not read them")
    ds = data.load(args.dataset, args.data_dir, args.split, args.reviews, args.meta)
    if args.export:
        refuse_overlap(args.export, sources.input_dirs(args.dataset, args.data_dir, args.reviews, args.meta), "--export")
        refuse_artefact(os.path.dirname(os.path.abspath(args.export)), "--export")
        export(ds, args.export)
    if args.stats or not args.export:
        print(json.dumps(stats(ds)))


if __name__ == "__main__":
    sys.exit(main())
