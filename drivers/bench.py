"""Throughput of the SASRecLLM/TALLRec workload: llama.py + lora.py against HF transformers + peft,
in one process, on the same weights and the same batches. A harness, not the lesson.

  train: forward, BCE on z_Yes - z_No at the last position, backward, AdamW on LoRA only (r 8,
         alpha 16, dropout 0.05 on q_proj and v_proj);   score: the forward and the two logits.
Fair by construction: every implementation first runs every batch (every shape) once, then the timed
passes rotate which one goes first on each batch (--check times each order); warm_extra_s is what
first meetings cost. FLOPs count useful work on real tokens; pct_peak is of PEAK_TFLOPS on CUDA,
on a CPU of what a plain matmul reaches on the same threads (bf16, or fp32 where it is faster).

    python -m drivers.bench --check               # the prepared GPU check: every order, then train.py's loop
    python -m drivers.bench --check --device cpu --shape tiny     # the same on CPU, in seconds
    python -m drivers.bench --ckpt checkpoints/SmolLM2-135M-Instruct --threads 2   # every CPU precision mode
    python -m drivers.bench --ckpt DIR --candidates   # faster variants of our bf16 step, then a profile
"""
import argparse
import contextlib
import copy
import gc
import importlib.metadata
import importlib.util
import json
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

if not __package__:  # run as a file (python drivers/x.py): the lesson's modules are one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))  # (as python: links resolved)
import data
import llama
import loop
import lora
import train
from tools import backbones, limits, runs, sources, tables

TINY = dict(vocab_size=1000, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2)
SHAPES = {"tiny": TINY, "tinyllama": {k: backbones.TINYLLAMA[k] for k in TINY}}
YES, NO = 3869, 1939  # the Llama-2 ids (tiny shape: taken modulo its vocabulary)
ORDERS = ("alternate", "ours-first", "hf-first")
LLAMA_DTYPE = {"fp32": "float32", "bf16": "bfloat16"}  # --dtype in llama.DTYPES' (and train.py's) names
PEAK_TFLOPS = 989.0  # H100/H200 SXM, bf16 dense
LOOP_EPOCHS = 2  # --check's loop: the first epoch meets the batch shapes, the second is timed
# --check's sizes: on one H200 at TinyLlama's shape, ~75 s of bench (results/bench/) and 90-160 s of loop (estimated)
CHECK = {"cuda": dict(steps=24, train_batch=16, score_batch=64, loop_iters=100, limit=0),
         "cpu": dict(steps=2, train_batch=2, score_batch=4, loop_iters=4, limit=64)}
# --ckpt: mode -> (weight dtype, bf16 autocast), what a CPU run of train.py can choose (--dtype, --amp)
MODES = {"fp32": (torch.float32, False), "fp32 weights, bf16 autocast": (torch.float32, True),
         "bf16 weights, bf16 autocast": (torch.bfloat16, True)}


def bucketed(seqs, batch_size, pad_multiple=1, seed=0):
    """(idx, ids, mask) of each batch of the id lists seqs, bucketed (shuffled) as train.py buckets them; ids
    and mask (B, T) LEFT-padded with masked 0s to the longest, rounded up to pad_multiple."""
    for idx in data.bucket_batches([len(s) for s in seqs], batch_size, shuffle=True, seed=seed):
        T = -(-max(len(seqs[j]) for j in idx) // pad_multiple) * pad_multiple  # rounded up
        yield idx, data.pad_left([seqs[j] for j in idx], T), data.pad_left([[1] * len(seqs[j]) for j in idx], T)


def random_batches(n_batches, batch_size, vocab, seed, pad_multiple):
    """Random ids at ML-1M's prompt lengths (normal, mean 195, p95 230), random 0/1 labels."""
    g = torch.Generator().manual_seed(seed)
    lengths = (195 + 21.3 * torch.randn(n_batches * batch_size, generator=g)).round().clamp(40, 400).long()
    seqs = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths.tolist()]
    labels = torch.randint(0, 2, (len(seqs),), generator=g).float()
    return [(ids, mask, labels[idx]) for idx, ids, mask in bucketed(seqs, batch_size, pad_multiple, seed=seed)]


def real_batches(ds, tok, n_batches, batch_size, pad_multiple, seed):
    """Text-only prompts (the text stage's) of random train rows, tokenized by tok, and their labels."""
    g = torch.Generator().manual_seed(seed)
    rows = ds.idx("train")[torch.randperm(len(ds.idx("train")), generator=g)[:n_batches * batch_size].numpy()]
    seqs = [p.ids for p in data.encode_prompts(ds, rows, tok, collab=False)]
    labels = torch.from_numpy(ds.label[rows]).float()
    return [(ids, mask, labels[idx]) for idx, ids, mask in bucketed(seqs, batch_size, pad_multiple, seed=seed)]


def shape_stats(lengths, multiple):
    """Distinct widths and pad fraction of batches (lists of prompt lengths) padded to `multiple`."""
    ws = [-(-max(lens) // multiple) * multiple for lens in lengths]  # rounded up
    total = sum(w * len(lens) for w, lens in zip(ws, lengths))
    return {"shapes": len(set(ws)), "pad_frac": round(1 - sum(map(sum, lengths)) / total, 4)}


def flops(cfg, lengths, train):
    """Score 2 N T + A, train 4 N T + 3 A (N: the 7 projections' weights, A: attention's T^2 terms)."""
    D, I, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    attn_dim, kv_dim = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    N = L * (D * attn_dim * 2 + D * kv_dim * 2 + 3 * D * I)
    A = sum(4 * L * t * t * attn_dim for t in lengths)
    return (4 * N * sum(lengths) + 3 * A) if train else (2 * N * sum(lengths) + A)


class Ours:
    """llama.py + lora.py, eager or a variant: "compiled" decoder layers, or "sdpa math" (SDPA's kernel)."""
    name = "llama.py+lora.py"

    def __init__(self, model, answers, variant="eager"):
        self.model, self.answers, self.variant = model, answers, variant
        self.name = Ours.name if variant == "eager" else f"{Ours.name} {variant}"

    def yes_no(self, ids, mask):
        with sdpa_kernel(SDPBackend.MATH) if self.variant == "sdpa math" else contextlib.nullcontext():
            h = self.model(input_ids=ids, attention_mask=mask)[:, -1]    # (B, D)
        return self.model.token_logits(h, self.answers)


class HF:
    def __init__(self, model, answers, keep_last):
        self.model, self.answers, self.keep_last = model, answers, keep_last
        self.name = "hf+peft last" if keep_last else "hf+peft"

    def yes_no(self, ids, mask):
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                            logits_to_keep=int(self.keep_last)).logits  # logits_to_keep=0: every position's
        return logits[:, -1, self.answers].float()   # (B, 2) of (B, T or 1, V)


def line_up(model, answers, variants=(), hf=None):
    """[Ours, each variant of ours, HF + peft, HF + peft with logits_to_keep=1 (given hf)], LoRA'd."""
    impls = [Ours(lora.inject(model, ("q_proj", "v_proj"), r=8, alpha=16, dropout=0.05), answers)]
    for variant in variants:
        twin = copy.deepcopy(model)  # the same weights and LoRA init: the same scores
        for layer in twin.model.layers if variant == "compiled" else []:
            layer.compile()
        impls.append(Ours(twin, answers, variant))
    if hf is not None:
        import peft
        hf = peft.get_peft_model(hf, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                     target_modules=["q_proj", "v_proj"]))
        impls += [HF(hf, answers, keep_last=False), HF(hf, answers, keep_last=True)]
    return impls


def build(sizes, dtype, device, with_hf=True, variants=()):
    """line_up on random weights of the given sizes, which HF's model shares (the same tensors)."""
    cfg = llama.LlamaConfig(**sizes)
    state = backbones.random_state(cfg, dtype, device)
    with torch.device("meta"):
        model = llama.Llama(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    hf = None
    if with_hf:
        import transformers
        hf_cfg = transformers.LlamaConfig(**sizes, rms_norm_eps=cfg.rms_norm_eps, attn_implementation="sdpa",
                                          max_position_embeddings=cfg.max_position_embeddings)
        with torch.device(device):
            hf = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype)
        hf.load_state_dict(state, strict=True, assign=True)  # HF's own init is freed
        hf.to(device)  # only what the state dict lacks: RoPE's inv_freq buffers
    return line_up(model, [YES % cfg.vocab_size, NO % cfg.vocab_size], variants, hf)


class Meter:
    """One implementation's steps of one phase in one pass; peak_mem: its steps' most CUDA memory (MB)."""

    def __init__(self, impl, phase, opt):
        self.impl, self.phase, self.opt = impl, phase, opt
        self.elapsed = self.tokens = self.padded = self.samples = self.useful = self.steps = self.peak_mem = 0


def step(m, batch, cfg, device, amp):
    ids, mask, labels = batch
    m.impl.model.train(m.phase == "train")
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the clock below counts this step's work only
        torch.cuda.reset_peak_memory_stats()   # so the peak below is this step's, this impl's
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp), torch.set_grad_enabled(m.phase == "train"):
        logits = m.impl.yes_no(ids, mask)                                  # (B, 2)
        loss = F.binary_cross_entropy_with_logits(logits[:, 0] - logits[:, 1], labels)
    if m.phase == "train":
        loss.backward()
        m.opt.step()
        m.opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    m.elapsed += time.perf_counter() - t0
    lengths = mask.sum(1).tolist()
    m.tokens, m.padded, m.samples = m.tokens + sum(lengths), m.padded + mask.numel(), m.samples + len(lengths)
    m.useful, m.steps = m.useful + flops(cfg, lengths, m.phase == "train"), m.steps + 1
    if device.type == "cuda":
        m.peak_mem = max(m.peak_mem, torch.cuda.max_memory_allocated() / 2**20)


def turn(n_impls, order, i, n_ours=1):
    """Which implementations run batch i, first to last. The first n_ours are ours."""
    first = {"ours-first": 0, "hf-first": n_ours}.get(order, i)  # alternate: each goes first in turn
    return [(first + j) % n_impls for j in range(n_impls)]


def run_phase(impls, phase, batches, device, amp, orders):
    """The warm pass (every implementation, every batch, untimed for the figures), then one timed
    pass over the same batches per order. Returns (warm-pass seconds per impl, {order: [Meter]})."""
    batches, cfg = [tuple(t.to(device) for t in batch) for batch in batches], impls[0].model.cfg
    opts = [torch.optim.AdamW([p for p in impl.model.parameters() if p.requires_grad], lr=1e-4,
                              fused=device.type == "cuda") if phase == "train" else None for impl in impls]
    warm = [Meter(impl, phase, opt) for impl, opt in zip(impls, opts)]
    for m in warm:
        for batch in batches:
            step(m, batch, cfg, device, amp)
    passes = {}
    for order in orders:
        passes[order] = [Meter(impl, phase, opt) for impl, opt in zip(impls, opts)]
        for i, batch in enumerate(batches):
            for j in turn(len(impls), order, i, sum(isinstance(impl, Ours) for impl in impls)):
                step(passes[order][j], batch, cfg, device, amp)
    return [m.elapsed for m in warm], passes


def ratios(meters):
    """Ours over each HF variant's tokens/s (vs_hf_peft...); our variants' also over eager's (compiled_vs_...)."""
    rate = lambda m: m.tokens / m.elapsed
    tag = lambda m: m.impl.name.replace(Ours.name, "").strip().replace("+", "_").replace(" ", "_") or "eager"
    ours, hf = [m for m in meters if isinstance(m.impl, Ours)], [m for m in meters if isinstance(m.impl, HF)]
    return {("" if o is ours[0] else tag(o) + "_") + "vs_" + tag(m): round(rate(o) / rate(m), 3)
            for o in ours for m in hf + ([ours[0]] if o is not ours[0] else [])}


def measure(impls, batches, device, amp, orders, peak_tflops):
    """{phase: {implementation: figures of the first order's pass}, "ratios": {phase: {order: ...}}}."""
    out = {"ratios": {}}
    for phase, d in batches.items():
        warm_s, passes = run_phase(impls, phase, d, device, amp, orders)
        out["ratios"][phase] = {order: ratios(meters) for order, meters in passes.items()}
        out[phase] = {}
        for m, w in zip(passes[orders[0]], warm_s):
            tflops = m.useful / m.elapsed / 1e12
            out[phase][m.impl.name] = {
                "tokens_per_s": round(m.tokens / m.elapsed, 1), "samples_per_s": round(m.samples / m.elapsed, 2),
                "pad_frac": round(1 - m.tokens / m.padded, 3), "s_per_step": round(m.elapsed / m.steps, 4),
                "tflops": round(tflops, 3), "pct_peak": round(100 * tflops / peak_tflops, 2),
                "warm_extra_s": round(w - m.elapsed, 3),
                **({"peak_mem_mb": round(m.peak_mem, 1)} if m.peak_mem else {})}
    return out


def peak(device, seconds=1.0):
    """(TFLOP/s, its kind): PEAK_TFLOPS on CUDA; on a CPU, the faster plain (2048 x 576) @ (576 x 1536) matmul
    on this process's threads, bf16 or fp32: bf16 where the CPU has native bf16 units (AMX: about 10x fp32),
    fp32 where bf16 is emulated (and not timed: one emulated bf16 matmul takes seconds on an AVX2-only CPU)."""
    if device.type == "cuda":
        return PEAK_TFLOPS, "CUDA"
    rates = []
    for dtype, kind in ((torch.bfloat16, "bf16"), (torch.float32, "fp32"))[0 if runs.native_bf16() else 1:]:
        a, b = torch.randn(2048, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
        a @ b  # a warm-up, untimed
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            n += 1
        rates.append((round(2 * 2048 * 576 * 1536 * n / (time.perf_counter() - t0) / 1e12, 3), kind))
    return max(rates)


def run(args, device):
    """The bench on random weights: its one JSON line, as a dict."""
    with_hf = not args.no_hf and importlib.util.find_spec("peft") is not None
    cfg, T = llama.LlamaConfig(**SHAPES[args.shape]), -(-400 // args.pad_multiple) * args.pad_multiple  # (the longest)
    limits.fits(args.steps * (args.train_batch + args.score_batch) * T * 52 + limits.activations(  # (ids: lists, tensors)
        cfg, max(args.train_batch, args.score_batch), T, cfg.num_hidden_layers) * (1 + with_hf),
        f"--steps {args.steps} --train-batch {args.train_batch} --score-batch {args.score_batch} --pad-multiple "
        f"{args.pad_multiple} at the {args.shape} shape: this bench", device)
    impls = build(SHAPES[args.shape], llama.DTYPES[LLAMA_DTYPE[args.dtype]], device, with_hf,
                  ("compiled",) if args.compile else ())
    vocab = impls[0].model.cfg.vocab_size
    batches = {"train": random_batches(args.steps, args.train_batch, vocab, 1, args.pad_multiple),
               "score": random_batches(args.steps, args.score_batch, vocab, 2, args.pad_multiple)}
    padding = {ph: {f"pad_multiple_{n}": shape_stats([mask.sum(1).tolist() for _, mask, _ in d], n)
                    for n in sorted({1, 16, args.pad_multiple})} for ph, d in batches.items()}
    orders = ORDERS if args.check else ORDERS[:1]
    line = {"bench": "check" if args.check else "bench", "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": args.dtype, "shape": args.shape, "pad_multiple": args.pad_multiple, "compile": args.compile,
            "method": f"warm pass over every batch (every shape) first; timed passes: {', '.join(orders)}",
            "steps": args.steps, "batch": {"train": args.train_batch, "score": args.score_batch},
            "shapes": {ph: padding[ph][f"pad_multiple_{args.pad_multiple}"]["shapes"] for ph in padding},
            "padding": padding, "peak_tflops": peak(device)[0],
            **{m: importlib.metadata.version(m) for m in ("torch", "transformers", "peft")[:3 if with_hf else 1]}}
    return dict(line, **measure(impls, batches, device, args.dtype == "bf16", orders, line["peak_tflops"]))


def run_loop(args, device):
    """The bench, then train.py's text stage on a random checkpoint of the bench's shape, batch sizes, dtype
    and padding (the data read first: a missing file fails at once); its last epoch's rate against the bench."""
    t_start = time.perf_counter()
    if not args.tokenizer:
        raise FileNotFoundError("--check needs Llama-2's tokenizer.model: pass --tokenizer, or set SASRECLLM_TOKENIZER")
    tok = llama.load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:  # the checkpoint and the run
        a = train.parse_args([str(x) for x in [
            "--stage", "text", "--llm", os.path.join(tmp, "llm"), "--out", os.path.join(tmp, "run"), "--device",
            args.device, "--dtype", LLAMA_DTYPE[args.dtype], "--amp", "bf16" if args.dtype == "bf16" else "none",
            "--pad-multiple", args.pad_multiple, "--batch-size", args.train_batch, "--eval-batch-size",
            args.score_batch, "--iters-per-epoch", args.loop_iters, "--max-epochs", LOOP_EPOCHS, "--patience",
            LOOP_EPOCHS, "--limit", args.limit] + (["--data-dir", args.data_dir] if args.data_dir else [])])
        ds = train.load_data(a)
        line, t_loop, sizes = run(args, device), time.perf_counter(), SHAPES[args.shape]
        # the tokenizer's special ids, and a vocabulary no smaller than its (its ids must index the table)
        cfg = llama.LlamaConfig(**{**sizes, "vocab_size": max(sizes["vocab_size"], tok.vocab_size)},
                                torch_dtype=a.dtype, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
        backbones.write_random(a.llm, cfg, args.tokenizer, llama.DTYPES[a.dtype])
        with contextlib.redirect_stdout(sys.stderr):  # train.py's progress lines; stdout keeps one JSON line
            runs.seed_everything(a.seed)
            model, prompts = train.build_llm_model(a, ds)
            epoch_batches = train.llm_batches(a, ds, prompts)
            loop.train(a, train.made_from(a, ds), model, epoch_batches, train.bce_loss,
                       train.llm_predictor(a, ds, prompts), ds)
        log = tables.read_log(a.out)[-1]
    first, last = ([[len(prompts[r].ids) for r in b.rows[g]] for g in b.groups]
                   for b in (epoch_batches(1), epoch_batches(LOOP_EPOCHS)))
    rate, samples, valid = log["samples_per_s"], sum(map(len, last)), ds.idx("valid")
    tokens, bench = sum(map(sum, last)) / samples, line["train"][Ours.name]  # tokens: of the mean prompt
    valid_s = log["seconds"] - samples / rate  # the epoch but its steps: the valid pass (and two small checkpoints)
    shapes = lambda batches: shape_stats(batches, a.pad_multiple)["shapes"]
    line.update(loop_train_samples_per_s=round(rate, 2), loop_train_tokens_per_s=round(rate * tokens, 1),
                loop_vs_bench_train=round(rate / bench["samples_per_s"], 3),
                loop_vs_bench_train_tokens=round(rate * tokens / bench["tokens_per_s"], 3),
                loop_valid_prompts_per_s=round(len(valid) / valid_s, 1),
                loop_valid_tokens_per_s=round(sum(len(prompts[r].ids) for r in valid) / valid_s, 1),
                loop={"iters_per_epoch": a.iters_per_epoch, "limit": a.limit, "mean_prompt_tokens": round(tokens, 1),
                      "timed_epoch": dict(shape_stats(last, a.pad_multiple), new_shapes=shapes(first + last) - shapes(
                          first)), "wall_s": round(time.perf_counter() - t_loop, 1)})
    return dict(line, wall_s=round(time.perf_counter() - t_start, 1))


def run_ckpt(args):
    """Every MODE on --ckpt (--candidates: bf16 only, our variants and no HF, then a profile of one
    eager train step), on the same real batches: one JSON line per mode, then results/README.md's table."""
    cpu, tok, ds, lines = torch.device("cpu"), llama.load_tokenizer(args.ckpt), data.load("ml1m", args.data_dir), {}
    batches = {"train": real_batches(ds, tok, args.steps, args.train_batch, args.pad_multiple, 1),
               "score": real_batches(ds, tok, args.steps, args.score_batch, args.pad_multiple, 2)}
    (top, kind), variants = peak(cpu), ("sdpa math", "compiled") if args.candidates else ()
    for mode in list(MODES)[-1:] if args.candidates else MODES:
        (dtype, amp), hf = MODES[mode], None
        ours = llama.load(args.ckpt, dtype)[0]  # first: its checks (config.json, the tokenizer's ids) in one line
        if not (args.no_hf or args.candidates):  # the candidates are ours only
            import transformers
            hf = transformers.AutoModelForCausalLM.from_pretrained(args.ckpt, dtype=dtype, attn_implementation="sdpa",
                                                                   local_files_only=True, use_safetensors=True)
        impls = line_up(ours, [tok.yes_id, tok.no_id], variants, hf)
        lines[mode] = measure(impls, batches, cpu, amp, ORDERS[:1], top)
        print(json.dumps({"mode": mode, "peak_tflops": top, **lines[mode]}), flush=True)
        if args.candidates:  # a profile of one more eager train step
            m = Meter(impls[0], "train", torch.optim.AdamW([p for p in impls[0].model.parameters() if p.requires_grad]))
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                step(m, batches["train"][0], impls[0].model.cfg, cpu, True)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        del impls, hf
        gc.collect()  # this mode's models now: peft's hold reference cycles
    print(f"\n{args.ckpt}, {torch.get_num_threads()} threads, {kind} matmul peak {top * 1e3:.0f} GFLOP/s, "
          f"{args.steps} batches per phase (train {args.train_batch}, score {args.score_batch}), tokens/s "
          f"(% of the {kind} peak):\n\n| implementation | mode | LoRA train step | Yes/No scoring |\n|---|---|---|---|")
    for name in list(lines.values())[0]["train"]:  # the implementations, in their order
        for mode, line in lines.items():
            cells = [f"{line[ph][name]['tokens_per_s']:,.0f} ({line[ph][name]['pct_peak']:.0f}%)" for ph in batches]
            print(f"| {name} | {mode} | {' | '.join(cells)} |")


SIZE = runs.number(1, 4096, int)  # a batch, a step count, a pad multiple: a bench's sizes, far past any it needs


@runs.cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--shape", choices=list(SHAPES), help="default: tiny (--check: tinyllama)")
    p.add_argument("--device", type=runs.device, help="default: cpu (--check: cuda)")
    p.add_argument("--dtype", choices=list(LLAMA_DTYPE), help="bf16: bf16 weights and autocast (--check on cuda)")
    p.add_argument("--train-batch", type=SIZE, default=16)
    p.add_argument("--score-batch", type=SIZE, default=64)
    p.add_argument("--steps", type=SIZE, default=3, help="batches per phase (each is warmed, then timed)")
    p.add_argument("--pad-multiple", type=SIZE, default=16, help="round batch widths up to a multiple of N")
    p.add_argument("--threads", type=runs.non_negative, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers+peft comparison")
    p.add_argument("--compile", action="store_true", help="add llama.py+lora.py with torch.compile'd layers")
    p.add_argument("--check", action="store_true", help="the GPU check: CHECK's sizes, every order, then the loop")
    p.add_argument("--data-dir", type=runs.path, help="the data root (default: $SASRECLLM_DATA, else data/)")
    p.add_argument("--tokenizer", type=runs.path, default=os.environ.get("SASRECLLM_TOKENIZER"),
                   help="--check: Llama-2's tokenizer")
    p.add_argument("--ckpt", type=runs.path,
                   help="a real checkpoint (e.g. SmolLM2) on CPU: every precision mode, real ML-1M prompts")
    p.add_argument("--candidates", action="store_true", help="--ckpt: our variants in bf16, and a profile")
    args = p.parse_args(argv)
    args.shape = args.shape or ("tinyllama" if args.check else "tiny")
    args.device = args.device or ("cuda" if args.check else "cpu")
    args.dtype = args.dtype or ("bf16" if args.check and args.device.startswith("cuda") else "fp32")
    if args.check:
        vars(args).update(CHECK["cuda" if args.device.startswith("cuda") else "cpu"])
    if args.threads:
        limits.check_threads(args.threads)
        torch.set_num_threads(args.threads)
    runs.check_device(args.device)
    if (args.compile or args.candidates) and (cache := os.environ.get("TORCHINDUCTOR_CACHE_DIR")):  # (kernels land there)
        runs.refuse_overlap(cache, [args.ckpt, args.tokenizer, *sources.input_dirs("ml1m", args.data_dir or data.DATA_DIR)],
                            "TORCHINDUCTOR_CACHE_DIR")
    if args.ckpt:
        return run_ckpt(args)
    print(json.dumps((run_loop if args.check else run)(args, torch.device(args.device))))


if __name__ == "__main__":
    sys.exit(main())
