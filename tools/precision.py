"""bf16 against fp32 on one real checkpoint: the whole ML-1M test split scored in each (AUC, UAUC),
for the untuned LLM (ICL) and for trained text adapters, on the paper's template. It tells whether
train.py's CPU default (bf16 weights and autocast) may be trusted; a measurement, not the lesson.

    python -m tools.precision --ckpt DIR [--adapter RUN/adapter ...] --out FILE.json
    python -m tools.precision ... --precisions bf16 --out FILE.json   # bf16 again, the fp32 scores kept
"""
import argparse
import json
import os
import time

import numpy as np
import torch

import data
import llama
import lora
import metrics
from tools import bench, runs
from tools.sources import read_json

# (weight dtype, bf16 autocast): the two CPU modes of train.py, as the bench names them
PRECISIONS = {"fp32": bench.MODES["fp32"], "bf16": bench.MODES["bf16 weights, bf16 autocast"]}


@torch.no_grad()
def score(model, prompts, answers, batch_size, autocast):
    """z_Yes - z_No of every prompt, in batches of similar lengths, left-padded."""
    out = np.zeros(len(prompts))
    for idx, ids, mask in bench.bucketed([p.ids for p in prompts], batch_size, shuffle=False):
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            z = model.token_logits(model(input_ids=ids, attention_mask=mask)[:, -1], answers)  # (B, 2)
        out[idx] = (z[:, 0] - z[:, 1]).numpy()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--adapter", nargs="*", default=[], help="text adapters to score besides the bare LLM")
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS),
                   help="score only these; the others' scores are kept from an earlier run (OUT's .scores.npz)")
    p.add_argument("--rows", type=int, default=0, help="a fixed random N of the test rows (0: all)")
    p.add_argument("--out", required=True, help="JSON: every AUC / UAUC and the largest score difference")
    args = p.parse_args(argv)
    ds, tok = data.load("ml1m", args.data_dir), llama.load_tokenizer(args.ckpt)
    rows = ds.idx("test")
    rows = np.sort(np.random.default_rng(0).permutation(rows)[:args.rows]) if args.rows else rows
    prompts, labels, users = data.encode_prompts(ds, rows, tok, collab=False), ds.label[rows], ds.user[rows]
    report = read_json(args.out, "an earlier precision report") if os.path.exists(args.out) else {}
    kept = os.path.splitext(args.out)[0] + ".scores.npz"  # every score, so one precision can be re-run alone
    scores = dict(np.load(kept)) if os.path.exists(kept) else {}
    for name, adapter in [("icl", None)] + [(a, a) for a in args.adapter]:
        for prec in args.precisions:
            dtype, autocast = PRECISIONS[prec]
            model, t0 = llama.load_model(args.ckpt, dtype), time.time()
            if adapter:
                lora.load_adapter(model, adapter)
            scores[f"{name} {prec}"] = s = score(model.eval(), prompts, [tok.yes_id, tok.no_id], args.batch_size, autocast)
            report[f"{name} {prec}"] = dict(auc=metrics.auc(labels, s), uauc=metrics.uauc(users, labels, s)[0],
                                            minutes=round((time.time() - t0) / 60, 1), n=len(rows))
            print(json.dumps({name + " " + prec: report[f"{name} {prec}"]}), flush=True)
            np.savez(kept + ".tmp.npz", **scores)
            os.replace(kept + ".tmp.npz", kept)
            runs.write_json(report, args.out)
        if f"{name} fp32" in scores and f"{name} bf16" in scores:
            # AUC ranks: when the scores' spread is small against bf16's rounding, near-tied rows reorder
            lo, hi = scores[f"{name} fp32"], scores[f"{name} bf16"]
            report[f"{name} bf16 - fp32"] = dict(
                auc=report[f"{name} bf16"]["auc"] - report[f"{name} fp32"]["auc"],
                max_abs_score_diff=float(np.abs(hi - lo).max()), score_diff_std=float((hi - lo).std()),
                fp32_score_std=float(lo.std()), score_corr=float(np.corrcoef(lo, hi)[0, 1]))
            print(json.dumps({name + " bf16 - fp32": report[f"{name} bf16 - fp32"]}), flush=True)
            runs.write_json(report, args.out)


if __name__ == "__main__":
    main()
