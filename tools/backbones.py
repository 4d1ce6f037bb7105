"""Backbones with random weights in the real Hugging Face layout, and a greedy-decoding check.
Machinery, not the lesson: the tests, the bench and `--llm tiny` need checkpoints that llama.load
reads exactly as it reads TinyLlama's, whose weights cannot be had here.

    python -m tools.backbones --decode DIR --prompt "Is the sky blue?"   # greedy, no KV cache
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

from llama import Llama, LlamaConfig, load, load_tokenizer
from tools.runs import cli, positive

# TinyLlama-1.1B's config.json (see ../shared/models/README.md): LlamaConfig's defaults are its values.
TINYLLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", **asdict(LlamaConfig()))
TINY_TEXTS = ["Given a user who has watched the following movies: Toy Story (1995), Heat (1995), Jumanji (1995). "
              "Will the user enjoy the movie Casino (1995)? Answer Yes or No.",
              "The user has read the following books. Will the user like the target book? Yes or No.",
              "Answer: Yes", "Answer: No", "<UserID> <TargetItemID> user item movie book title history"]


def random_state(cfg: LlamaConfig, dtype=torch.float32, device="cpu", seed=0) -> dict:
    """A state dict for Llama(cfg) with HF's init (normal, std cfg.initializer_range; norms 1), made on
    `device` in `dtype` directly (1.1 B never pass through fp32), a tied lm_head left out as HF does."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Llama(cfg).state_dict().items()}
    if cfg.tie_word_embeddings:
        shapes.pop("lm_head.weight")
    g = torch.Generator(device).manual_seed(seed)
    return {k: torch.ones(shape, dtype=dtype, device=device) if k.endswith("norm.weight") else
            torch.empty(shape, dtype=dtype, device=device).normal_(0.0, cfg.initializer_range, generator=g)
            for k, shape in shapes.items()}


def config_json(cfg: LlamaConfig) -> dict:
    """config.json for cfg: TinyLlama's keys in its order (also readable by transformers), cfg's values."""
    return {**TINYLLAMA, **asdict(cfg)}


def write_random(out_dir, cfg: LlamaConfig, tokenizer_model, dtype=torch.float32, seed=0):
    """config.json + model.safetensors + tokenizer.model, random weights made in `dtype` (in RAM once)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(random_state(cfg, dtype, "cpu", seed), out_dir / "model.safetensors", metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config_json(cfg), indent=2) + "\n")
    if Path(tokenizer_model).resolve() != (out_dir / "tokenizer.model").resolve():
        shutil.copyfile(tokenizer_model, out_dir / "tokenizer.model")
    return out_dir


def make_tiny(out_dir, texts=None, tokenizer_model=None, seed=0):
    """The embedded tiny backbone (`--llm tiny`): a 2-layer Llama with GQA (hidden 64, 4 query heads
    over 2 kv heads) and RANDOM weights. The tokenizer: tokenizer_model, else a BPE sentencepiece model
    trained on `texts` (Llama's special ids, byte fallback, "Yes" / "No" one piece each). Init std
    1/sqrt(64), the fan-in scale: with HF's 0.02 every attention logit is ~0.03 here, so attention is
    near uniform and the spliced tokens reach the answer at ~1/170 (README, init-scale ablation)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_model is None:
        tokenizer_model, buf = out_dir / "tokenizer.model", io.BytesIO()
        lines = list(texts or []) + TINY_TEXTS + ["Yes", "No"] * 500  # so many that BPE learns them whole
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=1000,
                                       model_type="bpe", byte_fallback=True, hard_vocab_limit=False,
                                       num_threads=1, minloglevel=2)
        tokenizer_model.write_bytes(buf.getvalue())
    tok = load_tokenizer(tokenizer_model)  # a missing or garbage file: one error naming it
    tok.yes_id, tok.no_id  # raise now if either is not a single piece
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=172,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      rms_norm_eps=1e-5, max_position_embeddings=2048, torch_dtype="float32",
                      bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, initializer_range=64 ** -0.5)
    return write_random(out_dir, cfg, tokenizer_model, torch.float32, seed)


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decode", metavar="DIR", required=True, help="greedy-decode --prompt with the checkpoint in DIR")
    p.add_argument("--prompt", default="Is the sky blue? Answer Yes or No.")
    p.add_argument("--max-new-tokens", type=positive, default=8)
    args = p.parse_args(argv)
    model, tok = load(args.decode)
    ids, new = tok.encode(args.prompt, bos=True), []
    with torch.no_grad():
        h = model(input_ids=torch.tensor([ids]))[:, -1]  # (1, D)
        yes, no = model.token_logits(h, [tok.yes_id, tok.no_id])[0].tolist()
        while len(new) < args.max_new_tokens:  # greedy, without a KV cache: each step re-runs it all
            nxt = int(model.logits(model(input_ids=torch.tensor([ids + new]))[0, -1]).argmax())
            if nxt == tok.eos_id:
                break
            new.append(nxt)
    print(json.dumps({"prompt_tokens": len(ids), "new_ids": new, "text": tok.decode(new),
                      "yes_minus_no": round(yes - no, 6)}))


if __name__ == "__main__":
    sys.exit(main())
