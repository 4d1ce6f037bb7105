"""A hand-written Llama (TinyLlama-1.1B and friends) that loads Hugging Face checkpoints as they are.

SASRecLLM (the paper this repository follows) fine-tunes TinyLlama-1.1B with LoRA and reads the
answer from two logits: "Yes" and "No" at the last prompt position. This file is that backbone:

    RMSNorm -> grouped-query attention with rotary embeddings -> SwiGLU MLP -> block -> model

References: Touvron et al. 2023, "Llama 2" (architecture); Su et al. 2021, "RoFormer" (RoPE, here
in the rotate-half layout of HF transformers, so HF q/k weights load without any permutation);
Ainslie et al. 2023, "GQA" (TinyLlama: 32 query heads share 4 key/value heads).
Module names copy HF's (`model.layers.N.self_attn.q_proj` ...), so `model.safetensors` keys load
with no mapping table, and tests/test_llama.py checks the logits against transformers.

Two tokenizers, picked by what the checkpoint ships (`load_tokenizer`): sentencepiece's
tokenizer.model (Llama 2, TinyLlama) through a thin wrapper, and byte-level BPE from an HF
tokenizer.json (GPT-2 style; SmolLM2), written out by hand below.

Shape letters: B batch, T sequence, D hidden size, nh query heads, nkv key/value heads,
hs head size, V vocabulary.

CLI sanity check on a downloaded checkpoint (greedy decoding, *no* KV cache: every new token
re-runs the whole sequence, which is slow but simple and enough for a check):
    python llama.py --ckpt DIR --prompt "Is the sky blue? Answer Yes or No." --max-new-tokens 8
Writing checkpoints with random weights in the real layout:
    python llama.py --write-tiny DIR [--tokenizer tokenizer.model]       # the embedded tiny backbone
    python llama.py --write-tinyllama DIR --tokenizer tokenizer.model    # TinyLlama's exact shape, 2.2 GB
"""
import argparse
import io
import json
import os
import re
import shutil
import struct
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded; the message names the file and what was expected."""


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
    head_dim: int = 0                  # 0: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    torch_dtype: str = "bfloat16"      # the dtype the weights were saved in
    bos_token_id: int = 1
    eos_token_id: int = 2
    initializer_range: float = 0.02    # std of random weights (write_random); unused when loading

    def __post_init__(self):
        if self.head_dim == 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        """Read an HF config.json dict. Both spellings are accepted: TinyLlama's (`rope_theta`,
        `torch_dtype` at the top level) and transformers>=5's (`rope_parameters`, `dtype`,
        `head_dim`). Anything this file does not implement is refused, never silently ignored."""
        if d.get("model_type", "llama") != "llama":
            raise ValueError(f"model_type={d['model_type']!r}: only 'llama' is implemented")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={d['hidden_act']!r}: only 'silu' (SwiGLU) is implemented")
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise ValueError("attention_bias/mlp_bias=true: biases in the projections are not implemented")
        rope = d.get("rope_parameters") or {}
        scaling = d.get("rope_scaling")
        if scaling or rope.get("rope_type", "default") != "default":
            raise ValueError(f"rope scaling ({scaling or rope}) is not implemented; only plain RoPE is")
        theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
        eos = d.get("eos_token_id", 2)
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            head_dim=d.get("head_dim") or 0,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            torch_dtype=d.get("dtype") or d.get("torch_dtype") or "float32",
            bos_token_id=d.get("bos_token_id", 1),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            initializer_range=d.get("initializer_range", 0.02),
        )

    @classmethod
    def from_json(cls, path) -> "LlamaConfig":
        """config.json, checked first: a missing field or a wrong type is one error naming the file."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} not found; expected an HF-format checkpoint's config.json") from None
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: expected a JSON object ({e})") from None
        problem = config_problem(d) if isinstance(d, dict) else "expected a JSON object"
        if problem:
            raise CheckpointError(f"{path}: {problem}")
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None

    def to_dict(self) -> dict:
        """config.json in TinyLlama's spelling (also readable by transformers)."""
        return dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                    vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                    intermediate_size=self.intermediate_size, num_hidden_layers=self.num_hidden_layers,
                    num_attention_heads=self.num_attention_heads,
                    num_key_value_heads=self.num_key_value_heads, head_dim=self.head_dim,
                    rms_norm_eps=self.rms_norm_eps, rope_theta=self.rope_theta,
                    max_position_embeddings=self.max_position_embeddings,
                    tie_word_embeddings=self.tie_word_embeddings, torch_dtype=self.torch_dtype,
                    bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
                    initializer_range=self.initializer_range)


def config_problem(d: dict):
    """What is wrong with a config.json's fields (a missing size, a string where HF writes a
    number), or None. from_dict would otherwise fail deep inside the model's constructor."""
    sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in sizes if k not in d]
    if missing:
        return f"missing {', '.join(missing)}; expected an HF Llama config"
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
    is_number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    for k in sizes + ("num_key_value_heads", "head_dim", "max_position_embeddings"):
        if d.get(k) is not None and not (is_int(d[k]) and d[k] >= (0 if k == "head_dim" else 1)):
            return f"{k} is {d[k]!r}; expected a positive integer"
    for k in ("rms_norm_eps", "rope_theta", "initializer_range"):
        if d.get(k) is not None and not (is_number(d[k]) and d[k] > 0):
            return f"{k} is {d[k]!r}; expected a positive number"
    for k in ("bos_token_id", "eos_token_id"):
        v = d.get(k)
        if v is not None and not (is_int(v) or isinstance(v, list) and v and all(map(is_int, v))):
            return f"{k} is {v!r}; expected a token id (or a list of them)"
    if not isinstance(d.get("tie_word_embeddings", False), bool):
        return f"tie_word_embeddings is {d['tie_word_embeddings']!r}; expected true or false"
    if not isinstance(d.get("rope_parameters") or {}, dict) or not isinstance(d.get("rope_scaling") or {}, dict):
        return "rope_parameters / rope_scaling: expected a JSON object"
    return None


# TinyLlama-1.1B's config.json, the fields that matter (see ../shared/models/README.md).
TINYLLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                 hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                 max_position_embeddings=2048, rms_norm_eps=1e-05, rope_theta=10000.0,
                 tie_word_embeddings=False, torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)


# ----------------------------------------------------------------------------------------------
# Model, from leaves to root


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Normalise in fp32 even for bf16 activations, then scale in the input dtype (as HF does).
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    """The attention sub-layer's weights; Block.forward uses them. A module of its own only so
    that parameter names read `self_attn.q_proj` as in HF's checkpoints."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.nh, self.nkv, self.hs = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        D = cfg.hidden_size
        self.q_proj = nn.Linear(D, self.nh * self.hs, bias=False)
        self.k_proj = nn.Linear(D, self.nkv * self.hs, bias=False)
        self.v_proj = nn.Linear(D, self.nkv * self.hs, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hs, D, bias=False)


class MLP(nn.Module):
    """The SwiGLU sub-layer's weights (`mlp.gate_proj` ...); Block.forward uses them."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        D, H = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(D, H, bias=False)
        self.up_proj = nn.Linear(D, H, bias=False)
        self.down_proj = nn.Linear(H, D, bias=False)


class Block(nn.Module):
    """One decoder layer, read in one place: x + Attention(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask):
        # x: (B, T, D); cos, sin: (B, 1, T, hs); mask: (B, 1, T, T) bool, or None for no padding
        a, m = self.self_attn, self.mlp
        B, T, _ = x.shape
        h = self.input_layernorm(x)
        q = a.q_proj(h).view(B, T, a.nh, a.hs).transpose(1, 2)    # (B, nh, T, hs)
        k = a.k_proj(h).view(B, T, a.nkv, a.hs).transpose(1, 2)   # (B, nkv, T, hs)
        v = a.v_proj(h).view(B, T, a.nkv, a.hs).transpose(1, 2)   # (B, nkv, T, hs)
        # RoPE, rotate-half: dimension i pairs with i + hs/2 (HF's layout, not Meta's 2i, 2i+1),
        # so that each pair turns by the angle of its frequency at the token's position.
        (q1, q2), (k1, k2) = q.chunk(2, dim=-1), k.chunk(2, dim=-1)
        q = q * cos + torch.cat((-q2, q1), dim=-1) * sin
        k = k * cos + torch.cat((-k2, k1), dim=-1) * sin
        if a.nkv != a.nh:  # grouped-query attention: each kv head serves nh/nkv query heads
            k, v = k.repeat_interleave(a.nh // a.nkv, dim=1), v.repeat_interleave(a.nh // a.nkv, dim=1)
        if mask is None:  # no padding: the plain causal kernel (flash attention on GPU)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, T, hs)
        x = x + a.o_proj(y.transpose(1, 2).reshape(B, T, a.nh * a.hs))   # (B, T, D)
        h = self.post_attention_layernorm(x)
        return x + m.down_proj(F.silu(m.gate_proj(h)) * m.up_proj(h))  # SwiGLU


class LlamaModel(nn.Module):
    """The decoder stack; its own class only so that parameter names read `model.layers.N...`."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.model = LlamaModel(cfg)
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
        B, T, _ = x.shape
        if attention_mask is None:
            positions = torch.arange(T, device=x.device).expand(B, T)
            mask = None
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
        cos, sin = angles.cos().to(x.dtype)[:, None], angles.sin().to(x.dtype)[:, None]  # (B, 1, T, hs): all heads
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
# Tokenizer


class AnswerIds:
    """yes_id and no_id, the two tokens the score reads, for a tokenizer with encode(text, bos),
    pieces(ids) and path. The ids come from the tokenizer's own files, never a constant; ANSWERS are
    the answer words as the tokenizer sees them after "#Answer:"."""
    ANSWERS = ("Yes", "No")

    def word_id(self, word: str) -> int:
        """The id of a string that must be a single token, e.g. "Yes" -> 3869 ("▁Yes") for Llama 2."""
        ids = self.encode(word, bos=False)
        if len(ids) != 1:
            raise ValueError(f"{word!r} is not a single token in {self.path}: {self.pieces(ids)}")
        return ids[0]

    @property
    def yes_id(self) -> int:
        return self.word_id(self.ANSWERS[0])

    @property
    def no_id(self) -> int:
        return self.word_id(self.ANSWERS[1])


class Tokenizer(AnswerIds):
    """A thin sentencepiece wrapper."""

    def __init__(self, path):
        self.path = str(path)
        self.sp = spm.SentencePieceProcessor(model_file=self.path)
        self.bos_id, self.eos_id, self.unk_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()
        self.vocab_size = self.sp.vocab_size()

    def encode(self, text: str, bos: bool = True) -> list:
        ids = self.sp.encode(text)
        return [self.bos_id] + ids if bos else ids

    def decode(self, ids) -> str:
        return self.sp.decode(list(ids))

    def pieces(self, ids) -> list:
        return [self.sp.id_to_piece(int(i)) for i in ids]


# Byte-level BPE (GPT-2, SmolLM2): text -> UTF-8 bytes -> printable stand-in characters, split
# into words -> merges by rank inside each word. No string is unknown: every byte is a token.


def bytes_to_unicode() -> dict:
    """GPT-2's reversible byte -> character map. Printable Latin-1 bytes stand for themselves; the
    other 68 (space, controls...) move to chr(256 + k) in byte order, so " " is "Ġ" and "\n" is
    "Ċ". Vocabulary entries and merges are written in these characters."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)}
    out, k = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + k)
            k += 1
    return out


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


class CharClasses(dict):
    r"""ord(c) -> "L" letter (\p{L}), "N" number (\p{N}), "S" white space (\s) or "P" anything else:
    the classes GPT-2's split pattern tests. A str.translate table that fills itself in. Code points
    newer than Python's Unicode database (unicodedata.unidata_version) count as "P"."""

    def __missing__(self, o):
        c = chr(o)
        cat = unicodedata.category(c)[0]
        if cat in "LN":
            kind = cat
        # \s is Unicode's White_Space in the regex engine HF uses; str.isspace also counts the
        # four ASCII separators 0x1c-0x1f, which are not white space there.
        elif c.isspace() and not "\x1c" <= c <= "\x1f":
            kind = "S"
        else:
            kind = "P"
        self[o] = kind
        return kind


CHAR_CLASSES = CharClasses()
RUN = re.compile("L+|N+|S+|P+")  # a run of one class, matched on the string of classes


def gpt2_split(text: str, kinds: str) -> list:
    r"""GPT-2's pre-tokenization, which HF tokenizers' ByteLevel runs as the regex
        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    Python's re has no \p{L} or \p{N}, so this scans by hand: kinds[i] is the class of text[i]
    (CharClasses), and each word is the first alternative that matches where the last one ended."""
    words, i, n = [], 0, len(text)
    while i < n:
        if text[i] == "'" and text[i + 1:i + 2] in ("s", "t", "m", "d"):   # 's 't 'm 'd (lower case only)
            j = i + 2
        elif text[i] == "'" and text[i + 1:i + 3] in ("re", "ve", "ll"):  # 're 've 'll
            j = i + 3
        elif kinds[i] != "S":                                               # a run of L, N or P
            j = RUN.match(kinds, i).end()
        elif text[i] == " " and i + 1 < n and kinds[i + 1] != "S":        # one space leads the run after it
            j = RUN.match(kinds, i + 1).end()
        else:                                                               # \s+(?!\S)|\s+
            j = RUN.match(kinds, i).end()
            if j < n and j - i > 1:
                j -= 1  # the last white space char stays behind to lead the word that follows
        words.append(text[i:j])
        i = j
    return words


UNICODE_FORMS = ("NFC", "NFD", "NFKC", "NFKD")  # the tokenizer.json normalizers implemented here


class BPETokenizer(AnswerIds):
    """Byte-level BPE from an HF tokenizer.json (GPT-2, SmolLM2), with Tokenizer's interface.

    Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2, sec. 2.2):
    BPE runs on UTF-8 bytes, so no text is ever unknown, and only inside the words of a
    pre-tokenizer, so no merge crosses a letter / number / punctuation / space boundary.

    tokenizer.json, the fields used: model.vocab (token -> id); model.merges, highest priority
    first, each "a b" or ["a", "b"]; added_tokens, matched whole in the raw text before anything
    else, as HF does; pre_tokenizer, ByteLevel alone or after Digits(individual_digits) (the hub's
    SmolLM2 file has both). Options this class does not implement are refused, not ignored.
    bos/eos/unk are named by tokenizer_config.json beside it.

    BOS: SmolLM2's own post_processor adds no special token, so encode(text, bos=False) equals HF's
    encode(text).ids. encode(text, bos=True) still prepends bos_id, the same contract as Tokenizer
    (data.encode_prompt relies on it). SmolLM2's bos is <|im_start|> (tokenizer_config.json's
    bos_token, config.json's bos_token_id), the token that opens every turn the instruct model saw,
    so it is a natural first token for a prompt.
    """

    def __init__(self, path):
        self.path = Path(path)
        spec = json.loads(self.path.read_text(encoding="utf-8"))
        model, pre = spec["model"], spec.get("pre_tokenizer") or {}
        steps = pre.get("pretokenizers", [pre])  # a Sequence, or a single pre-tokenizer
        types = [s.get("type") for s in steps]
        added = spec.get("added_tokens", [])
        norm = spec.get("normalizer") or {}  # none, one Unicode form, or a Sequence of them
        norms = [n.get("type") for n in norm.get("normalizers", [norm] if norm else [])]
        refused = {
            "model.type other than BPE": model.get("type") != "BPE",
            "BPE dropout": bool(model.get("dropout")),
            "a subword prefix/suffix": bool(model.get("continuing_subword_prefix")
                                            or model.get("end_of_word_suffix")),
            f"normalizer {norms}": any(n not in UNICODE_FORMS for n in norms),
            f"pre_tokenizer {types}": types not in (["ByteLevel"], ["Digits", "ByteLevel"]),
            "ByteLevel without use_regex or with add_prefix_space":
                not steps[-1].get("use_regex", True) or steps[-1].get("add_prefix_space", False),
            "Digits without individual_digits":
                types[0] == "Digits" and not steps[0].get("individual_digits"),
            "added tokens with lstrip/rstrip/single_word":
                any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added),
        }
        for what, bad in refused.items():
            if bad:
                raise ValueError(f"{self.path}: {what} is not implemented")
        self.unicode_forms = norms  # applied to the text between added tokens, in order, as HF does
        self.split_digits = types[0] == "Digits"
        self.ignore_merges = model.get("ignore_merges", False)  # a word that is a token stays whole

        self.vocab = model["vocab"]
        merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
        self.ranks = {tuple(m): rank for rank, m in enumerate(merges)}
        self.added = {t["content"]: t["id"] for t in added}
        self.tokens = {i: t for t, i in self.vocab.items()} | {i: t for t, i in self.added.items()}
        self.added_ids = set(self.added.values())
        self.vocab_size = max(self.tokens) + 1
        # Longest first: of two added tokens that start at the same place the longer wins, as in HF.
        names = sorted(self.added, key=len, reverse=True)
        self.added_re = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None
        self.cache = {}  # word -> ids; prompts repeat a few thousand words over and over

        cfg_path = self.path.with_name("tokenizer_config.json")
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}

        def token_id(key):
            name = cfg.get(key)
            name = name.get("content") if isinstance(name, dict) else name  # older files nest it
            return self.added.get(name, self.vocab.get(name))

        self.bos_id, self.eos_id = token_id("bos_token"), token_id("eos_token")
        if self.bos_id is None or self.eos_id is None:
            raise ValueError(f"{cfg_path}: needs bos_token and eos_token, naming tokens of {self.path.name}")
        # Byte-level BPE never needs an unknown token. unk_id only fills the <UserID> and
        # <TargetItemID> slots of data.encode_prompt, whose embeddings SASRecLLM overwrites with
        # the projected CF vectors, so any real id is safe: the named unk_token (SmolLM2:
        # <|endoftext|>, 0), else eos.
        unk = token_id("unk_token")
        self.unk_id = self.eos_id if unk is None else unk

    def pre_tokenize(self, text: str) -> list:
        kinds = text.translate(CHAR_CLASSES)  # one class letter per char
        if not self.split_digits:
            return gpt2_split(text, kinds)
        # Digits(individual_digits) runs first: each number char is a word of its own, and GPT-2's
        # split runs inside the stretches between them (so " 1" is " ", "1", never " 1").
        words = []
        for m in re.finditer("N|[^N]+", kinds):
            words += gpt2_split(text[m.start():m.end()], m.group())
        return words

    def bpe(self, word: str) -> list:
        """Ids of one word: start from its bytes and merge the adjacent pair of lowest rank (the
        leftmost on a tie) until no pair has a rank, as HF's BPE does."""
        ids = self.cache.get(word)
        if ids is None:
            parts = [BYTE_TO_CHAR[b] for b in word.encode("utf-8")]
            if self.ignore_merges and "".join(parts) in self.vocab:
                parts = ["".join(parts)]
            no_merge = len(self.ranks)
            while len(parts) > 1:
                pairs = zip(parts, parts[1:])
                rank, k = min((self.ranks.get(pair, no_merge), k) for k, pair in enumerate(pairs))
                if rank == no_merge:
                    break
                parts[k:k + 2] = [parts[k] + parts[k + 1]]
            ids = self.cache[word] = [self.vocab[p] for p in parts]
        return ids

    def encode(self, text: str, bos: bool = True) -> list:
        ids = [self.bos_id] if bos else []
        pieces = self.added_re.split(text) if self.added_re else [text]
        for k, piece in enumerate(pieces):
            if k % 2:  # re.split puts the matched added tokens at the odd places
                ids.append(self.added[piece])
            else:
                for form in self.unicode_forms:
                    piece = unicodedata.normalize(form, piece)
                for word in self.pre_tokenize(piece):
                    ids += self.bpe(word)
        return ids

    def decode(self, ids) -> str:
        """Added tokens come out as their text. The other tokens go back to bytes, decoded as UTF-8
        a stretch at a time (one character's bytes may span tokens); bad bytes become U+FFFD."""
        out, buf = [], bytearray()
        for i in map(int, ids):
            if i in self.added_ids:
                out += [buf.decode("utf-8", "replace"), self.tokens[i]]
                buf = bytearray()
            else:
                buf += bytes(CHAR_TO_BYTE[c] for c in self.tokens[i])
        return "".join(out) + buf.decode("utf-8", "replace")

    def pieces(self, ids) -> list:
        return [self.tokens[i] for i in ids]

    # The answer follows "#Answer:" after a space, and byte-level BPE keeps that word boundary in
    # the token ("ĠYes"), as sentencepiece does with "▁Yes". So the scored tokens are " Yes" and
    # " No" (9230 and 2838 for SmolLM2), space included; "Yes" alone is a different token (after a
    # quote, or at a line start).
    ANSWERS = (" Yes", " No")


# ----------------------------------------------------------------------------------------------
# Loading


def check_safetensors(path):
    """Fail with a clear message if a .safetensors file is truncated or its header is broken."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; expected a safetensors file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file ({size} bytes, too short for a header)")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file: header says {n} header "
                                  f"bytes but the file has {size} bytes")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    try:
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (AttributeError, KeyError, TypeError, IndexError):
        raise CheckpointError(f"{path}: corrupt safetensors header (expected tensors with data_offsets)") from None
    if 8 + n + end != size:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file: expected {8 + n + end} "
                              f"bytes from its header, found {size}")


def read_weights(ckpt_dir, dtype=None, device="cpu") -> dict:
    """All tensors of model.safetensors, or of the shards named in model.safetensors.index.json,
    each moved to dtype/device as soon as it is read so only one copy of the weights exists."""
    ckpt_dir = Path(ckpt_dir)
    index = ckpt_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]  # key -> shard file name
            files = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: expected a JSON object with a weight_map ({e!r})") from None
    elif (ckpt_dir / "model.safetensors").exists():
        weight_map, files = None, ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{ckpt_dir}: no model.safetensors or model.safetensors.index.json")
    state = {}
    for name in files:
        path = ckpt_dir / name
        check_safetensors(path)
        try:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    if weight_map is not None and weight_map.get(key) != name:
                        raise CheckpointError(f"{path}: key {key!r} is not mapped to this shard in {index.name}")
                    state[key] = f.get_tensor(key).to(device=device, dtype=dtype)
        except SafetensorError as e:
            raise CheckpointError(f"{path}: corrupt safetensors file ({e})") from None
    if weight_map is not None and set(weight_map) != set(state):
        missing = sorted(set(weight_map) - set(state))
        raise CheckpointError(f"{index}: keys listed but not found in any shard: {missing[:5]}")
    return state


# Keys that older Llama-2 / Vicuna conversions saved and HF skips on load (modeling_utils ignores
# unexpected keys matching rotary_emb.inv_freq): RoPE's frequencies, which follow from rope_theta.
IGNORED_KEYS = re.compile(r"rotary_emb\.inv_freq$")


def load_model(ckpt_dir, dtype=torch.float32, device="cpu") -> Llama:
    """The Llama in an HF-layout directory (config.json, model.safetensors or shards). It is built on
    the meta device (no memory) and the tensors read from disk become its parameters directly
    (load_state_dict(assign=True)): one copy of the weights, never two. dtype may be "auto"."""
    ckpt_dir = Path(ckpt_dir)
    cfg = LlamaConfig.from_json(ckpt_dir / "config.json")
    if isinstance(dtype, str):
        name = cfg.torch_dtype if dtype == "auto" else dtype
        if name not in DTYPES:
            raise CheckpointError(f"{ckpt_dir / 'config.json'}: torch_dtype {name!r} is not one of "
                                  f"{', '.join(DTYPES)}; pass a dtype explicitly")
        dtype = DTYPES[name]
    with torch.device("meta"):
        model = Llama(cfg)
    state = read_weights(ckpt_dir, dtype, device)  # fp16, bf16 or fp32 on disk, cast to dtype
    state = {k: v for k, v in state.items() if not IGNORED_KEYS.search(k)}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # HF omits it for tied models; the embedding is used
    expected = {k: v.shape for k, v in model.state_dict().items()
                if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(f"{ckpt_dir}: missing key {missing[0]!r} ({len(missing)} missing in all)")
    if unexpected:
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


def load_tokenizer(path):
    """The tokenizer of a checkpoint directory: Tokenizer (sentencepiece; Llama 2, TinyLlama) when it
    holds tokenizer.model, else BPETokenizer (byte-level BPE; SmolLM2) when it holds tokenizer.json.
    tokenizer.model wins because Llama-2 checkpoints ship both, and their tokenizer.json is not
    byte-level. path may also be one of the two files itself."""
    path = Path(path)
    if not path.is_file():
        if not (path / "tokenizer.model").exists() and not (path / "tokenizer.json").exists():
            raise FileNotFoundError(f"{path}: no tokenizer.model (sentencepiece) or tokenizer.json (byte-level BPE)")
        path = path / ("tokenizer.model" if (path / "tokenizer.model").exists() else "tokenizer.json")
    bpe = path.suffix == ".json"
    try:
        return BPETokenizer(path) if bpe else Tokenizer(path)
    except (OSError, RuntimeError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        # the tokenizer classes' own ValueErrors already name the file and pass through
        raise CheckpointError(f"{path}: expected {'an HF tokenizer.json' if bpe else 'a sentencepiece model'} "
                              f"({type(e).__name__}: {e})") from None


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


# ----------------------------------------------------------------------------------------------
# Random checkpoints in the real layout: the embedded tiny backbone and a TinyLlama-shape one


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


def write_random(out_dir, cfg: LlamaConfig, tokenizer_model, dtype=torch.float32, seed=0):
    """config.json + model.safetensors + tokenizer.model with random weights (random_state), made
    in `dtype`, so a 2.2 GB model needs ~2.2 GB RAM."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(random_state(cfg, dtype, "cpu", seed), out_dir / "model.safetensors", metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
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


# ----------------------------------------------------------------------------------------------
# CLI


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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="checkpoint dir: config.json, model.safetensors, tokenizer.model")
    p.add_argument("--prompt", default="Is the sky blue? Answer Yes or No.")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: config.json's")
    p.add_argument("--device", default="cpu")
    p.add_argument("--write-tiny", metavar="DIR", help="write the embedded tiny backbone and exit")
    p.add_argument("--write-tinyllama", metavar="DIR", help="write a random TinyLlama-shape checkpoint")
    p.add_argument("--tokenizer", help="tokenizer.model to copy into --write-* checkpoints")
    args = p.parse_args()
    if args.write_tinyllama and not args.tokenizer:
        p.error("--write-tinyllama needs --tokenizer (the Llama-2 tokenizer.model)")
    if not (args.ckpt or args.write_tiny or args.write_tinyllama):
        p.error("--ckpt is required")
    try:
        run(args)
    except (FileNotFoundError, ValueError, OSError) as e:  # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run(args):
    if args.write_tiny:
        print(make_tiny(args.write_tiny, tokenizer_model=args.tokenizer))
        return
    if args.write_tinyllama:
        print(make_tinyllama_shape(args.write_tinyllama, args.tokenizer))
        return
    model, tok = load(args.ckpt, args.dtype, args.device)
    ids = tok.encode(args.prompt, bos=True)
    with torch.no_grad():
        h = model(input_ids=torch.tensor([ids], device=args.device))[:, -1]  # (1, D)
        yes_no = model.token_logits(h, [tok.yes_id, tok.no_id])[0].float()
    new = greedy(model, ids, args.max_new_tokens, tok.eos_id)
    print(f"# greedy decoding without KV cache, dtype {model.lm_head.weight.dtype}, device {args.device}")
    print(json.dumps({"prompt_tokens": len(ids), "new_ids": new, "text": tok.decode(new),
                      "yes_minus_no": round(float(yes_no[0] - yes_no[1]), 6)}))


if __name__ == "__main__":
    sys.exit(main())
