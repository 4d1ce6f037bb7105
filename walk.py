"""One real row, from its TSV line to its Yes/No score: the README's reading order, run.

    python walk.py --data ml1m --llm tiny            # runs/joint if it exists, else untrained parts
    python walk.py --run runs/joint --row 40000      # a trained joint run, one chosen row

Each step prints what it made and its shape, calling the functions training calls: the row and
its history, the prompt and its token ids, the CF vectors, the pseudo-tokens, the splice, the
LLM's last hidden state, z_Yes and z_No. Then it scores the row as training does (prompt_batch,
model(**inputs)), prints both scores and counts the functions and files on that path (--verbose
lists them). It imports every layer, so it sits at the top of the import graph.
"""
import argparse
import itertools
import os
import sys

import numpy as np
import torch

import data
import llama
import train
from sasrecllm import SASRec, SASRecLLM, cf_vectors, splice
from tools import limits, runs, sources
from tools.runs import cli


def full_data(a):
    """The run's data set (its split, its Amazon files), whole: a --limit run's rows keep their numbers."""
    return data.load(a.data, a.data_dir, a.split, a.reviews, a.meta)


def build(args):
    """(run args, ds, model): a trained joint run rebuilt from its best.pt, or, without one, the
    joint model from untrained parts (random SASRec and mapping, no LoRA) on --llm's backbone."""
    run = args.run or os.path.join(args.runs, "joint")  # a --run given must exist; RUNS/joint only may
    if args.run or os.path.exists(os.path.join(run, "best.pt")):
        a, _, model, _ = train.load_run(run, args.data_dir)
        if a.stage != "joint":
            raise ValueError(f"{run} is a '{a.stage}' run; the walk follows a joint run")
        # The whole data set, even when the run trained on a --limit slice: a slice keeps the
        # full data's ids and histories, so row r here is the file's r-th row.
        return a, full_data(a), model.eval(), f"the trained joint run {run}"
    a = train.Run(stage="joint", data=args.data, llm=args.llm, runs=args.runs, data_dir=args.data_dir)
    ds = full_data(a)
    torch.manual_seed(0)
    llm, tok = llama.load(train.backbone_dir(a, ds))
    dim = train.STAGE_DEFAULTS["sasrec"]["dim"]  # the joint stage itself reads it from the CF run
    cf = SASRec(ds.n_items, ds.n_users, dim=dim, n_layers=a.layers, n_heads=a.heads, maxlen=a.maxlen)
    model = SASRecLLM(llm, tok.yes_id, tok.no_id, cf=cf, proj_token_num=a.proj_token_num, cf_bias=bool(a.cf_bias))
    return a, ds, model.eval(), "UNTRAINED parts (no runs/joint yet: python train.py --stage all ... makes one)"


def show(name, t):
    t = t.detach().float()
    head = ", ".join(f"{v:+.3f}" for v in t.reshape(-1)[:4].tolist())
    print(f"    {name}: shape {tuple(t.shape)}, first values [{head}, ...], norm {t.norm():.3f}")


@torch.no_grad()
def walk(args):
    a, ds, model, what = build(args)
    backbone = train.backbone_dir(a, ds)
    tok = llama.load_tokenizer(backbone)
    row = args.row if args.row is not None else int(ds.idx("test")[0])
    if not 0 <= row < len(ds):
        raise ValueError(f"--row {row}: expected 0 <= row < {len(ds)}")
    print(f"model: {what}; backbone {backbone}\n")

    print(f"1. the row (data.load): row {row} of {len(ds)}, split {ds.split[row]}")
    if ds.name == "ml1m":  # ml1m keeps file order: row r is the r-th line after the header, blank lines aside
        path = os.path.join(a.data_dir or data.DATA_DIR, "ml1m", "interactions.tsv")
        n, line = next(itertools.islice(((n, t) for n, t in sources._lines(path, "") if t.strip()), row + 1, None))
        print(f"    TSV line {n}: {line!r}   (user_id, item_id, label, timestamp, split)")
    print(f"    user {ds.user[row]}, item {ds.item[row]} {ds.titles[ds.item[row]]!r}, label {ds.label[row]} "
          f"({'liked' if ds.label[row] else 'not liked'}); warm {bool(ds.warm[row])}")
    hist = ds.history[row]
    print(f"\n2. the history (Histories, built by data.make_dataset): {len(hist)} items liked earlier; the last 3: "
          f"{[ds.titles[i] for i in hist[-3:]]}")

    text = data.prompt(ds, row, True, a.template)
    print(f"\n3. the prompt (data.prompt, the {a.template} template's collaborative form):\n    {text}")
    p = data.encode_prompt(text, tok, a.proj_token_num)
    limits.check_positions(a, ds, model.llm.cfg, [p], [row])  # (past them, the LLM's scores mean nothing)
    print(f"\n4. token ids (data.encode_prompt): {len(p.ids)} tokens; <UserID> slots at {p.user_pos}, "
          f"<TargetItemID> slots at {p.item_pos} (placeholder id {tok.unk_id})")
    for name, pos in (("<UserID>", p.user_pos), ("<TargetItemID>", p.item_pos)):
        lo = max(0, pos[0] - 4)
        print(f"    around {name}: ids {p.ids[lo:pos[-1] + 3]} = {tok.decode(p.ids[lo:pos[0]])!r} [slot] "
              f"{tok.decode(p.ids[pos[-1] + 1:pos[-1] + 3])!r}")

    c = data.cf_batch(ds, [row], a.maxlen)
    u, i = cf_vectors(model.cf, c["user"], c["hist"], c["item"], model.cf_bias)
    print(f"\n5. CF vectors (sasrecllm.cf_vectors, {type(model.cf).__name__} reading the last {a.maxlen} likes):")
    show("user u", u)
    show("item i", i)
    print(f"    <u, i> = {float((u * i).sum()):+.4f}" + ("  (= the CF model's own logit)" if model.cf_bias else ""))

    ut, it = model.mapping(u), model.mapping(i)
    print(f"\n6. pseudo-tokens (MappingLayer: Linear {u.shape[-1]} -> {model.mapping.fc1.out_features}, ReLU, "
          f"Linear -> {a.proj_token_num} x {model.mapping.D}):")
    show("user tokens", ut)
    show("item tokens", it)

    ids = torch.tensor([p.ids])
    emb = model.llm.model.embed_tokens(ids)
    x = splice(emb, torch.tensor([p.user_pos]), torch.tensor([p.item_pos]), ut, it)
    changed = (x != emb).any(-1)[0].nonzero().flatten().tolist()
    print(f"\n7. the splice (sasrecllm.splice): token embeddings {tuple(emb.shape)}; positions rewritten: "
          f"{changed} (the slots, and nothing else)")

    h = model.llm(inputs_embeds=x, attention_mask=torch.ones_like(ids))
    z = model.llm.token_logits(h[:, -1], model.answer_ids)[0]
    s = float(z[0] - z[1])
    print(f"\n8. the LLM (llama.Llama, {model.llm.cfg.num_hidden_layers} layers): hidden {tuple(h.shape)}; at the last "
          f"position z_Yes = {float(z[0]):+.4f} (id {model.answer_ids[0]}), z_No = {float(z[1]):+.4f} "
          f"(id {model.answer_ids[1]})")
    print(f"    score s = z_Yes - z_No = {s:+.6f}; p(like) = sigmoid(s) = {1 / (1 + np.exp(-s)):.4f}; "
          f"label {ds.label[row]}")

    calls = []
    sys.setprofile(lambda frame, event, arg: calls.append(frame.f_code) if event == "call" else None)
    try:  # the training path, from the data files to the score, profiled
        ds2 = data.load(a.data, a.data_dir, a.split, a.reviews, a.meta)  # (full_data's call: walk.py's own)
        prompts = {row: data.encode_prompt(data.prompt(ds2, row, True, a.template), tok, a.proj_token_num)}
        b = data.prompt_batch(ds2, prompts, [row], a.maxlen)
        s_train = float(model(**b.inputs)[0])
    finally:
        sys.setprofile(None)
    here = os.path.dirname(os.path.abspath(__file__))
    ours = {(os.path.relpath(f.co_filename, here), f.co_qualname) for f in calls
            if f.co_filename.startswith(here + os.sep) and "<" not in f.co_qualname}
    funcs = {(f, q) for f, q in ours if os.sep not in f}  # the lesson's files
    tools = sorted(ours - funcs)                           # the machinery it calls (tools/: reading the files)
    files = sorted({f for f, _ in funcs})
    print(f"\n9. the training path (data.prompt_batch, then model(**batch.inputs)): s = {s_train:+.6f}; "
          f"the walk above gave {s:+.6f} (difference {abs(s - s_train):.1e})")
    print(f"    that path, TSV row to score, called {len(funcs)} functions of the lesson in {len(files)} files "
          f"({', '.join(files)}), and {len(tools)} of tools/ ({', '.join(sorted({f for f, _ in tools}))})")
    if args.verbose:
        print("    " + "\n    ".join(f"{f}: {q}" for f, q in sorted(funcs) + tools))
    return dict(row=row, score=s, score_train=s_train, functions=len(funcs), files=files, tools=len(tools))


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--data", default="ml1m")
    ap.add_argument("--data-dir", type=runs.path, help="data root (default: $SASRECLLM_DATA, else data/)")
    ap.add_argument("--llm", default="tiny", type=runs.path, help="without a trained run: the backbone (HF dir or 'tiny')")
    ap.add_argument("--runs", default="runs", type=runs.path, help="where runs/joint and the tiny backbone live")
    ap.add_argument("--run", type=runs.path, help="a joint run directory (default: RUNS/joint if it exists)")
    ap.add_argument("--row", type=runs.non_negative, default=None, help="the data row (default: the first test row)")
    ap.add_argument("--verbose", action="store_true", help="list the functions on the training path")
    args = ap.parse_args(argv)
    best = os.path.join(args.run or os.path.join(args.runs, "joint"), "best.pt")
    unread = ["data", "llm"] * os.path.exists(best) + ["runs"] * bool(args.run)  # (a trained run brings its own)
    if given := [f"--{k}" for k in unread if getattr(args, k) != ap.get_default(k)]:
        ap.error(f"{', '.join(given)}: not read with the trained run {os.path.dirname(best)}")
    print(runs.numerics(runs.peek_args(best).get("dtype", "float32")))
    walk(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
