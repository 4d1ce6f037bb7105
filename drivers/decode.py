"""A greedy-decoding check of a checkpoint (llama.py's forward, no KV cache): does a real backbone, or
one of tools/backbones.py's random ones, answer as a language model? A driver beside the lesson.

    python -m drivers.decode DIR --prompt "Is the sky blue?"
"""
import argparse
import json
import os
import sys

import torch

if not __package__:  # run as a file (python drivers/x.py): the lesson's modules are one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))  # (as python: links resolved)
from llama import load
from tools.runs import cli, number, path, utf8


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("ckpt", metavar="DIR", type=path, help="greedy-decode --prompt with the checkpoint in DIR")
    p.add_argument("--prompt", default="Is the sky blue? Answer Yes or No.", type=utf8)
    p.add_argument("--max-new-tokens", type=number(1, 4096, int), default=8)
    args = p.parse_args(argv)
    model, tok = load(args.ckpt)
    ids, new = tok.encode(args.prompt, bos=True), []
    if len(ids) + args.max_new_tokens > model.cfg.max_position_embeddings:
        raise ValueError(f"{len(ids)} prompt tokens and --max-new-tokens {args.max_new_tokens}: more than the "
                         f"{model.cfg.max_position_embeddings} positions of {args.ckpt}")
    with torch.no_grad():
        h = model(input_ids=torch.tensor([ids]))[:, -1]  # (1, D)
        yes, no = model.token_logits(h, [tok.yes_id, tok.no_id])[0].tolist()
        while len(new) < args.max_new_tokens:  # greedy, without a KV cache: each step re-runs it all
            # the tokenizer's ids only: a table padded past its vocabulary (allowed) has rows no token names
            nxt = int(model.logits(model(input_ids=torch.tensor([ids + new]))[0, -1])[:tok.vocab_size].argmax())
            if nxt == tok.eos_id:
                break
            new.append(nxt)
    print(json.dumps({"prompt_tokens": len(ids), "new_ids": new, "text": tok.decode(new),
                      "yes_minus_no": round(yes - no, 6)}))


if __name__ == "__main__":
    sys.exit(main())
