"""Sizes checked before memory is spent. A config.json, an adapter or a flag of the right type but an
absurd size (1e9 layers, r=1e8, --dim 100000, an eps of inf) is refused as one line naming it, before
anything is built or read: a config against the shapes in the safetensors headers, a run's memory
against what the machine has free. The estimates are rough upper bounds, not measurements; the
lesson files call each check in one line (llama.load_model, lora.inject and load_adapter, train.py)."""
import math
import os
import pickletools
import re
import resource
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from tools.sources import regular_file

GiB = 2 ** 30


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what was expected."""


class SizeError(ValueError):
    """A run that cannot fit; the message names the flags or file, the estimate and the limit."""


def short(v):
    return repr(v) if len(repr(v)) <= 40 else repr(v)[:30] + "..."  # (a 400-digit eps, a 1 MB string)


def expect(name, v, kind=int, low=0, high=None, low_open=False, high_open=False):
    """v, an int (kind int) or finite int or float (kind float), not a bool, in [low, high] (ends open as asked)."""
    ok = isinstance(v, (int, float) if kind is float else int) and not isinstance(v, bool)
    ok = ok and (kind is int or abs(v) <= 1.7e308)  # False for nan, inf and ints past any float
    ok = ok and (v > low if low_open else v >= low) and (high is None or (v < high if high_open else v <= high))
    if not ok:
        where = f"{'>' if low_open else '>='} {low}"
        where += "" if high is None else f" and {'<' if high_open else '<='} {high}"
        raise ValueError(f"{name} is {short(v)}; expected {'an integer' if kind is int else 'a finite number'} {where}")


def available(device="cpu"):
    """Bytes free on device: CUDA's free memory, else /proc/meminfo's MemAvailable; None where unknown."""
    if str(device).startswith("cuda"):  # (a run recorded on CUDA, read here without: no check)
        return torch.cuda.mem_get_info(torch.device(device))[0] if torch.cuda.is_available() else None
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        if (cap := resource.getrlimit(resource.RLIMIT_AS)[0]) != resource.RLIM_INFINITY:  # (ulimit -v)
            with open("/proc/self/status") as f:
                free = min(free, cap - next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")))
        return free
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def fits(need, what, device="cpu"):
    """Refuse, as one line, what would need `need` bytes where `device` has fewer free."""
    if (have := available(device)) is not None and need > have:
        gib = lambda n: f"{n / GiB:.1f}" if n < 1e5 * GiB else f"{min(n, 2 ** 100) / GiB:.3g}"  # noqa: E731
        raise SizeError(f"{what} needs about {gib(need)} GiB, more than the {gib(have)} GiB available")

TENSOR_PICKLE = {"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_parameter"}


def fits_torch_zip(path):
    """torch.load's file against free memory before it is read: torch.save writes a zip of stored records,
    so their declared sizes are what loading allocates, and a pickle that names only a dict of tensors'
    few globals (weights_only would also build a bytearray(3e8) from 40 bytes). A compressed record (a
    256 KB file inflating to 256 MB) or the older non-zip format (sizes inside the pickle) is refused."""
    try:
        with zipfile.ZipFile(path) as z:
            records = z.infolist()
            if packed := [r.filename for r in records if r.compress_type != zipfile.ZIP_STORED]:
                raise ValueError(f"record {packed[0][:80]!r} is compressed; torch.save stores its records")
            fits(sum(r.file_size for r in records), str(path))
            [pkl] = [r for r in records if r.filename.endswith("/data.pkl") or r.filename == "data.pkl"]
            for op, arg, _ in pickletools.genops(z.read(pkl)):
                if op.name in ("GLOBAL", "INST", "STACK_GLOBAL") and not (
                        arg in TENSOR_PICKLE or re.fullmatch(r"torch [A-Za-z0-9]*Storage", str(arg))):
                    raise ValueError(f"its pickle names {arg or op.name!r:.60}, not a dict of tensors")
    except SizeError:
        raise
    except Exception as e:  # (not a zip, no data.pkl or two, a damaged pickle)
        raise CheckpointError(f"{path}: expected torch.save's zip of a dict of tensors ({type(e).__name__}: "
                              f"{str(e)[:200]})") from None


# ----------------------------------------------------------------------------------------------
# llama.py: config.json against the weights, before the model is built

def sentencepiece_type(raw):
    """TrainerSpec.model_type of a sentencepiece ModelProto's bytes (its field 2, that message's field 3; absent:
    1, UNIGRAM; 2 is BPE), read from the protobuf wire format: sentencepiece does not say, and protobuf is no
    dependency here."""
    def fields(b):  # (field number, value): varints as ints, length-delimited as bytes
        i = 0
        while i < len(b):
            key, i = varint(b, i)
            if key & 7 == 0:
                v, i = varint(b, i)
            elif key & 7 == 2:
                n, i = varint(b, i)
                v, i = b[i:i + n], i + n
            else:  # fixed 64 or 32 bits
                v, i = None, i + {1: 8, 5: 4}[key & 7]
            yield key >> 3, v

    def varint(b, i):
        v = shift = 0
        while b[i] & 0x80:
            v, i, shift = v | (b[i] & 0x7F) << shift, i + 1, shift + 7
        return v | b[i] << shift, i + 1
    spec = next((v for f, v in fields(raw) if f == 2), b"")
    return next((v for f, v in fields(spec) if f == 3), 1)


LAYERS_MAX = 1024  # decoder layers (TinyLlama: 22; the largest Llamas: 126)


def check_config(cfg):
    """Every LlamaConfig field of its type and in range: a config.json value of the wrong kind or size
    fails as it is read, not mid-allocation or mid-forward (an rms_norm_eps of inf scores every row alike)."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if f.name == "eos_token_id" and isinstance(v, list):  # from_dict takes the first of a list of ints
            raise ValueError(f"eos_token_id is {short(v)}; expected an integer >= 0, or a non-empty list of them")
        if f.type in (bool, str):
            if not isinstance(v, f.type):
                raise ValueError(f"{f.name} is {short(v)}; expected " + ("true or false" if f.type is bool else "a string"))
        elif f.name == "rms_norm_eps":  # in fp32 and bf16: 1e-300 is 0 there (a zero row's norm divides by 0)
            expect(f.name, v, float, 1e-30, 1, high_open=True)
        elif f.name == "num_hidden_layers":  # each layer a module of its own: 20,000 tiny ones took hours to load
            expect(f.name, v, int, 1, LAYERS_MAX)
        elif f.name == "rope_theta":  # RoPE's base, in fp32: 1e-300 is 0 there (inv_freq inf, every score NaN)
            expect(f.name, v, float, 1, 3.4e38)
        else:  # sizes >= 1; head_dim (0: derived), token ids, initializer_range >= 0
            low = 0 if f.type is float or f.name in ("head_dim", "bos_token_id", "eos_token_id") else 1
            expect(f.name, v, f.type, low)
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    if nh % nkv:
        raise ValueError(f"num_attention_heads={nh} is not a multiple of num_key_value_heads={nkv}")
    hs = cfg.head_dim or cfg.hidden_size // nh
    if hs % 2 or hs == 0:  # RoPE turns pairs (i, i + hs/2)
        raise ValueError(f"head_dim is {hs}{'' if cfg.head_dim else ' (hidden_size // num_attention_heads)'}; "
                         "expected a positive even number")


FLOATS = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


def check_float(path, key, dtype):
    """A weight stored as a real float (a safetensors dtype name, or a torch dtype): an integer, bool, complex
    or 8-bit float tensor would be cast to the model's dtype without a word, meaning other numbers."""
    if dtype not in FLOATS and dtype not in FLOATS.values():
        raise CheckpointError(f"{path}: key {key!r} is {dtype}; expected {', '.join(FLOATS)} (a floating-point weight)")


def check_finite(path, key, t):
    """A weight's values finite, after any cast (fp16 turns 70000 into inf): one NaN makes every score NaN."""
    if not torch.isfinite(t).all():
        raise CheckpointError(f"{path}: key {key!r} holds NaN or inf values (in {str(t.dtype)[6:]}); expected finite weights")


def check_checkpoint(cfg, config, files, dtype=torch.float32, device="cpu"):
    """config.json (cfg, read from `config`) against the shapes in the safetensors headers of `files` (no tensor
    is read): a layer count, width or vocabulary the weights lack is named with the key that shows it, before the
    model is built (1e9 layers never finish building, even on the meta device); then the weights against memory."""
    shapes = {}
    for path in files:
        try:  # (safe_open maps the whole file: one larger than memory fails there, in words of its own)
            fits(os.path.getsize(regular_file(path, "a safetensors file")), f"{path}: mapping it", device="cpu")
            with safe_open(path, framework="pt") as f:
                for k in f.keys():
                    check_float(path, k, (s := f.get_slice(k)).get_dtype())
                    if k in shapes:  # (read in turn, the later shard's would silently win)
                        raise CheckpointError(f"{path}: key {k!r} is in {shapes[k][1]} too; expected it in one shard")
                    shapes[k] = tuple(s.get_shape()), path
        except (SafetensorError, FileNotFoundError) as e:  # a truncated file says "incomplete metadata"
            raise CheckpointError(f"{path}: cannot read this safetensors file ({e})") from None
    layers = sorted({int(m[1]) for k in shapes if (m := re.match(r"model\.layers\.([0-9]+)\.", k))})
    if len(layers) != cfg.num_hidden_layers:
        where = ", ".join(map(str, files[:1])) + (f" and {len(files) - 1} more shards" if len(files) > 1 else "")
        raise CheckpointError(f"{config}: num_hidden_layers is {cfg.num_hidden_layers}, but the weights "
                              f"({where}) hold {len(layers)} layers")
    D, I, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    block = {"input_layernorm": (D,), "self_attn.q_proj": (q, D), "self_attn.k_proj": (kv, D),
             "self_attn.v_proj": (kv, D), "self_attn.o_proj": (D, q), "mlp.gate_proj": (I, D),
             "mlp.up_proj": (I, D), "mlp.down_proj": (D, I), "post_attention_layernorm": (D,)}
    want = {"model.embed_tokens": (V, D), **{f"model.layers.{i}.{k}": s for i in layers for k, s in block.items()},
            "model.norm": (D,), "lm_head": (V, D)}  # in the model's order: the first wrong key is named
    for k, s in want.items():
        shape, path = shapes.get(k + ".weight", (s, None))
        if shape != s:
            raise CheckpointError(f"{path}: key {k + '.weight'!r} has shape {shape}, {config} implies {s}")
    n, dtype = sum(math.prod(s) for s, _ in shapes.values()), dtype or torch.float32
    fits(n * dtype.itemsize, f"{Path(config).parent}: {n:,} weights in {str(dtype)[6:]}", device)

# ----------------------------------------------------------------------------------------------
# lora.py: an adapter's sizes against its tensors, before inject allocates

DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # HF Llama's


def check_adapter(adapter_dir, cfg, state=None):
    """adapter_config.json's r, lora_alpha, lora_dropout and target_modules, and its r against the adapter's
    tensors (lora_A (r, in), lora_B (out, r)): their shapes come from adapter_model.safetensors' header, or
    from state (the older adapter_model.bin, loaded whole), so inject allocates nothing the file lacks."""
    path, weights = Path(adapter_dir, "adapter_config.json"), Path(adapter_dir, "adapter_model.safetensors")
    r, targets = cfg.get("r"), cfg.get("target_modules")
    expect(f"{path}: r", r, int, 1)
    expect(f"{path}: lora_alpha", cfg.get("lora_alpha"), float, 0, 65504, low_open=True)  # (fp16's largest)
    expect(f"{path}: lora_dropout", cfg.get("lora_dropout", 0.0), float, 0, 1, high_open=True)
    if not isinstance(targets, str) and not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise ValueError(f"{path}: target_modules is {targets!r}; expected a list of module names")
    # (an lm_head LoRA would load and be ignored: the score reads lm_head's Yes/No rows, not its delta)
    if isinstance(targets, list) and (odd := [t for t in targets if t not in DECODER_LINEARS]):
        raise ValueError(f"{path}: target_modules has {odd[0]!r:.40}; lora.py adapts the decoder layers' "
                         f"projections only ({', '.join(DECODER_LINEARS)})")
    weights = weights if state is None else weights.with_suffix(".bin")
    try:
        if state is None:
            fits(os.path.getsize(regular_file(weights, "an adapter's safetensors")), f"{weights}: mapping it")
            with safe_open(weights, framework="pt") as f:
                shapes = {}
                for k in f.keys():
                    check_float(weights, k, (s := f.get_slice(k)).get_dtype())
                    shapes[k] = tuple(s.get_shape())
        elif isinstance(state, dict) and all(type(k) is str and torch.is_tensor(v) for k, v in state.items()):
            shapes = {k: tuple(v.shape) for k, v in state.items()}
            for k, v in state.items():
                check_float(weights, k, v.dtype)
        else:
            raise TypeError("expected a dict of tensors named by strings")
    except (SafetensorError, FileNotFoundError, TypeError) as e:  # a truncated file: "incomplete metadata"
        raise ValueError(f"{weights}: cannot read it ({e})") from None
    for k, s in shapes.items():
        side = "A" if ".lora_A." in k else "B" if ".lora_B." in k else None
        if side is None:  # not LoRA's: load_adapter refuses it by name
            continue
        module = k.split(f".lora_{side}.")[0].rsplit(".", 1)[-1]
        if isinstance(targets, list) and module not in targets:
            raise ValueError(f"{path}: target_modules {targets} lack {module!r}, which {weights} adapts ({k!r})")
        if len(s) != 2 or s[side == "B"] != r:
            raise ValueError(f"{path}: r is {r}, but {weights} holds {k!r} of shape {s}; expected "
                             + (f"({r}, in_features)" if side == "A" else f"(out_features, {r})"))

# ----------------------------------------------------------------------------------------------
# train.py: a run's flags and its memory, before the model is built

def check_flags(a):
    """Run a's flags that cannot work together, as they are parsed: before any data is read."""
    if a.layers > LAYERS_MAX:  # (the blocks are built one by one: 100,000 of them took minutes before any row)
        raise SizeError(f"--layers {a.layers}: expected at most {LAYERS_MAX} blocks (the paper's SASRec has 2)")
    if a.stage == "sasrec" and a.dim % a.heads:
        raise SizeError(f"--heads {a.heads} does not divide --dim {a.dim}: SASRec splits the width into equal heads")
    if a.max_epochs is not None and a.warmup_epochs > a.max_epochs:  # (1e308 would overflow the step count)
        raise SizeError(f"--warmup-epochs {a.warmup_epochs:g} is more than --max-epochs {a.max_epochs}: "
                        "the learning rate would never reach --lr")
    check_threads(a.threads)


def check_threads(n):
    cpus = os.cpu_count() or 1
    if n > (most := max(256, 4 * cpus)):  # each OpenMP thread takes a stack; 100,000 of them crash torch
        raise SizeError(f"--threads {n}: this machine has {cpus} CPUs; expected at most {most}")


def check_cf(a, ds):
    """Run a's CF model on ds, before it is built: its parameters (fp32, with gradients and AdamW's two
    moments), every row's history (--maxlen ids) and the activations of the largest batch (SASRec: a
    (B, T, d) tensor ~16 times per layer and its (B, heads, T, T) attention; each block's modules, ~35 KB
    as measured, counted as 64 KiB) within the memory free."""
    d, T, L, n = a.dim, a.maxlen, a.layers if a.stage == "sasrec" else 1, ds.n_users + ds.n_items + 2
    params = dict(sasrec=n * (d + 1) + T * d + L * 6 * d * d, mf=n * (d + 1), ncf=n * (2 * d + 1) + 3 * d * d,
                  gru4rec=n * (d + 1) + 6 * d * d, pop=n, mc=(ds.n_items + 1) ** 2)[a.stage]
    heads = a.heads if a.stage == "sasrec" else 0
    acts = [B * layers * (T * d * 16 + heads * T * T * 2) * 4 for B, layers in
            ((min(a.batch_size, len(ds)), L), (min(4096, len(ds)), 1))]  # a train batch; a scoring chunk
    bytes_per = dict(pop=4, mc=64).get(a.stage, 16)  # (MC's fit: float64 temporaries of its table, ~50 B a cell seen)
    need = params * bytes_per + 3 * len(ds) * (T + 1) * 8 + max(acts) + L * (64 << 10)
    sasrec = f" --layers {a.layers} --heads {a.heads}" if a.stage == "sasrec" else ""
    fits(need, f"--stage {a.stage} --dim {d}{sasrec} --maxlen {T} --batch-size {a.batch_size} on {len(ds)} rows "
         f"({ds.n_users} users, {ds.n_items} items): this run", a.device)


def check_llm(a, cfg, cf=None):
    """Run a's collaborative tokens, before the mapping layer is built: 2 x --proj-token-num pseudo-tokens
    leave room for a prompt in the LLM's positions, and the mapping (d -> 10 d -> k D, fp32 with AdamW) fits."""
    if cf is None:
        return
    k, D, d = a.proj_token_num, cfg.hidden_size, cf.dim + 2
    if 2 * k >= cfg.max_position_embeddings:
        raise SizeError(f"--proj-token-num {k}: 2 x {k} pseudo-tokens leave no room for the prompt in --llm "
                        f"{a.llm}'s {cfg.max_position_embeddings} positions (max_position_embeddings)")
    fits(16 * 10 * d * (d + k * D + 2), f"--proj-token-num {k}: a mapping layer of {10 * d * (d + k * D) / 1e9:.2f} B "
         "parameters", a.device)


def check_positions(a, ds, cfg, prompts, rows):
    """None of the prompts (of ds's rows) longer than the LLM's max_position_embeddings: positions it never
    trained on score silently wrong."""
    lengths = np.array([len(p.ids) for p in prompts])
    over = np.flatnonzero(lengths > cfg.max_position_embeddings)
    if len(over):
        r, k = int(rows[over[0]]), len(prompts[over[0]].user_pos)
        pseudo = f", {2 * k} of them pseudo-tokens" if k else ""
        raise SizeError(f"row {r} (user {ds.user[r]}, item {ds.item[r]}): its prompt is {lengths[over[0]]} tokens"
                        f"{pseudo}, more than the {cfg.max_position_embeddings} positions of --llm {a.llm} "
                        f"(max_position_embeddings; {len(over)} such rows)")
    return lengths


def activations(cfg, B, T, layers):
    """Bytes a (B, T) batch keeps through `layers` decoder layers: ~(12 D + 4 I) fp32 values a token a layer,
    and the (B, heads, T, T) scores."""
    D, I, nh = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    return B * layers * (T * (12 * D + 4 * I) * 4 + nh * T * T * 10)


def check_prompts(a, ds, cfg, prompts):
    """Run a's prompts, before any batch is made: check_positions, and the activations of the longest batch,
    padded to --pad-multiple, within the memory free (the weights are loaded by now)."""
    lengths = check_positions(a, ds, cfg, prompts, range(len(prompts)))
    T = -(-int(lengths.max()) // a.pad_multiple) * a.pad_multiple
    acts = [activations(cfg, B, T, layers) for B, layers in ((min(a.eval_batch_size, len(ds)), 2),
            (0 if a.stage == "icl" else min(a.batch_size, len(ds)), cfg.num_hidden_layers))]
    # (and each step's list of rows, built for the epoch: a list of B ints, 36 bytes each, and ~1 KiB besides)
    steps = a.iters_per_epoch * (1024 + 36 * min(a.batch_size, len(ds)))
    fits(max(acts) + steps, f"--batch-size {a.batch_size} --eval-batch-size {a.eval_batch_size} "
         f"--pad-multiple {a.pad_multiple} --iters-per-epoch {a.iters_per_epoch} (prompts of up to {lengths.max()} "
         f"tokens, padded to {T}) on --llm {a.llm}: this run", a.device)
