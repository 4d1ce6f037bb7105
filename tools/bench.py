"""Throughput of the SASRecLLM/TALLRec workload: llama.py + lora.py against HF transformers + peft,
in one process, on the same weight tensors and the same batches. A harness, not the lesson.

  train: forward, BCE on z_Yes - z_No at the last position, backward, AdamW on LoRA only (r 8,
         alpha 16, dropout 0.05 on q_proj and v_proj);   score: the forward and the two logits.
Prompt lengths are drawn like ML-1M's prompts (normal, mean 195, p95 230), bucketed, and left-padded
to a multiple of --pad-multiple. Weights are random: speed only.

Fair by construction: every implementation first runs every batch (every shape) once, then the
timed pass rotates which implementation goes first on each batch (--order). warm_extra_s is what
first meetings cost each one. "hf+peft last" passes logits_to_keep=1. --compile adds llama.py with
each decoder layer under torch.compile. FLOPs count useful work on real tokens: N = the weights of
the 7 projections in all layers, A = 4 * layers * T^2 * (heads * head_dim) per sequence;
score = 2 N T + A, train = 4 N T + 3 A (frozen weights need input gradients only).

--loop times train.py's own text stage (loop.train) on real ML-1M prompts and a random checkpoint
of the chosen shape: the last of LOOP_EPOCHS epochs of --loop-iters iterations, from the loop's own
log, and the final test evaluation. --check runs the bench in all three orders, then --loop, and
prints one JSON line (defaults: TinyLlama's shape, CUDA, bf16).

    python -m tools.bench --shape tiny
    python -m tools.bench --check                               # the prepared GPU check
    python -m tools.bench --check --device cpu --shape tiny     # the same on CPU, in seconds
    python -m tools.bench --loop --limit 200 --loop-iters 8
    python -m tools.bench --ckpt checkpoints/SmolLM2-135M-Instruct --threads 2   # every CPU precision mode

--ckpt runs a real checkpoint on the CPU in each precision mode (fp32; fp32 weights with bf16
autocast; bf16 weights with bf16 autocast), ours and HF + peft on the same real ML-1M prompts, and
prints tokens/s with the share of the bf16 peak that a plain matmul reaches on the same threads;
--candidates times the fast-path candidates in bf16 and profiles one train step.
"""
import argparse
import contextlib
import gc
import json
import os
import resource
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import data
import llama
import loop
import lora
import train
from llama import load_tokenizer
from tools import backbones, runs

TINY = dict(vocab_size=1000, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2)
YES, NO = 3869, 1939  # the Llama-2 ids (tiny shape: taken modulo its vocabulary)
ORDERS = ("alternate", "ours-first", "hf-first")
LLAMA_DTYPE = {"fp32": "float32", "bf16": "bfloat16"}  # --dtype in llama.DTYPES' (and train.py's) names
LOOP_EPOCHS = 2  # --loop: the first epoch meets the batch shapes, the second is timed
# --check's sizes, which keep it under 5 minutes on one H200 at TinyLlama's shape in bf16:
#   bench: a step is ~0.09 s, so 4 passes x 3 implementations x 24 batches x 2 phases take ~75 s
#     (results/bench/h200_tinyllama_pad16.json: wall_s 72.9, building the models included);
#   loop: a random 2.2 GB checkpoint written and read back, ~20 s (estimated); 51,623 prompts
#     tokenized, ~5 s; 2 epochs x 100 iterations of batch 16 at 0.09-0.2 s a step, 20-40 s;
#     4 evaluations (valid after each epoch, then valid and test: 38,534 prompts) at the bench's
#     score rate (~900 prompts/s of 160 tokens) down to half of it, 45-90 s;
#   in all 165-230 s: a loop twice as slow as the bench still fits.
# On CPU the tiny shape takes seconds: --limit keeps the first 64 rows of each split.
CHECK = {"cuda": dict(steps=24, train_batch=16, score_batch=64, loop_iters=100, limit=0),
         "cpu": dict(steps=2, train_batch=2, score_batch=4, loop_iters=4, limit=64)}


# ----------------------------------------------------------------------------------------------
# Batches


def round_up(n, multiple):
    return -(-n // multiple) * multiple


def left_pad(ids, mask, multiple):
    """Widen a LEFT-padded batch (B, T) with more padding on the left, to a width that is a
    multiple of `multiple`. Padding ids are 0 and masked, so the scores do not change."""
    extra = round_up(ids.shape[1], multiple) - ids.shape[1]
    return F.pad(ids, (extra, 0)), F.pad(mask, (extra, 0))


def make_batch(lens, vocab, g, pad_multiple):
    """Random ids for prompts of the given lengths, LEFT-padded; random 0/1 labels. The ids are drawn
    at the longest length before rounding, so every pad_multiple sees the same tokens."""
    T = int(max(lens))
    pos = torch.arange(T)
    mask = (pos[None, :] >= T - torch.as_tensor(lens)[:, None]).long()  # (B, T), 0 = left padding
    ids = torch.randint(3, vocab, (len(lens), T), generator=g) * mask
    labels = torch.randint(0, 2, (len(lens),), generator=g).float()
    ids, mask = left_pad(ids, mask, pad_multiple)
    return ids, mask, labels


def batches(n_batches, batch_size, vocab, seed, pad_multiple=1):
    """Length-bucketed, left-padded batches of random ids and random 0/1 labels."""
    g = torch.Generator().manual_seed(seed)
    n = n_batches * batch_size
    lengths = (195 + 21.3 * torch.randn(n, generator=g)).round().clamp(40, 400).long()  # p95 = 230
    lengths = lengths.sort().values                                   # bucketing: similar lengths together
    return [make_batch(lengths[b * batch_size:(b + 1) * batch_size], vocab, g, pad_multiple)
            for b in torch.randperm(n_batches, generator=g).tolist()]


def widths(lengths, multiple):
    """Each batch's width (lengths: a list of prompt lengths per batch): its longest prompt rounded
    up to `multiple`, as left padding makes it."""
    return [round_up(max(lens), multiple) for lens in lengths]


def shape_stats(lengths, multiple):
    """Distinct batch widths, and the fraction of pad tokens, when each batch (a list of prompt
    lengths) is left-padded to its longest prompt rounded up to `multiple`."""
    ws = widths(lengths, multiple)
    real = sum(sum(lens) for lens in lengths)
    total = sum(w * len(lens) for w, lens in zip(ws, lengths))
    return {"shapes": len(set(ws)), "pad_frac": round(1 - real / total, 4)}


def flops(cfg, lengths, train):
    D, I, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    attn_dim, kv_dim = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    N = L * (D * attn_dim * 2 + D * kv_dim * 2 + 3 * D * I)
    tokens = sum(lengths)
    A = sum(4 * L * t * t * attn_dim for t in lengths)
    return (4 * N * tokens + 3 * A) if train else (2 * N * tokens + A)


# ----------------------------------------------------------------------------------------------
# The implementations, on one set of weights


class Ours:
    name = "llama.py+lora.py"

    def __init__(self, model, compiled=False, answers=None):
        self.model, self.compiled = model, compiled
        self.answers = answers or [YES % model.cfg.vocab_size, NO % model.cfg.vocab_size]
        if compiled:
            self.name = Ours.name + " compiled"

    def yes_no(self, ids, mask):
        h = self.model(input_ids=ids, attention_mask=mask)[:, -1]    # (B, D)
        return self.model.token_logits(h, self.answers)


class HF:
    def __init__(self, model, vocab, keep_last, answers=None):
        self.model, self.keep_last = model, keep_last
        self.answers = answers or [YES % vocab, NO % vocab]
        self.name = "hf+peft last" if keep_last else "hf+peft"

    def yes_no(self, ids, mask):
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        kw = {"logits_to_keep": 1} if self.keep_last else {}
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, **kw).logits
        return logits[:, -1, self.answers].float()   # (B, 2) of (B, T or 1, V)


def shape_sizes(args):
    """The model sizes of --shape and --layers."""
    sizes = dict(TINY) if args.shape == "tiny" else {k: backbones.TINYLLAMA[k] for k in TINY}
    if args.layers:
        sizes["num_hidden_layers"] = args.layers
    return sizes


def build(sizes, dtype, device, with_hf=True, compile=False):
    """[Ours, (Ours compiled,) HF(full logits), HF(last position)] on the same weight tensors, LoRA
    injected in each; no HF without with_hf, the compiled one only with compile."""
    cfg = llama.LlamaConfig(**sizes)
    state = backbones.random_state(cfg, dtype, device)

    def ours():
        with torch.device("meta"):
            model = llama.Llama(cfg)
        model.load_state_dict(state, strict=True, assign=True)  # the same tensors, not copies
        lora.inject(model, ("q_proj", "v_proj"), r=8, alpha=16, dropout=0.05)
        return model
    model = ours()
    if compile:
        compiled = ours()
        compiled.load_state_dict(model.state_dict())  # the same LoRA init: the same scores
        for layer in compiled.model.layers:
            layer.compile()
    impls = []
    if with_hf:
        import peft
        import transformers
        hf_cfg = transformers.LlamaConfig(**sizes, rms_norm_eps=cfg.rms_norm_eps,
                                          max_position_embeddings=cfg.max_position_embeddings,
                                          attn_implementation="sdpa")
        with torch.device(device):
            hf = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype)
        # assign=True: HF's parameters become our tensors (shared storage, HF's own init is freed);
        # .to() then moves only what the state dict lacks (RoPE's inv_freq buffers).
        hf.load_state_dict(state, strict=True, assign=True)
        hf.to(device)
        hf = peft.get_peft_model(hf, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                     target_modules=["q_proj", "v_proj"]))
        impls = [HF(hf, cfg.vocab_size, keep_last=False), HF(hf, cfg.vocab_size, keep_last=True)]
    return [Ours(model)] + ([Ours(compiled, compiled=True)] if compile else []) + impls


# ----------------------------------------------------------------------------------------------
# Timing


class Meter:
    """Accumulates one implementation's steps of one phase in one pass."""

    def __init__(self, impl, phase, opt):
        self.impl, self.phase, self.opt = impl, phase, opt
        self.elapsed = self.tokens = self.padded = self.samples = self.useful = self.steps = 0
        self.extra_mem = 0.0  # CUDA: most memory a step allocated on top of what was resident before it
        self.peak_mem = 0.0   # CUDA: most memory allocated during one of its steps, resident included


def sync(device):
    """Wait for the device's queued work, so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(m, batch, cfg, device, amp):
    ids, mask, labels = batch
    m.impl.model.train(m.phase == "train")
    sync(device)
    if device.type == "cuda":
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()   # so the peak below is this step's, this impl's
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        with torch.set_grad_enabled(m.phase == "train"):
            logits = m.impl.yes_no(ids, mask)                                  # (B, 2)
            loss = F.binary_cross_entropy_with_logits(logits[:, 0] - logits[:, 1], labels)
    if m.phase == "train":
        loss.backward()
        m.opt.step()
        m.opt.zero_grad(set_to_none=True)
    sync(device)
    m.elapsed += time.perf_counter() - t0
    lengths = mask.sum(1).tolist()
    m.tokens += sum(lengths)
    m.padded += mask.numel()
    m.samples += len(lengths)
    m.useful += flops(cfg, lengths, m.phase == "train")
    m.steps += 1
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        m.extra_mem = max(m.extra_mem, (peak - before) / 2**20)
        m.peak_mem = max(m.peak_mem, peak / 2**20)


def turn(n_impls, order, i, n_ours=1):
    """Which implementations run batch i, first to last. The first n_ours are ours."""
    if order == "ours-first":
        return list(range(n_impls))
    if order == "hf-first":
        return list(range(n_ours, n_impls)) + list(range(n_ours))
    return [(i + j) % n_impls for j in range(n_impls)]  # alternate: each goes first in turn


def run_phase(impls, phase, data, cfg, device, amp, orders):
    """The warm pass (every implementation, every batch, untimed for the figures), then one timed
    pass over the same batches per order. Returns (warm-pass seconds per impl, {order: [Meter]})."""
    data = [tuple(t.to(device) for t in batch) for batch in data]
    opts = [torch.optim.AdamW([p for p in impl.model.parameters() if p.requires_grad], lr=1e-4,
                              fused=device.type == "cuda") if phase == "train" else None
            for impl in impls]
    warm_s = []
    for impl, opt in zip(impls, opts):
        m = Meter(impl, phase, opt)
        for batch in data:
            step(m, batch, cfg, device, amp)
        warm_s.append(m.elapsed)
    passes = {}
    for order in orders:
        meters = [Meter(impl, phase, opt) for impl, opt in zip(impls, opts)]
        for i, batch in enumerate(data):
            for j in turn(len(impls), order, i, sum(isinstance(impl, Ours) for impl in impls)):
                step(meters[j], batch, cfg, device, amp)
        passes[order] = meters
    return warm_s, passes


def ratios(meters):
    """Our tokens/s over each HF variant's: {"vs_hf_peft": x, "vs_hf_peft_last": y}; with a compiled
    implementation also compiled_vs_hf_peft(_last) and compiled_vs_eager."""
    rate = lambda m: m.tokens / m.elapsed
    ours = [m for m in meters if isinstance(m.impl, Ours)]   # eager first, then the compiled one
    out = {}
    for o in ours:
        prefix = "compiled_" if o.impl.compiled else ""
        for m in meters:
            if not isinstance(m.impl, Ours):
                out[prefix + "vs_" + m.impl.name.replace("+", "_").replace(" ", "_")] = round(rate(o) / rate(m), 3)
        if o.impl.compiled:
            out["compiled_vs_eager"] = round(rate(o) / rate(ours[0]), 3)
    return out


def report(m, warm_s, cfg, args, device):
    tflops = m.useful / m.elapsed / 1e12
    r = {"impl": m.impl.name, "phase": m.phase, "shape": args.shape, "layers": cfg.num_hidden_layers,
         "device": str(device), "dtype": args.dtype, "batch": args.train_batch if m.phase == "train" else args.score_batch,
         "steps": m.steps, "tokens_per_s": round(m.tokens / m.elapsed, 1),
         "samples_per_s": round(m.samples / m.elapsed, 2), "pad_frac": round(1 - m.tokens / m.padded, 3),
         "s_per_step": round(m.elapsed / m.steps, 4), "tflops": round(tflops, 3),
         "pct_peak": round(100 * tflops / args.peak_tflops, 2), "warm_extra_s": round(warm_s - m.elapsed, 3)}
    if device.type == "cuda":
        r["step_mem_mb"] = round(m.extra_mem, 1)
        r["peak_mem_mb"] = round(m.peak_mem, 1)
    else:
        r["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # whole process
    return r


# ----------------------------------------------------------------------------------------------
# --loop: train.py's text stage, trained by loop.train on real ML-1M prompts


def loop_args(args, tmp):
    """train.py's own arguments for its text stage on the random checkpoint tmp/llm, writing to the
    run directory tmp/run, at the bench's batch sizes, dtype and padding."""
    if not args.tokenizer or not os.path.isfile(args.tokenizer):
        raise FileNotFoundError(f"--loop: no tokenizer.model at {args.tokenizer or '(none given)'}; pass the "
                                "Llama-2 tokenizer.model with --tokenizer, or set SASRECLLM_TOKENIZER")
    argv = ["--stage", "text", "--data", "ml1m", "--llm", os.path.join(tmp, "llm"), "--out", os.path.join(tmp, "run"),
            "--device", args.device, "--dtype", LLAMA_DTYPE[args.dtype],
            "--amp", "bf16" if args.dtype == "bf16" else "none", "--pad-multiple", args.pad_multiple,
            "--batch-size", args.train_batch, "--eval-batch-size", args.score_batch,
            "--iters-per-epoch", args.loop_iters, "--max-epochs", LOOP_EPOCHS, "--patience", LOOP_EPOCHS,
            "--limit", args.limit]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    return train.parse_args([str(x) for x in argv])


def write_checkpoint(args, out_dir):
    """A random checkpoint of the bench's shape in the real layout, with the tokenizer's special ids
    and a vocabulary no smaller than the tokenizer's (its ids must not index past the table)."""
    tok = load_tokenizer(args.tokenizer)
    sizes = shape_sizes(args)
    cfg = llama.LlamaConfig(**{**sizes, "vocab_size": max(sizes["vocab_size"], tok.vocab_size)},
                            torch_dtype=LLAMA_DTYPE[args.dtype], bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    backbones.write_random(out_dir, cfg, args.tokenizer, llama.DTYPES[LLAMA_DTYPE[args.dtype]])
    return cfg


def timed(predict, device, evals):
    """train.py's predictor, with each call's split, prompts and seconds appended to evals."""
    def predict_timed(model, split):
        sync(device)
        t0 = time.perf_counter()
        logits = predict(model, split)  # numpy, on the host: the device has finished
        evals.append(dict(split=split, prompts=len(logits), seconds=time.perf_counter() - t0))
        return logits
    return predict_timed


def run_loop(args, a, ds, device):
    """Train and evaluate as train.py's text stage does, with train.py's arguments `a` on the data
    `ds` (see the docstring: what is timed, and how the first meeting of a shape is kept out)."""
    t_start = time.perf_counter()
    if device.type == "cuda":
        gc.collect()  # the bench's models (peft's hold reference cycles) out of the loop's peak memory
        torch.cuda.reset_peak_memory_stats(device)
    cfg = write_checkpoint(args, a.llm)
    evals = []
    with contextlib.redirect_stdout(sys.stderr):  # train.py's progress lines; stdout keeps one JSON line
        runs.seed_everything(a.seed)
        model, prompts = train.build_llm_model(a, ds)
        epoch_batches = train.llm_batches(a, ds, prompts)
        predict = timed(train.llm_predictor(a, ds, prompts), device, evals)
        build_s = time.perf_counter() - t_start
        loop.train(a, train.made_from(a, ds), model, epoch_batches, train.bce_loss, predict, ds)
    with open(os.path.join(a.out, "log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    if len(log) != LOOP_EPOCHS or [e["split"] for e in evals[-2:]] != ["valid", "test"]:
        raise RuntimeError(f"--loop: expected {LOOP_EPOCHS} epochs and a final test evaluation from loop.train, "
                           f"got {len(log)} epochs and evaluations of {[e['split'] for e in evals]}")

    def lengths(rows):
        return [len(prompts[r].ids) for r in rows]

    def eval_batches(split):  # the batches llm_predictor scores, as lists of prompt lengths
        lens = lengths(ds.idx(split))
        return [[lens[i] for i in g] for g in data.bucket_batches(lens, a.eval_batch_size, shuffle=False)]

    first, last = ([lengths(b.rows[g]) for g in b.groups] for b in (epoch_batches(1), epoch_batches(LOOP_EPOCHS)))
    samples, tokens = sum(map(len, last)), sum(map(sum, last))
    test, test_batches = evals[-1], eval_batches("test")
    seconds, rate = round(test["seconds"], 4), log[-1]["samples_per_s"]
    new_shapes = lambda lens, met: len(set(widths(lens, a.pad_multiple)) - set(widths(met, a.pad_multiple)))
    out = {"loop_train_samples_per_s": round(rate, 2), "loop_train_tokens_per_s": round(rate * tokens / samples, 1),
           "eval_split": "test", "eval_prompts": test["prompts"], "eval_seconds": seconds,
           "eval_prompts_per_s": round(test["prompts"] / seconds, 1),
           "eval_tokens_per_s": round(sum(map(sum, test_batches)) / seconds, 1)}
    out["loop"] = {
        "epochs": LOOP_EPOCHS, "iters_per_epoch": a.iters_per_epoch, "limit": a.limit,
        "batch": {"train": a.batch_size, "eval": a.eval_batch_size}, "vocab_size": cfg.vocab_size,
        "mean_prompt_tokens": round(tokens / samples, 1), "first_epoch_samples_per_s": round(log[0]["samples_per_s"], 2),
        "timed_epoch": dict(shape_stats(last, a.pad_multiple), new_shapes=new_shapes(last, first)),
        "test_eval": dict(shape_stats(test_batches, a.pad_multiple),
                          new_shapes=new_shapes(test_batches, eval_batches("valid"))),
        "evals": [dict(e, seconds=round(e["seconds"], 3)) for e in evals],
        "build_s": round(build_s, 1), "wall_s": round(time.perf_counter() - t_start, 1)}
    if device.type == "cuda":
        out["loop"]["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def loop_vs_bench(line):
    """The loop's training rate over the bench's llama.py+lora.py train step, at the same batch size
    and shape: by samples (the goal's measure) and by tokens (real prompts are shorter)."""
    bench = line["train"][Ours.name]
    return {"bench_train_samples_per_s": bench["samples_per_s"], "bench_train_tokens_per_s": bench["tokens_per_s"],
            "loop_vs_bench_train": round(line["loop_train_samples_per_s"] / bench["samples_per_s"], 3),
            "loop_vs_bench_train_tokens": round(line["loop_train_tokens_per_s"] / bench["tokens_per_s"], 3)}


# ----------------------------------------------------------------------------------------------
# --ckpt DIR: a real checkpoint on CPU, every precision mode, ours against HF + peft

# mode -> (weight dtype, bf16 autocast): what a CPU run of train.py can choose (--dtype, --amp)
MODES = {"fp32": (torch.float32, False), "fp32 weights, bf16 autocast": (torch.float32, True),
         "bf16 weights, bf16 autocast": (torch.bfloat16, True)}


def matmul_peak(dtype=torch.bfloat16, seconds=1.0):
    """GFLOP/s of a plain (2048 x 576) @ (576 x 1536) matmul on this CPU's threads: the peak a
    step's share is measured against."""
    a, b = torch.randn(2048, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
    for _ in range(3):
        a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 2048 * 576 * 1536 * n / (time.perf_counter() - t0) / 1e9


def real_batches(ds, tok, n_batches, batch_size, pad_multiple, seed):
    """Real ML-1M text-only prompts (the text stage's), tokenized by the checkpoint's tokenizer,
    bucketed by length and left-padded: (ids, mask, labels) per batch."""
    g = torch.Generator().manual_seed(seed)
    rows = ds.idx("train")[torch.randperm(len(ds.idx("train")), generator=g)[:n_batches * batch_size].numpy()]
    prompts = data.encode_prompts(ds, rows, tok, collab=False)
    order = sorted(range(len(rows)), key=lambda j: len(prompts[j].ids))
    out = []
    for b in range(n_batches):
        idx = order[b * batch_size:(b + 1) * batch_size]
        T = max(len(prompts[j].ids) for j in idx)
        ids, mask = torch.zeros(len(idx), T, dtype=torch.long), torch.zeros(len(idx), T, dtype=torch.long)
        for i, j in enumerate(idx):
            p = prompts[j].ids
            ids[i, T - len(p):], mask[i, T - len(p):] = torch.tensor(p), 1
        ids, mask = left_pad(ids, mask, pad_multiple)
        out.append((ids, mask, torch.from_numpy(ds.label[rows[idx]]).float()))
    return out


def real_phase_data(args, tok):
    """{phase: real batches}: the train phase's and the score phase's, from one load of ML-1M."""
    ds = data.load("ml1m", args.data_dir)
    return {"train": real_batches(ds, tok, args.steps, args.train_batch, args.pad_multiple, 1),
            "score": real_batches(ds, tok, args.steps, args.score_batch, args.pad_multiple, 2)}


def ckpt_impls(ckpt, dtype, with_hf, answers):
    """llama.py + lora.py and HF + peft (full logits, and logits_to_keep=1) on one checkpoint."""
    model = lora.inject(llama.load_model(ckpt, dtype), ("q_proj", "v_proj"), r=8, alpha=16, dropout=0.05)
    impls = [Ours(model, answers=answers)]
    if with_hf:
        import peft
        import transformers
        hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, attn_implementation="sdpa")
        hf = peft.get_peft_model(hf, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                     target_modules=["q_proj", "v_proj"]))
        impls += [HF(hf, None, keep_last=False, answers=answers), HF(hf, None, keep_last=True, answers=answers)]
    return impls


def run_ckpt(args):
    """Every MODE on --ckpt, train and score phases, the same real batches for all: one JSON line
    per (mode, implementation, phase), then the table the README carries."""
    tok = load_tokenizer(args.ckpt)
    answers = [tok.yes_id, tok.no_id]
    peak = matmul_peak()
    phase_data = real_phase_data(args, tok)
    rows = {}
    for mode, (dtype, amp) in MODES.items():
        impls = ckpt_impls(args.ckpt, dtype, not args.no_hf, answers)
        cfg = impls[0].model.cfg
        for phase in ("train", "score"):
            _, passes = run_phase(impls, phase, phase_data[phase], cfg, torch.device("cpu"), amp, (args.order,))
            for m in passes[args.order]:
                gflops = m.useful / m.elapsed / 1e9
                r = dict(mode=mode, impl=m.impl.name, phase=phase, tokens_per_s=round(m.tokens / m.elapsed, 1),
                         gflops=round(gflops, 1), pct_bf16_peak=round(100 * gflops / peak, 1))
                rows[mode, m.impl.name, phase] = r
                print(json.dumps(r), flush=True)
        del impls
        gc.collect()
    names = sorted({k[1] for k in rows}, key=lambda n: (n != Ours.name, n))
    print(f"\n{args.ckpt}, {torch.get_num_threads()} threads, bf16 matmul peak {peak:.0f} GFLOP/s, "
          f"{args.steps} batches per phase (train {args.train_batch}, score {args.score_batch}), tokens/s "
          "(% of the bf16 peak):\n")
    print("| implementation | mode | LoRA train step | Yes/No scoring |\n|---|---|---|---|")
    for name in names:
        for mode in MODES:
            if (mode, name, "train") in rows:
                cells = [f"{rows[mode, name, ph]['tokens_per_s']:,.0f} ({rows[mode, name, ph]['pct_bf16_peak']:.0f}%)"
                         for ph in ("train", "score")]
                print(f"| {name} | {mode} | {cells[0]} | {cells[1]} |")


def run_candidates(args):
    """Fast-path candidates for a real checkpoint's bf16 steps on the CPU, ours only, each against
    the eager base on the same batches: SDPA's math kernel, and torch.compile of every decoder
    layer (its compilation is the warm pass). Then a torch.profiler table of one base train step."""
    tok = load_tokenizer(args.ckpt)
    answers, cpu = [tok.yes_id, tok.no_id], torch.device("cpu")
    phase_data = real_phase_data(args, tok)
    for name, ctx, compile in (("eager", contextlib.nullcontext, False), ("sdpa math kernel", lambda: sdpa_kernel(SDPBackend.MATH), False),
                               ("compiled layers", contextlib.nullcontext, True)):
        [impl] = ckpt_impls(args.ckpt, torch.bfloat16, False, answers)
        if compile:
            for layer in impl.model.model.layers:
                layer.compile()
        out = dict(candidate=name)
        with ctx():
            for phase, batches_ in phase_data.items():
                warm_s, passes = run_phase([impl], phase, batches_, impl.model.cfg, cpu, True, ("alternate",))
                m = passes["alternate"][0]
                out.update({f"{phase}_tokens_per_s": round(m.tokens / m.elapsed), f"{phase}_warm_extra_s": round(warm_s[0] - m.elapsed, 1)})
        print(json.dumps(out), flush=True)
    [impl] = ckpt_impls(args.ckpt, torch.bfloat16, False, answers)
    opt = torch.optim.AdamW([p for p in impl.model.parameters() if p.requires_grad], lr=1e-4)
    m = Meter(impl, "train", opt)
    step(m, phase_data["train"][0], impl.model.cfg, cpu, True)  # warm
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(m, phase_data["train"][0], impl.model.cfg, cpu, True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


# ----------------------------------------------------------------------------------------------
# CLI


def fill_defaults(args):
    """--check runs TinyLlama's shape on CUDA in bf16 unless told otherwise, with CHECK's sizes."""
    args.shape = args.shape or ("tinyllama" if args.check else "tiny")
    args.device = args.device or ("cuda" if args.check else "cpu")
    args.dtype = args.dtype or ("bf16" if args.check and args.device.startswith("cuda") else "fp32")
    if args.check:
        for k, v in CHECK["cuda" if args.device.startswith("cuda") else "cpu"].items():
            setattr(args, k, v)
    return args


def header(args, device, bench):
    """The first keys of every one-line JSON: which run, on what, at which shape."""
    return {"bench": bench, "device": str(device), "dtype": args.dtype, "shape": args.shape,
            "layers": shape_sizes(args)["num_hidden_layers"], "pad_multiple": args.pad_multiple,
            "compile": args.compile}


def check_line(args, cfg, device, method, padding, results, versions, build_s):
    """--check's one JSON line: the alternating pass's figures per implementation, the ratios for
    every order, the shape and padding counts. A dict of dicts, so later checks add keys."""
    keep = ("tokens_per_s", "samples_per_s", "s_per_step", "tflops", "pct_peak", "pad_frac",
            "warm_extra_s", "peak_mem_mb", "step_mem_mb", "peak_rss_mb")
    out = {**header(args, device, "check"), "method": method,
           "steps": args.steps, "batch": {"train": args.train_batch, "score": args.score_batch},
           "shapes": {ph: padding[ph][f"pad_multiple_{args.pad_multiple}"]["shapes"] for ph in padding},
           "padding": padding, **versions}
    if device.type == "cuda":
        out["device_name"] = torch.cuda.get_device_name(device)
    out["ratios"] = {}
    for phase, (warm_s, passes) in results.items():
        headline = passes["alternate"]
        out[phase] = {m.impl.name: {k: v for k, v in report(m, w, cfg, args, device).items() if k in keep}
                      for m, w in zip(headline, warm_s)}
        if len(headline) > 1:
            out["ratios"][phase] = {order: ratios(meters) for order, meters in passes.items()}
    out["build_s"] = round(build_s, 1)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=["tiny", "tinyllama"], help="default: tiny (--check: tinyllama)")
    p.add_argument("--layers", type=int, help="override the number of layers")
    p.add_argument("--device", help="default: cpu (--check: cuda)")
    p.add_argument("--dtype", choices=["fp32", "bf16"],
                   help="bf16: frozen weights in bf16, LoRA in fp32, autocast to bf16. "
                        "default: fp32 (--check on cuda: bf16)")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--score-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="batches per phase (each is warmed, then timed)")
    p.add_argument("--pad-multiple", type=int, default=16, help="round batch widths up to a multiple of N")
    p.add_argument("--order", choices=ORDERS, default="alternate",
                   help="which implementation runs first on each timed batch")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="default: H100/H200 SXM bf16 dense")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers+peft comparison")
    p.add_argument("--compile", action="store_true", help="add llama.py+lora.py with torch.compile'd layers")
    p.add_argument("--check", action="store_true", help="the prepared check: CHECK's sizes, all three "
                   "orders, then --loop, one JSON line (default --shape tinyllama --device cuda --dtype bf16)")
    p.add_argument("--loop", action="store_true", help="time train.py's text stage in loop.train on ML-1M "
                   "instead of the bench's steps (train batch --train-batch, evaluation batch --score-batch)")
    p.add_argument("--loop-iters", type=int, default=100,
                   help=f"--loop: iterations per epoch, {LOOP_EPOCHS} epochs (the last is timed)")
    p.add_argument("--limit", type=int, default=0, help="--loop: only the first N rows of each split (0: all)")
    p.add_argument("--data-dir", help="--loop: the data root (default: $SASRECLLM_DATA, else data/)")
    p.add_argument("--tokenizer", default=os.environ.get("SASRECLLM_TOKENIZER"),
                   help="--loop: the Llama-2 tokenizer.model (default: $SASRECLLM_TOKENIZER)")
    p.add_argument("--ckpt", help="a real checkpoint (e.g. SmolLM2) on CPU: every precision mode, real ML-1M prompts")
    p.add_argument("--candidates", action="store_true", help="--ckpt: the fast-path candidates in bf16, and a profile")
    args = fill_defaults(p.parse_args())
    counts = dict(steps=args.steps, train_batch=args.train_batch, score_batch=args.score_batch,
                  pad_multiple=args.pad_multiple, loop_iters=args.loop_iters,
                  layers=args.layers if args.layers is not None else 1)
    bad = [f"--{k.replace('_', '-')} {v}" for k, v in counts.items() if v < 1]
    bad += [f"--{k} {v}" for k, v in (("threads", args.threads), ("limit", args.limit)) if v < 0]
    if bad:
        p.error(f"expected integers >= 1 (--threads, --limit >= 0), got {', '.join(bad)}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device {args.device}: expected a torch device such as cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device is available here (try --device cpu)")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.ckpt:
            run_candidates(args) if args.candidates else run_ckpt(args)
        elif args.check or args.loop:
            print(json.dumps(run_with_loop(args, device)), flush=True)
        else:
            run(args, device)
    except (data.DataError, FileNotFoundError) as e:  # missing or bad input: exit 2, as train.py
        print(runs.error_line(e), file=sys.stderr)
        return 2
    except (RuntimeError, ValueError, OSError, ArithmeticError) as e:  # e.g. out of memory: one line
        print(runs.error_line(e), file=sys.stderr)
        return 1
    return 0


def run_with_loop(args, device):
    """--loop's or --check's one JSON line. The data and tokenizer are checked before the bench
    runs, so that a missing file fails in a second, not after it."""
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:  # the checkpoint and the run
        a = loop_args(args, tmp)
        ds = train.load_data(a)
        line = run(args, device) if args.check else header(args, device, "loop")
        line.update(run_loop(args, a, ds, device))
    if args.check:
        line.update(loop_vs_bench(line))
    line["wall_s"] = round(time.perf_counter() - t_start, 1)
    return line


def run(args, device):
    """The bench's two phases; returns --check's line, or prints one JSON line per figure."""
    t_start = time.perf_counter()
    dtype = llama.DTYPES[LLAMA_DTYPE[args.dtype]]
    amp = args.dtype == "bf16"

    versions = {"torch": torch.__version__}
    if not args.no_hf:
        try:
            import peft
            import transformers
            versions.update(transformers=transformers.__version__, peft=peft.__version__)
        except ImportError:
            versions["note"] = "transformers/peft not installed: no comparison"
    impls = build(shape_sizes(args), dtype, device, with_hf="peft" in versions, compile=args.compile)
    cfg = impls[0].model.cfg
    build_s = time.perf_counter() - t_start

    phase_data = {"train": batches(args.steps, args.train_batch, cfg.vocab_size, seed=1, pad_multiple=args.pad_multiple),
                  "score": batches(args.steps, args.score_batch, cfg.vocab_size, seed=2, pad_multiple=args.pad_multiple)}
    padding = {phase: {f"pad_multiple_{n}": shape_stats([mask.sum(1).tolist() for _, mask, _ in d], n)
                       for n in sorted({1, 16, args.pad_multiple})}
               for phase, d in phase_data.items()}
    orders = ORDERS if args.check else (args.order,)
    method = ("warm pass: every implementation runs every batch (every shape) once before any timing; "
              f"timed order: {', '.join(orders)} (alternate: the first implementation rotates per batch)")
    if not args.check:
        print(json.dumps({"method": method, "pad_multiple": args.pad_multiple, "padding": padding, **versions}))

    results = {}
    for phase in ("train", "score"):
        warm_s, passes = run_phase(impls, phase, phase_data[phase], cfg, device, amp, orders)
        results[phase] = warm_s, passes
        if args.check:
            continue
        for order, meters in passes.items():
            for m, w in zip(meters, warm_s):
                print(json.dumps(dict(report(m, w, cfg, args, device), order=order)), flush=True)
            if len(meters) > 1:
                print(json.dumps(dict(phase=phase, order=order, **ratios(meters))), flush=True)
    if args.check:
        return check_line(args, cfg, device, method, padding, results, versions, build_s)


if __name__ == "__main__":
    sys.exit(main())
