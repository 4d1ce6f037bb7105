"""Statistics and an export of a loaded data set: `python -m tools.datainfo ml1m --stats
[--tokenizer PATH]` prints one JSON object (rows, like rates, seen and warm shares, UAUC users,
prompt lengths in tokens); `--export FILE.jsonl` writes one JSON object per row, prompts included.
"""
import argparse
import json
import os
import sys

import numpy as np

import data
from llama import load_tokenizer
from tools.runs import cli

def _uauc_users(ds, rows):
    """Users with both a like and a dislike among rows (the users UAUC can average over)."""
    pos = np.bincount(ds.user[rows], weights=ds.label[rows], minlength=ds.n_users + 1)
    tot = np.bincount(ds.user[rows], minlength=ds.n_users + 1)
    return int(np.sum((pos > 0) & (pos < tot)))


def stats(ds, tok=None, template="paper"):
    out = {"dataset": ds.name, "rows": {}, "users": ds.n_users, "items": ds.n_items,
           "positive_rate": {}, "seen": {}, "warm": {}, "uauc_users": {}, "notes": ds.notes}
    for s in data.SPLITS:
        rows = ds.idx(s)
        out["rows"][s] = len(rows)
        out["positive_rate"][s] = round(float(ds.label[rows].mean()), 3)
        out["seen"][s] = round(float(ds.seen[rows].mean()), 3)
        out["warm"][s] = round(float(ds.warm[rows].mean()), 3)
        out["uauc_users"][s] = _uauc_users(ds, rows)
    if tok is not None:
        out["prompt_tokens"] = {}
        for kind, collab in (("text", False), ("collab", True)):
            n = np.array([len(p.ids) for p in data.encode_prompts(ds, range(len(ds)), tok, collab, 1, template)])
            out["prompt_tokens"][kind] = {"mean": round(float(n.mean()), 1),
                                          "p95": int(np.percentile(n, 95)), "max": int(n.max())}
    return out


def export(ds, path, template="paper"):
    with open(path, "w", encoding="utf-8") as f:
        for i in range(len(ds)):
            f.write(json.dumps({
                "user_id": int(ds.user[i]), "item_id": int(ds.item[i]),
                "label": int(ds.label[i]), "timestamp": int(ds.timestamp[i]),
                "split": str(ds.split[i]), "history": ds.history[i],
                "seen": bool(ds.seen[i]), "warm": bool(ds.warm[i]),
                "prompt_text": data.prompt(ds, i, False, template), "prompt_collab": data.prompt(ds, i, True, template),
            }, ensure_ascii=False) + "\n")


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset", choices=["ml1m", "movielens", "amazon"])
    p.add_argument("--data-dir", default=data.DATA_DIR)
    p.add_argument("--split", default=None, choices=["months", "ratio"], help="default: ratio for amazon, else months")
    p.add_argument("--template", default="paper", choices=list(data.TEMPLATES), help="the prompts of --export and --stats")
    p.add_argument("--reviews", help="amazon: reviews JSON lines (.gz or plain)")
    p.add_argument("--meta", help="amazon: metadata JSON lines (.gz or plain)")
    p.add_argument("--stats", action="store_true", help="print one JSON object of statistics")
    p.add_argument("--tokenizer", help="tokenizer.model, tokenizer.json or a checkpoint dir, for prompt lengths")
    p.add_argument("--export", metavar="FILE.jsonl", help="write one JSON object per row")
    args = p.parse_args(argv)
    ds = data.load(args.dataset, args.data_dir, args.split, args.reviews, args.meta)
    if args.export:
        inputs = [os.path.join(args.data_dir, "ml1m", f) for f in ("interactions.tsv", "items.tsv")]
        inputs += [f for f in (args.reviews, args.meta) if f]
        if os.path.exists(args.export) and any(os.path.exists(f) and os.path.samefile(f, args.export) for f in inputs):
            raise ValueError(f"--export {args.export} is one of the input files; choose another file")
        export(ds, args.export, args.template)
    if args.stats or not args.export:
        tok = load_tokenizer(args.tokenizer) if args.tokenizer else None
        print(json.dumps(stats(ds, tok, args.template)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
