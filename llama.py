"""A hand-written Llama (TinyLlama-1.1B and friends) that loads Hugging Face checkpoints as they are.

SASRecLLM (the paper this repository follows, Section 3.2) fine-tunes TinyLlama-1.1B with LoRA and reads the answer
from two logits: "Yes" and "No" at the last prompt position. This file is that backbone, from leaves to root:

    RMSNorm -> decoder Block (grouped-query attention with RoPE, SwiGLU MLP) -> Llama -> loading

References: Touvron et al. 2023, "Llama 2" (architecture); Su et al. 2021, "RoFormer" (RoPE, here in the rotate-half
layout of HF transformers, so HF q/k weights load without any permutation); Ainslie et al. 2023, "GQA" (TinyLlama:
32 query heads share 4 key/value heads). Module names copy HF's (`model.layers.N.self_attn.q_proj` ...), so
`model.safetensors` keys load with no mapping table, and tests/test_llama.py checks the logits against transformers.
The sentencepiece tokenizer is here, byte-level BPE in bpe.py; random checkpoints, in tools/backbones.py.

Shape letters: B batch, T sequence, D hidden size, nh query heads, nkv key/value heads, hs head size, V vocabulary.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open

from bpe import AnswerIds, BPETokenizer
from tools import limits, sources
from tools.limits import CheckpointError  # a checkpoint that cannot be loaded: one line naming the file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------------------------
# Config

@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_hidden_layers: int = 22
    num_attention_heads: int = 32
    num_key_value_heads: int = 4
    head_dim: int = 0                  # 0 (or null): hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    torch_dtype: str = "bfloat16"      # the dtype the weights were saved in
    bos_token_id: int = 1
    eos_token_id: int = 2
    initializer_range: float = 0.02    # std of random weights (write_random); unused when loading

    def __post_init__(self):
        limits.check_config(self)  # a value of the wrong kind or size fails here, not mid-allocation or mid-forward
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        """Read an HF config.json dict. Both spellings are accepted: TinyLlama's (`rope_theta`,
        `torch_dtype` at the top level) and transformers>=5's (`rope_parameters`, `dtype`,
        `head_dim`). Anything this file does not implement is refused, never silently ignored."""
        if d.get("model_type", "llama") != "llama":
            raise ValueError(f"model_type={d['model_type']!r}: only 'llama' is implemented")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={d['hidden_act']!r}: only 'silu' (SwiGLU) is implemented")
        if d.get("transformers_weights"):  # (HF loads the file it names; we would read model.safetensors)
            raise ValueError(f"transformers_weights={d['transformers_weights']!r:.40}: another weights file is not "
                             "implemented")
        if d.get("quantization_config"):  # (HF would quantize the weights, or expect them quantized: other scores)
            raise ValueError(f"quantization_config={d['quantization_config']!r:.60}: quantized weights are not "
                             "implemented; give a full-precision checkpoint")
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise ValueError("attention_bias/mlp_bias=true: biases in the projections are not implemented")
        if d.get("attention_dropout"):  # (HF drops attention weights while training: the text stage would differ)
            raise ValueError(f"attention_dropout={d['attention_dropout']!r:.20}: dropout in attention is not implemented")
        rope, scaling = d.get("rope_parameters") or {}, d.get("rope_scaling")
        if scaling or rope.get("rope_type", rope.get("type", "default")) != "default":  # ("type": the older name)
            raise ValueError(f"rope scaling ({scaling or rope}) is not implemented; only plain RoPE is")
        theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
        if "rope_theta" in d and "rope_theta" in rope and d["rope_theta"] != rope["rope_theta"]:  # (HF reads the latter)
            raise ValueError(f"rope_theta {d['rope_theta']!r:.40} and rope_parameters' {rope['rope_theta']!r:.40} "
                             "differ; expected one value")
        eos = d.get("eos_token_id", 2)  # HF allows a list of ids; decoding stops at the first
        kv = d.get("num_key_value_heads")
        return cls(
            vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"], num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d["num_attention_heads"] if kv is None else kv, head_dim=d.get("head_dim") or 0,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=theta,
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            torch_dtype=d.get("dtype") or d.get("torch_dtype") or "float32", bos_token_id=d.get("bos_token_id", 1),
            eos_token_id=eos[0] if isinstance(eos, list) and eos and all(type(i) is int for i in eos) else eos,
            initializer_range=d.get("initializer_range", 0.02))

    @classmethod
    def from_json(cls, path) -> "LlamaConfig":
        d = sources.read_json(path, "a JSON object, an HF-format checkpoint's config.json", obj=True)  # (bounded)
        try:
            return cls.from_dict(d)
        except KeyError as e:
            raise CheckpointError(f"{path}: missing {e.args[0]}; expected an HF Llama config") from None
        except (ValueError, TypeError, AttributeError) as e:  # __post_init__ names the field
            raise CheckpointError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------------------------
# Model, from leaves to root

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Normalise in fp32, then scale and hand on in the weights' dtype: the residual stream x
        # stays fp32 (Llama.forward), the matmuls that read the normalised h run in bf16 if the weights are.
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(self.weight.dtype)


def attention(q, k, v, mask):
    """softmax(q k^T / sqrt(hs), masked) v; q, k, v (B, nh, T, hs); mask (B, 1, T, T) bool (True: attend) or None."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled():
        return attention_written_out(q, k, v, mask)
    # no mask (no padding): the plain causal kernel (flash attention on GPU)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)


def attention_written_out(q, k, v, mask):
    """The same as SDPA, as two matmuls and a softmax. Training in bf16 on the CPU takes this path: autograd through
    these AMX matmuls runs faster than SDPA's flash-attention backward there (results/README.md, the CPU bench).
    Scores are rounded to bf16 before the softmax, as in HF's eager attention; the softmax itself runs in fp32."""
    if mask is None:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    s = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)           # (B, nh, T, T); scale the smaller side
    s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype) @ v


class Block(nn.Module):
    """One decoder layer, read in one place: x + Attention(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        D, H, eps = cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps
        self.nh, self.nkv, self.hs = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q, kv = self.nh * self.hs, self.nkv * self.hs
        # The sub-layers' weights, in ModuleDicts only so that names read `self_attn.q_proj` as in HF's checkpoints
        self.input_layernorm = RMSNorm(D, eps)
        self.self_attn = nn.ModuleDict(dict(q_proj=nn.Linear(D, q, bias=False), k_proj=nn.Linear(D, kv, bias=False),
                                            v_proj=nn.Linear(D, kv, bias=False), o_proj=nn.Linear(q, D, bias=False)))
        self.post_attention_layernorm = RMSNorm(D, eps)
        self.mlp = nn.ModuleDict(dict(gate_proj=nn.Linear(D, H, bias=False), up_proj=nn.Linear(D, H, bias=False),
                                      down_proj=nn.Linear(H, D, bias=False)))

    def forward(self, x, cos, sin, mask):
        # x: (B, T, D); cos, sin: (B, 1, T, hs); mask: (B, 1, T, T) bool, or None for no padding
        a, m, nh, nkv, hs = self.self_attn, self.mlp, self.nh, self.nkv, self.hs
        B, T, _ = x.shape
        h = self.input_layernorm(x)
        q = a.q_proj(h).view(B, T, nh, hs).transpose(1, 2)    # (B, nh, T, hs)
        k = a.k_proj(h).view(B, T, nkv, hs).transpose(1, 2)   # (B, nkv, T, hs)
        v = a.v_proj(h).view(B, T, nkv, hs).transpose(1, 2)   # (B, nkv, T, hs)
        # RoPE, rotate-half: dimension i pairs with i + hs/2 (HF's layout, not Meta's 2i, 2i+1),
        # so that each pair turns by the angle of its frequency at the token's position.
        (q1, q2), (k1, k2) = q.chunk(2, dim=-1), k.chunk(2, dim=-1)
        q = q * cos + torch.cat((-q2, q1), dim=-1) * sin
        k = k * cos + torch.cat((-k2, k1), dim=-1) * sin
        if nkv != nh:  # grouped-query attention: each kv head serves nh/nkv query heads
            k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        y = attention(q, k, v, mask)                                 # (B, nh, T, hs)
        x = x + a.o_proj(y.transpose(1, 2).reshape(B, T, nh * hs))   # (B, T, D)
        h = self.post_attention_layernorm(x)
        return x + m.down_proj(F.silu(m.gate_proj(h)) * m.up_proj(h))  # SwiGLU


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.model = nn.ModuleDict(dict(  # the decoder stack; a ModuleDict so that names read `model.layers.N...`
            embed_tokens=nn.Embedding(cfg.vocab_size, cfg.hidden_size),
            layers=nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers)),
            norm=RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)))
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        """Final hidden states (B, T, D), final norm applied. Give input_ids (B, T) or inputs_embeds
        (B, T, D) (how SASRecLLM splices its projected tokens in). attention_mask (B, T) marks
        real tokens with 1 and LEFT padding with 0; None means no padding."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        # The residual stream in fp32 whatever the weights: with bf16 weights, rounding x to bf16 after
        # every layer compounds over the stack (bf16 against fp32: results/README.md).
        dtype, x = x.dtype, x.float()
        B, T, _ = x.shape
        if attention_mask is None:
            positions, mask = torch.arange(T, device=x.device).expand(B, T), None
        else:
            # Left padding: the first real token is position 0 whatever the padding before it.
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # query i sees keys <= i
            mask = causal[None] & attention_mask.bool()[:, None, :]              # (B, T, T), no pad keys
            # A padding query would then see no key at all and softmax would give NaN (which leaks
            # into gradients). Let every query see itself: real queries already do, pad outputs are ignored.
            mask = (mask | torch.eye(T, dtype=torch.bool, device=x.device))[:, None]  # (B, 1, T, T)
        # RoPE tables at those positions: angle(t, i) = t * theta^(-2i/hs), both halves alike.
        hs = self.cfg.head_dim
        inv_freq = 1.0 / (self.cfg.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.float, device=x.device) / hs))
        angles = positions[..., None].float() * inv_freq          # (B, T, hs/2)
        angles = torch.cat((angles, angles), dim=-1)              # (B, T, hs)
        cos, sin = angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]  # (B, 1, T, hs): all heads
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask)
        return self.model.norm(x)

    def token_logits(self, hidden_last, token_ids):
        """Logits of a few chosen tokens only: (B, D) -> (B, len(token_ids)), using just those rows
        of lm_head instead of the whole (V, D) matrix (for Yes/No that is 2 rows, not 32000)."""
        rows = self.lm_head.weight[torch.as_tensor(token_ids, device=hidden_last.device)]  # (k, D)
        # In fp32 even under autocast: k rows cost nothing, and bf16 logits near 1-10 come in
        # steps of 1/128 to 1/16, coarse for a score that is ranked by AUC.
        with torch.autocast(hidden_last.device.type, enabled=False):
            return hidden_last.float() @ rows.float().T

    def logits(self, hidden):
        """Full-vocabulary logits (..., V); only for decoding."""
        return self.lm_head(hidden)


# ----------------------------------------------------------------------------------------------
# Loading

def weight_files(ckpt_dir) -> list:
    """model.safetensors, or the shards that model.safetensors.index.json names."""
    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir / "adapter_config.json").exists():  # (from_pretrained loads its base and applies it)
        raise CheckpointError(f"{ckpt_dir}: holds adapter_config.json, a LoRA adapter HF would apply over the weights; "
                              "give it as --lora, from a folder of its own")
    index = ckpt_dir / "model.safetensors.index.json"
    if index.exists() and (ckpt_dir / "model.safetensors").exists():  # (HF reads the one file, we read the index)
        raise CheckpointError(f"{ckpt_dir}: both model.safetensors and {index.name}; expected one of them")
    if index.exists():
        try:  # weight_map: key -> shard file
            weight_map = sources.read_json(index, "a JSON object with a weight_map of file names", obj=True)["weight_map"]
            names = sorted(set(weight_map.values()))
            if bad := [n for n in names if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")
                       or "\0" in n]:
                raise CheckpointError(f"{index}: expected a JSON object with a weight_map of file names in its "
                                      f"directory; shard {bad[0]!r} is not one")
            return [ckpt_dir / name for name in names]
        except (KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: expected a JSON object with a weight_map of file names ({e!r})") from None
    if (ckpt_dir / "model.safetensors").exists():
        return [ckpt_dir / "model.safetensors"]
    raise FileNotFoundError(f"{ckpt_dir}: no model.safetensors or model.safetensors.index.json")


def read_weights(files, dtype=None, device="cpu") -> dict:
    """All tensors of the safetensors files, each cast and moved as soon as it is read: one copy of the weights."""
    state = {}  # load_model then refuses a missing, unexpected or mis-shaped key, whichever shard held it
    for path in files:
        try:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    state[key] = f.get_tensor(key).to(device=device, dtype=dtype)
                    limits.check_finite(path, key, state[key])
        except (SafetensorError, FileNotFoundError) as e:  # a truncated file says "incomplete metadata"
            raise CheckpointError(f"{path}: cannot read this safetensors file ({e})") from None
    return state


# Keys that older Llama-2 / Vicuna conversions saved and HF skips on load (modeling_utils ignores
# unexpected keys matching rotary_emb.inv_freq): RoPE's frequencies, which follow from rope_theta.
IGNORED_KEYS = re.compile(r"rotary_emb\.inv_freq$")


def load_model(ckpt_dir, dtype=torch.float32, device="cpu") -> Llama:
    """The Llama in an HF-layout directory (config.json, model.safetensors or shards). It is built on
    the meta device (no memory) and the tensors read from disk become its parameters directly
    (load_state_dict(assign=True)): one copy of the weights, never two."""
    ckpt_dir = Path(ckpt_dir)
    cfg, files = LlamaConfig.from_json(ckpt_dir / "config.json"), weight_files(ckpt_dir)
    # The shapes in the files' headers first: a config.json that the weights contradict is named, not built.
    limits.check_checkpoint(cfg, ckpt_dir / "config.json", files, dtype, device)
    with torch.device("meta"):
        model = Llama(cfg)
    state = read_weights(files, dtype, device)  # fp16, bf16 or fp32 on disk, cast to dtype
    state = {k: v for k, v in state.items() if not IGNORED_KEYS.search(k)}
    if cfg.tie_word_embeddings:  # HF omits lm_head for tied models; the embedding is used
        head = state.pop("lm_head.weight", None)  # (one unlike the embedding: transformers 5 would keep it, 4 tie)
        if head is not None and not torch.equal(head, state.get("model.embed_tokens.weight", head)):
            raise CheckpointError(f"{ckpt_dir}: tie_word_embeddings is true, but lm_head.weight differs from the "
                                  "embedding; set it false to use that lm_head, or drop it")
    expected = {k: v.shape for k, v in model.state_dict().items()
                if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    if missing := sorted(set(expected) - set(state)):
        raise CheckpointError(f"{ckpt_dir}: missing key {missing[0]!r} ({len(missing)} missing in all)")
    if unexpected := sorted(set(state) - set(expected)):
        raise CheckpointError(f"{ckpt_dir}: unexpected key {unexpected[0]!r} ({len(unexpected)} in all)")
    for k, shape in expected.items():
        if state[k].shape != shape:
            raise CheckpointError(f"{ckpt_dir}: key {k!r} has shape {tuple(state[k].shape)}, "
                                  f"config.json implies {tuple(shape)}")
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight  # one Parameter, as before loading
    return model.eval()  # the backbone has no dropout; eval() only states intent


# ----------------------------------------------------------------------------------------------
# Tokenizers: sentencepiece's tokenizer.model (Llama 2, TinyLlama) here, byte-level BPE in bpe.py

class Tokenizer(AnswerIds):
    """A thin sentencepiece wrapper."""

    def __init__(self, path):
        self.path = str(path)
        # From its bytes (a regular file, bounded), not model_file=: a FIFO would block sentencepiece forever.
        # (LoadFromSerializedProto, not model_proto=, which skips an empty file and leaves no model loaded.)
        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(raw := sources.read_bytes(path, "a sentencepiece tokenizer.model"))
        if (kind := limits.sentencepiece_type(raw)) != 2:  # (Llama 2's and TinyLlama's are BPE)
            raise ValueError(f"{path}: a sentencepiece model of type {kind} (1: Unigram), not BPE (2); transformers "
                             "reads it as BPE, sentencepiece as it is: two tokenizations, refused")
        self.bos_id, self.eos_id, self.unk_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()
        self.vocab_size = self.sp.vocab_size()
        if not all(0 <= i < self.vocab_size for i in (self.bos_id, self.eos_id, self.unk_id)):
            # (every prompt starts with BOS, UNK holds the slots, EOS ends a decode: a config.json needs all three)
            raise ValueError(f"{path}: bos id {self.bos_id}, eos id {self.eos_id} or unk id {self.unk_id} is not a "
                             f"token (0..{self.vocab_size - 1})")

    def encode(self, text: str, bos: bool = True, special: bool = True) -> list:
        """special=True (decode.py's prompt): HF reads "<s>" or "</s>" in the text as that token, which
        sentencepiece never does: refused, not spelt out. special=False (a title): plain text, as HF's data path."""
        if special and (hit := next((p for p in self.pieces(sorted({self.bos_id, self.eos_id, self.unk_id} - {-1}))
                                     if p in text), None)):
            raise ValueError(f"{self.path}: the text holds the special token {hit!r}, which HF would read as that "
                             "token and sentencepiece spells out; not supported here")
        ids = self.sp.encode(text)
        return [self.bos_id] + ids if bos else ids

    def decode(self, ids) -> str:
        return self.sp.decode(list(ids))

    def pieces(self, ids) -> list:
        return [self.sp.id_to_piece(int(i)) for i in ids]


def load_tokenizer(path):
    """The tokenizer of a checkpoint directory: Tokenizer (sentencepiece; Llama 2, TinyLlama) when it
    holds tokenizer.model, else BPETokenizer (byte-level BPE; SmolLM2) when it holds tokenizer.json.
    tokenizer.model wins because Llama-2 checkpoints ship both, and their tokenizer.json is not
    byte-level. path may also be one of the two files itself."""
    path, both = Path(path), False
    if not path.is_file():
        if not (path / "tokenizer.model").exists() and not (path / "tokenizer.json").exists():
            raise FileNotFoundError(f"{path}: no tokenizer.model (sentencepiece) or tokenizer.json (byte-level BPE)")
        both = (path / "tokenizer.model").exists() and (path / "tokenizer.json").exists()  # (HF reads tokenizer.json)
        path = path / ("tokenizer.json" if both or not (path / "tokenizer.model").exists() else "tokenizer.model")
    bpe = path.suffix == ".json"
    try:
        if both:
            return sentencepiece_beside_json(path.parent)
        return check_named_specials(BPETokenizer(path) if bpe else Tokenizer(path), path.parent)
    except (OSError, RuntimeError, KeyError, TypeError, AttributeError, IndexError, json.JSONDecodeError) as e:
        # the tokenizer classes' own ValueErrors already name the file and pass through
        raise CheckpointError(f"{path}: expected {'an HF tokenizer.json' if bpe else 'a sentencepiece model'} "
                              f"({type(e).__name__}: {e})") from None


def check_named_specials(tok, d):
    """BOS and EOS as d's tokenizer_config.json and special_tokens_map.json (which HF reads last) name them, and
    no token there that the tokenizer lacks, or refused: HF would start every prompt with the token they name, or
    add the token (a new id, matched inside the text). Keys that change how HF splits text are refused too."""
    ids = {p: i for i, p in enumerate(tok.pieces(range(tok.vocab_size)))}
    for f in ("tokenizer_config.json", "special_tokens_map.json"):
        spec = sources.read_json(d / f, f"an HF {f}", obj=True) if (d / f).is_file() else {}
        for key, i in (("bos_token", tok.bos_id), ("eos_token", tok.eos_id)):
            name = v.get("content") if isinstance(v := spec.get(key), dict) else v
            if isinstance(name, str) and (i is None or i < 0 or name != tok.pieces([i])[0]):
                own = tok.pieces([i])[0] if i is not None and i >= 0 else None
                raise CheckpointError(f"{d / f}: {key} {name!r:.40}, but the tokenizer's is {own!r:.40}; expected "
                                      "one BOS and EOS (HF would use the named one)")
        named = [(None, t) for k in ("additional_special_tokens", "extra_special_tokens") for t in spec.get(k) or []]
        decoder = spec.get("added_tokens_decoder") or {}
        named += [(k, t) for k, t in decoder.items()] if isinstance(decoder, dict) else [(None, decoder)]
        for at, t in named:  # (hub files repeat the tokenizer's own added tokens here: those pass)
            c = t.get("content") if isinstance(t, dict) else t
            if not isinstance(c, str) or c not in ids or at is not None and str(ids[c]) != at:
                where = f" at id {at:.12}" if at is not None else ""
                raise CheckpointError(f"{d / f}: names the token {c!r:.40}{where}, which the tokenizer does not hold "
                                      "there; HF would add it (expected none)")
        sp = isinstance(tok, Tokenizer)  # (sentencepiece puts "▁" before the first word: a prefix space)
        if bad := [k for k, v in (("add_prefix_space", sp), ("add_eos_token", False), ("add_bos_token", True))
                   if spec.get(k) is not None and spec.get(k) != v]:
            raise CheckpointError(f"{d / f}: {bad[0]} {spec.get(bad[0])}, which changes how HF splits or frames the "
                                  "text; not supported here (remove it, or use HF)")
    return tok


def sentencepiece_beside_json(path):
    """A directory with both files (as Llama-2's): tokenizer.model, if tokenizer.json holds the same vocabulary
    (HF reads the latter; a byte-level one, or other ids for a piece, would make its Yes and No other tokens)."""
    spec = sources.read_json(path / "tokenizer.json", "an HF tokenizer.json", obj=True)
    if "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")]):
        raise CheckpointError(f"{path}: a sentencepiece tokenizer.model beside a byte-level tokenizer.json, two "
                              "tokenizers; keep the one the checkpoint was trained with")
    tok = load_tokenizer(path / "tokenizer.model")
    vocab = (spec.get("model") or {}).get("vocab")
    vocab = {p[0]: i for i, p in enumerate(vocab) if isinstance(p, list) and p} if isinstance(vocab, list) else vocab
    pieces = {tok.sp.id_to_piece(i): i for i in range(tok.vocab_size)}
    added = [(t.get("content"), t.get("id")) for t in spec.get("added_tokens") or [] if isinstance(t, dict)]
    if vocab != pieces or any(pieces.get(c) != i for c, i in added):
        raise CheckpointError(f"{path}: tokenizer.json's vocabulary or added tokens differ from tokenizer.model's; "
                              "two tokenizers (HF reads tokenizer.json): keep the one the checkpoint was trained with")
    return tok


def load(ckpt_dir, dtype=torch.float32, device="cpu"):
    """(Llama, tokenizer) from a checkpoint directory. A tokenizer id past config.json's vocab_size
    would index past the embedding table mid-forward; it is refused here, before any weight is read.
    (A vocab_size larger than the tokenizer's is normal: tables are often padded.)"""
    if not Path(ckpt_dir).is_dir():
        raise FileNotFoundError(f"{ckpt_dir}: no such checkpoint directory; expected config.json, "
                                "model.safetensors (or shards) and tokenizer.model or tokenizer.json")
    tok = load_tokenizer(ckpt_dir)
    n = LlamaConfig.from_json(Path(ckpt_dir) / "config.json").vocab_size
    if tok.vocab_size > n:
        raise CheckpointError(f"{ckpt_dir}: the tokenizer has ids up to {tok.vocab_size - 1}, but config.json's "
                              f"vocab_size is {n}: they do not belong together")
    return load_model(ckpt_dir, dtype, device), tok

