"""Throughput of the SASRecLLM/TALLRec workload on llama.py + lora.py, and on HF transformers + peft.

Two phases, each printed as one JSON line per implementation:
  train: forward, BCE on the logit("Yes") - logit("No") difference at the last position, backward,
         AdamW on the LoRA parameters only (r=8, alpha=16 on q_proj and v_proj; batch 16);
  score: forward and the two logits without gradients (batch 64).
Prompt lengths are drawn like SASRecLLM's ML-1M prompts (normal, mean 195, p95 230), sorted into
length buckets so that a batch pads little, and LEFT-padded. Weights are random: speed only.

llama.py computes the two lm_head rows it needs. HF's LlamaForCausalLM by default computes the
full-vocabulary logits at every position ("hf+peft"); "hf+peft last" passes logits_to_keep=1.
Both run in the same process on the same weights, and the ratios are printed at the end.

FLOPs count useful work on real (unpadded) tokens: N = weights of the 7 projections in all layers
(embeddings and lm_head excluded), A = 4 * layers * T^2 * (heads * head_dim) per sequence of
T tokens (scores and weighted sum, without the causal half-saving).
  score = 2 N T + A;  train = 4 N T + 3 A   (the frozen weights need input gradients only;
  attention's backward is twice its forward; LoRA's own cost is negligible).

    python bench.py --shape tiny
    python bench.py --shape tinyllama --layers 2 --train-batch 4 --score-batch 8 --steps 2
    python bench.py --shape tinyllama --device cuda --dtype bf16 --peak-tflops 989

Seen on the 2-core shared CPU box (fp32, --threads 1, others' jobs running; tokens/s, noisy):
  tiny:                   train 7229 vs hf+peft 7412 (0.98x); score 21088 vs 17847 (1.18x)
  tinyllama --layers 2, train batch 4, score batch 8, 2 steps:
                          train 274 vs 175 (1.57x; 0.95x vs logits_to_keep=1);
                          score 549 vs 288 (1.90x; 1.35x vs logits_to_keep=1)
No GPU run yet: the bf16/CUDA path (fused AdamW, SDPA, TFLOP/s) is written but unmeasured.
"""
import argparse
import json
import math
import resource
import time

import torch
import torch.nn.functional as F

import llama
import lora

TINY = dict(vocab_size=1000, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2)
YES, NO = 3869, 1939  # the Llama-2 ids (tiny shape: taken modulo its vocabulary)


def batches(n_batches, batch_size, vocab, seed):
    """Length-bucketed, left-padded batches of random ids and random 0/1 labels."""
    g = torch.Generator().manual_seed(seed)
    n = n_batches * batch_size
    lengths = (195 + 21.3 * torch.randn(n, generator=g)).round().clamp(40, 400).long()  # p95 = 230
    lengths = lengths.sort().values                                   # bucketing: similar lengths together
    out = []
    for b in torch.randperm(n_batches, generator=g).tolist():
        lens = lengths[b * batch_size:(b + 1) * batch_size]
        T = int(lens.max())
        pos = torch.arange(T)
        mask = (pos[None, :] >= T - lens[:, None]).long()             # (B, T), 0 = left padding
        ids = torch.randint(3, vocab, (batch_size, T), generator=g) * mask
        labels = torch.randint(0, 2, (batch_size,), generator=g).float()
        out.append((ids, mask, labels))
    return out


def flops(cfg, lengths, train):
    D, I, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    attn_dim, kv_dim = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    N = L * (D * attn_dim * 2 + D * kv_dim * 2 + 3 * D * I)
    tokens = sum(lengths)
    A = sum(4 * L * t * t * attn_dim for t in lengths)
    return (4 * N * tokens + 3 * A) if train else (2 * N * tokens + A)


class Ours:
    name = "llama.py+lora.py"

    def __init__(self, model):
        self.model = model

    def yes_no(self, ids, mask):
        h = self.model(input_ids=ids, attention_mask=mask)[:, -1]    # (B, D)
        return self.model.token_logits(h, [YES % self.model.cfg.vocab_size, NO % self.model.cfg.vocab_size])


class HF:
    def __init__(self, model, vocab, keep_last):
        self.model, self.vocab, self.keep_last = model, vocab, keep_last
        self.name = "hf+peft last" if keep_last else "hf+peft"

    def yes_no(self, ids, mask):
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        kw = {"logits_to_keep": 1} if self.keep_last else {}
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, **kw).logits
        return logits[:, -1, [YES % self.vocab, NO % self.vocab]].float()   # (B, 2) of (B, T, V)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Meter:
    """Accumulates one implementation's timed steps of one phase."""

    def __init__(self, impl, phase, device):
        self.impl, self.phase = impl, phase
        params = [p for p in impl.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda") if phase == "train" else None
        self.elapsed = self.tokens = self.padded = self.samples = self.useful = self.steps = 0
        self.extra_mem = 0.0  # CUDA: most memory a step allocated on top of what was resident before it


def step(m, batch, cfg, device, amp, timed):
    ids, mask, labels = (t.to(device) for t in batch)
    m.impl.model.train(m.phase == "train")
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        with torch.set_grad_enabled(m.phase == "train"):
            logits = m.impl.yes_no(ids, mask)                                  # (B, 2)
            loss = F.binary_cross_entropy_with_logits(logits[:, 0] - logits[:, 1], labels)
    if m.phase == "train":
        loss.backward()
        m.opt.step()
        m.opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    if timed:
        lengths = mask.sum(1).tolist()
        m.elapsed += time.perf_counter() - t0
        m.tokens += sum(lengths)
        m.padded += mask.numel()
        m.samples += len(lengths)
        m.useful += flops(cfg, lengths, m.phase == "train")
        m.steps += 1
        if device.type == "cuda":
            m.extra_mem = max(m.extra_mem, (torch.cuda.max_memory_allocated() - before) / 2**20)


def report(m, cfg, args, device):
    tflops = m.useful / m.elapsed / 1e12
    r = {"impl": m.impl.name, "phase": m.phase, "shape": args.shape, "layers": cfg.num_hidden_layers,
         "device": str(device), "dtype": args.dtype, "batch": args.train_batch if m.phase == "train" else args.score_batch,
         "steps": m.steps, "tokens_per_s": round(m.tokens / m.elapsed, 1),
         "samples_per_s": round(m.samples / m.elapsed, 2), "pad_frac": round(1 - m.tokens / m.padded, 3),
         "s_per_step": round(m.elapsed / m.steps, 4), "tflops": round(tflops, 3),
         "pct_peak": round(100 * tflops / args.peak_tflops, 2)}
    if device.type == "cuda":
        r["step_mem_mb"] = round(m.extra_mem, 1)
        r["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        r["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # whole process
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=["tiny", "tinyllama"], default="tiny")
    p.add_argument("--layers", type=int, help="override the number of layers")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: frozen weights in bf16, LoRA in fp32, autocast to bf16")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--score-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="timed steps per phase")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="default: H100 SXM bf16 dense")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers+peft comparison")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    amp = args.dtype == "bf16"

    d = dict(TINY) if args.shape == "tiny" else {k: llama.TINYLLAMA[k] for k in TINY}
    if args.layers:
        d["num_hidden_layers"] = args.layers
    cfg = llama.LlamaConfig(**d)
    torch.manual_seed(0)
    with torch.device(device):
        model = llama.Llama(cfg).to(dtype)

    n = args.steps + args.warmup
    train_data = batches(n, args.train_batch, cfg.vocab_size, seed=1)
    score_data = batches(n, args.score_batch, cfg.vocab_size, seed=2)

    impls = []
    if not args.no_hf:
        try:
            import peft
            import transformers
            hf_cfg = transformers.LlamaConfig(**d, rms_norm_eps=cfg.rms_norm_eps,
                                              max_position_embeddings=cfg.max_position_embeddings,
                                              attn_implementation="sdpa")
            with torch.device(device):
                hf = transformers.LlamaForCausalLM(hf_cfg).to(dtype)
            hf.load_state_dict(model.state_dict())  # the same base weights
            hf = peft.get_peft_model(hf, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                         target_modules=["q_proj", "v_proj"]))
            impls = [HF(hf, cfg.vocab_size, keep_last=False), HF(hf, cfg.vocab_size, keep_last=True)]
        except ImportError:
            print(json.dumps({"note": "transformers/peft not installed: no comparison"}))
    lora.inject(model, ("q_proj", "v_proj"), r=8, alpha=16, dropout=0.05)
    impls.insert(0, Ours(model))

    # The implementations take turns on each batch, so load from other jobs hits them alike.
    for phase, data in [("train", train_data), ("score", score_data)]:
        meters = [Meter(impl, phase, device) for impl in impls]
        for i, batch in enumerate(data):
            for m in meters:
                step(m, batch, cfg, device, amp, timed=i >= args.warmup)
        for m in meters:
            print(json.dumps(report(m, cfg, args, device)), flush=True)
        if len(meters) == 3:
            ours, hf_all, hf_last = (m.tokens / m.elapsed for m in meters)
            print(json.dumps({"phase": phase, "speedup_vs_hf_peft": round(ours / hf_all, 2),
                              "speedup_vs_hf_peft_last": round(ours / hf_last, 2)}), flush=True)


if __name__ == "__main__":
    main()
