"""Backbones with random weights in the real Hugging Face layout. Machinery, not the lesson: the tests,
the bench and `--llm tiny` need checkpoints that llama.load reads exactly as it reads TinyLlama's, whose
weights cannot be had here. The tensor names and shapes are written here from HF's layout, not taken
from llama.py, so a checkpoint made here tests llama.py's reading of that layout.
"""
import io
import json
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import save_file

from tools.sources import read_bytes

# TinyLlama-1.1B's config.json (see ../shared/models/README.md); llama.LlamaConfig's defaults are its values.
TINYLLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", vocab_size=32000,
                 hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, head_dim=64, rms_norm_eps=1e-05, rope_theta=10000.0,
                 max_position_embeddings=2048, tie_word_embeddings=False, torch_dtype="bfloat16",
                 bos_token_id=1, eos_token_id=2, initializer_range=0.02)
TINY_TEXTS = ["Given a user who has watched the following movies: Toy Story (1995), Heat (1995), Jumanji (1995). "
              "Will the user enjoy the movie Casino (1995)? Answer Yes or No.",
              "The user has read the following books. Will the user like the target book? Yes or No.",
              "Answer: Yes", "Answer: No", "<UserID> <TargetItemID> user item movie book title history"]


def shapes(cfg: dict) -> dict:
    """{HF tensor name: shape} of a Llama of config.json's values cfg, in HF's order; a tied lm_head left out, as HF."""
    D, F, V, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg.get("head_dim")
    q, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = hd or D // q
    block = {"input_layernorm": (D,), "self_attn.q_proj": (q * hd, D), "self_attn.k_proj": (kv * hd, D),
             "self_attn.v_proj": (kv * hd, D), "self_attn.o_proj": (D, q * hd), "post_attention_layernorm": (D,),
             "mlp.gate_proj": (F, D), "mlp.up_proj": (F, D), "mlp.down_proj": (D, F)}
    layers = {f"model.layers.{i}.{k}.weight": s for i in range(cfg["num_hidden_layers"]) for k, s in block.items()}
    out = {"model.embed_tokens.weight": (V, D), **layers, "model.norm.weight": (D,)}
    return out if cfg.get("tie_word_embeddings") else {**out, "lm_head.weight": (V, D)}


def random_state(cfg, dtype=torch.float32, device="cpu", seed=0) -> dict:
    """A state dict for a Llama with config cfg (config.json's dict, or a llama.LlamaConfig) with HF's init (normal,
    std initializer_range; norms 1), made on `device` in `dtype` directly (1.1 B never pass through fp32)."""
    cfg, g = config_json(cfg), torch.Generator(device).manual_seed(seed)
    return {k: torch.ones(shape, dtype=dtype, device=device) if k.endswith("norm.weight") else
            torch.empty(shape, dtype=dtype, device=device).normal_(0.0, cfg["initializer_range"], generator=g)
            for k, shape in shapes(cfg).items()}


def config_json(cfg) -> dict:
    """config.json for cfg (a dict, or a llama.LlamaConfig): TinyLlama's keys in its order, cfg's values."""
    return {**TINYLLAMA, **(asdict(cfg) if is_dataclass(cfg) else cfg)}


def write_random(out_dir, cfg, tokenizer_model, dtype=torch.float32, seed=0):
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
    sp = spm.SentencePieceProcessor()  # (train.py checks a given tokenizer_model first, with llama.load_tokenizer)
    sp.LoadFromSerializedProto(read_bytes(tokenizer_model, "a sentencepiece tokenizer.model"))
    cfg = dict(vocab_size=sp.vocab_size(), hidden_size=64, intermediate_size=172, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, torch_dtype="float32",
               bos_token_id=sp.bos_id(), eos_token_id=sp.eos_id(), initializer_range=64 ** -0.5)
    return write_random(out_dir, cfg, tokenizer_model, torch.float32, seed)
