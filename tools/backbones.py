"""Backbones with random weights in the real Hugging Face layout, and a greedy-decoding check.

Machinery, not the lesson: the tests, the bench and `--llm tiny` need checkpoints that the real
loader (llama.load) reads exactly as it reads TinyLlama's, and TinyLlama's weights cannot be had
here. Nothing in this file is part of the paper's model.

    python -m tools.backbones --write-tiny DIR [--tokenizer tokenizer.model]       # the tiny backbone
    python -m tools.backbones --write-tinyllama DIR --tokenizer tokenizer.model    # TinyLlama's shape, 2.2 GB
    python -m tools.backbones --decode DIR --prompt "Is the sky blue?"             # greedy, no KV cache
"""
import argparse
import io
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import save_file

from llama import DTYPES, Llama, LlamaConfig, load
from llama import Tokenizer, load_tokenizer
from tools.runs import cli

# TinyLlama-1.1B's config.json, the fields that matter (see ../shared/models/README.md).
TINYLLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                 hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                 max_position_embeddings=2048, rms_norm_eps=1e-05, rope_theta=10000.0,
                 tie_word_embeddings=False, torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)



TINY_TEXTS = [
    "Given a user who has watched the following movies: Toy Story (1995), Heat (1995), "
    "Jumanji (1995). Will the user enjoy the movie Casino (1995)? Answer Yes or No.",
    "The user has read the following books. Will the user like the target book? Yes or No.",
    "Answer: Yes", "Answer: No", "<UserID> <TargetItemID> user item movie book title history",
]


def train_tokenizer(texts, out_path, vocab_size=1000):
    """A small BPE sentencepiece model with Llama's special ids (unk 0, bos 1, eos 2), byte fallback
    for unseen characters, and "Yes" / "No" as single pieces (checked)."""
    # Many copies of the two answer words make BPE learn them as whole pieces.
    lines = list(texts) + ["Yes", "No"] * 500
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf,
                                   vocab_size=vocab_size, model_type="bpe", byte_fallback=True,
                                   hard_vocab_limit=False, num_threads=1, minloglevel=2)
    Path(out_path).write_bytes(buf.getvalue())
    tok = Tokenizer(out_path)
    tok.yes_id, tok.no_id  # raise now if either is not a single piece
    return tok


def random_state(cfg: LlamaConfig, dtype=torch.float32, device="cpu", seed=0) -> dict:
    """A state dict for Llama(cfg) with HF's init (normal with std cfg.initializer_range, norms 1),
    each tensor made on `device` in `dtype` directly, so a 1.1 B model never passes through the
    CPU or fp32. A tied lm_head is left out, as HF's checkpoints leave it out."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Llama(cfg).state_dict().items()}
    if cfg.tie_word_embeddings:
        shapes.pop("lm_head.weight")
    g = torch.Generator(device).manual_seed(seed)
    return {k: torch.ones(shape, dtype=dtype, device=device) if k.endswith("norm.weight") else
            torch.empty(shape, dtype=dtype, device=device).normal_(0.0, cfg.initializer_range, generator=g)
            for k, shape in shapes.items()}


def config_json(cfg: LlamaConfig) -> dict:
    """config.json for cfg, in TinyLlama's spelling (also readable by transformers)."""
    return dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", **asdict(cfg))


def write_random(out_dir, cfg: LlamaConfig, tokenizer_model, dtype=torch.float32, seed=0):
    """config.json + model.safetensors + tokenizer.model with random weights (random_state), made
    in `dtype`, so a 2.2 GB model needs ~2.2 GB RAM."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(random_state(cfg, dtype, "cpu", seed), out_dir / "model.safetensors", metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config_json(cfg), indent=2) + "\n")
    if Path(tokenizer_model).resolve() != (out_dir / "tokenizer.model").resolve():
        shutil.copyfile(tokenizer_model, out_dir / "tokenizer.model")
    return out_dir


def make_tiny(out_dir, texts=None, tokenizer_model=None, seed=0):
    """The embedded tiny backbone (`--llm tiny`): a 2-layer Llama with GQA (hidden 64, 4 query heads
    over 2 kv heads) in the real layout, so the same loader runs.

    Its weights are RANDOM. It checks the plumbing and trains on a laptop; it knows nothing about
    movies or books and its Yes/No answers mean nothing until fine-tuned (and little after).
    The tokenizer is the real Llama-2 one when `tokenizer_model` is given, otherwise a small
    sentencepiece model trained here on `texts` (e.g. the data set's titles and prompts).

    Init scale: std 1/sqrt(hidden) = 0.125, the fan-in scale. HF's fixed 0.02 is about
    1/sqrt(hidden) for TinyLlama's 2048 but nearly zero at 64: every attention logit is then
    ~0.03, each position attends almost uniformly over the ~170 prompt tokens, and the spliced
    collaborative tokens reach the answer position at ~1/170 of their strength (README, the
    init-scale ablation)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_model is None:
        tok = train_tokenizer(list(texts or []) + TINY_TEXTS, out_dir / "tokenizer.model")
        tokenizer_model = out_dir / "tokenizer.model"
    else:
        tok = load_tokenizer(tokenizer_model)  # a missing or garbage file: one error naming it
    hidden = 64
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=hidden, intermediate_size=172,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      rms_norm_eps=1e-5, max_position_embeddings=2048, torch_dtype="float32",
                      bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, initializer_range=hidden ** -0.5)
    write_random(out_dir, cfg, tokenizer_model, torch.float32, seed)
    return out_dir


def make_tinyllama_shape(out_dir, tokenizer_model, seed=0):
    """Random weights at TinyLlama-1.1B's exact shape and config.json (2.2 GB of bf16)."""
    return write_random(out_dir, LlamaConfig.from_dict(TINYLLAMA), tokenizer_model, torch.bfloat16, seed)



@torch.no_grad()
def greedy(model, ids, max_new_tokens, eos_id):
    """Greedy decoding without a KV cache: each step re-runs the whole sequence."""
    new = []
    for _ in range(max_new_tokens):
        x = torch.tensor([ids + new], device=model.lm_head.weight.device)  # (1, T)
        nxt = int(model.logits(model(input_ids=x)[0, -1]).argmax())
        if nxt == eos_id:
            break
        new.append(nxt)
    return new



@cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write-tiny", metavar="DIR", help="write the embedded tiny backbone")
    p.add_argument("--write-tinyllama", metavar="DIR", help="write a random TinyLlama-shape checkpoint")
    p.add_argument("--tokenizer", help="tokenizer.model to copy into a written checkpoint")
    p.add_argument("--decode", metavar="DIR", help="greedy-decode --prompt with the checkpoint in DIR")
    p.add_argument("--prompt", default="Is the sky blue? Answer Yes or No.")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    args = p.parse_args(argv)
    if args.write_tinyllama and not args.tokenizer:
        p.error("--write-tinyllama needs --tokenizer (the Llama-2 tokenizer.model)")
    if args.write_tiny:
        print(make_tiny(args.write_tiny, tokenizer_model=args.tokenizer))
    elif args.write_tinyllama:
        print(make_tinyllama_shape(args.write_tinyllama, args.tokenizer))
    elif args.decode:
        model, tok = load(args.decode, DTYPES[args.dtype])
        ids = tok.encode(args.prompt, bos=True)
        with torch.no_grad():
            h = model(input_ids=torch.tensor([ids]))[:, -1]  # (1, D)
            yes, no = model.token_logits(h, [tok.yes_id, tok.no_id])[0].tolist()
        new = greedy(model, ids, args.max_new_tokens, tok.eos_id)
        print(json.dumps({"prompt_tokens": len(ids), "new_ids": new, "text": tok.decode(new),
                          "yes_minus_no": round(yes - no, 6)}))
    else:
        p.error("give --write-tiny, --write-tinyllama or --decode")
    return 0


if __name__ == "__main__":
    sys.exit(main())
