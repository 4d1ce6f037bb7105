"""Training for SASRecLLM's stages. This file holds the CRM stages (the paper's Section 4.1
baselines and the SASRec pre-training of Section 3.2): sasrec, pop, mf, ncf, gru4rec, mc.

    python train.py --stage sasrec --data ml1m --out runs/sasrec

One runner, `fit`, trains any model whose loss and predictions are given as functions:
AdamW, linear warm-up then cosine decay, optional autocast (bf16, or fp16 with a GradScaler),
gradient clipping, early stopping on valid AUC, atomic checkpoints (every 8 epochs, best, last),
`--resume`, a log.jsonl line and a progress line per epoch. At the end it reloads best.pt and
writes metrics.json = eval.split_report(...): valid, test and test's seen/unseen/warm/cold parts.

Pop and MC are fitted in closed form from the train rows (`fit_closed_form`); they still write
best.pt, log.jsonl and metrics.json.

Outputs in --out: best.pt, last.pt, epoch_XXX.pt, log.jsonl, metrics.json. A checkpoint holds
the args, the epoch, the best valid AUC and only the trainable tensors (last.pt adds the
optimizer, scheduler, scaler and RNG states for --resume).
"""
import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import data
import eval as ev
from baselines import MC, MF, NCF, GRU4Rec, Pop
import llama
import lora
from sasrecllm import SASRec, SASRecLLM

CRM_STAGES = ("sasrec", "pop", "mf", "ncf", "gru4rec", "mc")

# Defaults chosen on ML-1M *validation* AUC with a light sweep (--lr/--wd/--dim/--dropout override
# them). Weight decay is AdamW's decoupled decay on matrices only (see param_groups); the strong
# values win because the split is temporal and every embedding otherwise memorizes train in a few
# epochs. Tried: SASRec lr {1e-2, 3e-3, 1e-3} x wd {0.1, 10} x dropout {0.2, 0.5} (wd 0.1 peaks at
# valid AUC 0.676 after one epoch, then overfits); MF lr {1e-3, 3e-3, 1e-2} x wd {1, 10, 30, 100}
# x d {16, 64, 128}; NCF lr {1e-3, 3e-3} x wd {10, 30}; GRU4Rec wd {10, 30} (equal).
CRM_DEFAULTS = {
    "sasrec": dict(lr=1e-3, wd=10.0, dim=64, dropout=0.5),
    "mf": dict(lr=3e-3, wd=30.0, dim=64, dropout=0.0),
    "ncf": dict(lr=1e-3, wd=10.0, dim=64, dropout=0.2),
    "gru4rec": dict(lr=3e-3, wd=10.0, dim=64, dropout=0.5),
    "pop": dict(lr=0.0, wd=0.0, dim=1, dropout=0.0),
    "mc": dict(lr=0.0, wd=0.0, dim=1, dropout=0.0),
}

LLM_STAGES = ("text", "joint", "icl", "all")
TINYLLAMA_DIR = os.path.join("checkpoints", "TinyLlama-1.1B")
# The LLM stages: TALLRec's lr 1e-4 for LoRA; CoLLM's 1e-3 for the mapping layer (joint). An
# epoch is CoLLM's: 400 iterations (6,400 prompts, ~1/5 of ML-1M's train rows), so that early
# stopping looks at valid AUC five times per pass; --iters-per-epoch 0 makes it one full pass.
LLM_DEFAULTS = {
    "text": dict(lr=1e-4, wd=1e-3, dim=None, dropout=None, batch_size=16, patience=3, iters_per_epoch=400),
    "joint": dict(lr=1e-3, wd=1e-3, dim=None, dropout=None, batch_size=16, patience=3, iters_per_epoch=400),
    "icl": dict(lr=0.0, wd=0.0, dim=None, dropout=None, batch_size=16, patience=1, iters_per_epoch=400),
}
STAGE_DEFAULTS = {**{s: dict(batch_size=1024, patience=5, iters_per_epoch=0, **d) for s, d in CRM_DEFAULTS.items()},
                  **LLM_DEFAULTS}
# At most 300 epochs, as the paper. The embedded random backbone's text stage creeps up by ~0.002
# valid AUC per epoch for dozens of epochs (it has to learn item popularity from title tokens
# through LoRA on q/v alone), so on `--llm tiny` the LLM stages stop after 10 epochs instead: the
# whole chain then takes ~10 min on 2 CPU cores (README). Pass --max-epochs to override either.
MAX_EPOCHS, MAX_EPOCHS_TINY = 300, 10


def fill_defaults(args, stage):
    """Set every option left at None to `stage`'s default (STAGE_DEFAULTS, MAX_EPOCHS)."""
    defaults = dict(STAGE_DEFAULTS[stage])
    defaults["max_epochs"] = MAX_EPOCHS_TINY if stage in LLM_STAGES and args.llm == "tiny" else MAX_EPOCHS
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args

# -----------------------------------------------------------------------------
# distributed: torchrun sets RANK / WORLD_SIZE; one process is rank 0 of a world of 1


def rank_world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main():
    return rank_world()[0] == 0


def barrier():
    if rank_world()[1] > 1:
        dist.barrier()


def init_distributed(args):
    """Under torchrun: join the process group (NCCL on GPUs, gloo on CPU) and pick this rank's GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    backend = "nccl" if args.device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    if backend == "nccl":
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(args.device)


def all_reduce_grads(params):
    """Sum the gradients over ranks. Each rank's loss was pre-weighted by its share of the global
    batch (see `fit`), so the sum is the gradient of the global batch's mean loss. Written out
    instead of DistributedDataParallel: with a frozen LLM only a few tensors train, and the
    reader sees the one collective that data parallelism needs."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)


def gather_scores(local):
    """{row position: score} from every rank -> one dict (every rank gets all of it)."""
    if rank_world()[1] == 1:
        return local
    parts = [None] * rank_world()[1]
    dist.all_gather_object(parts, local)
    return {k: v for part in parts for k, v in part.items()}



# -----------------------------------------------------------------------------
# checkpoints


def trainable_state(model):
    """Only the tensors that train: a frozen backbone never lands in a checkpoint."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model, state):
    """Load trainable tensors, failing loudly on a missing, unexpected or mis-shaped key."""
    params = dict(model.named_parameters())
    want = {n for n, p in params.items() if p.requires_grad}
    missing, unexpected = want - set(state), set(state) - set(params)
    if missing or unexpected:
        raise KeyError(f"checkpoint mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    with torch.no_grad():
        for n, t in state.items():
            if params[n].shape != t.shape:
                raise ValueError(f"checkpoint {n}: shape {tuple(t.shape)}, model has {tuple(params[n].shape)}")
            params[n].copy_(t)


def save_atomic(obj, path):
    if not is_main():  # under torchrun, rank 0 alone writes
        return
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a reader never sees half a file


def rng_state():
    return dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate())


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

# -----------------------------------------------------------------------------
# the runner


def lr_lambda(warmup_steps, total_steps):
    """Linear warm-up from 0 to 1, then cosine decay to 0 at total_steps."""
    def f(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    return f


def param_groups(model, wd):
    """Weight decay on matrices (embeddings, linear and conv weights), none on biases and norms:
    decaying the user/item biases would pull every like-rate toward 50%."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and "bias" not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "bias" not in n)]
    return [dict(params=decay, weight_decay=wd), dict(params=no_decay, weight_decay=0.0)]


def log_line(out, rec):
    if not is_main():
        return
    with open(os.path.join(out, "log.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")


def make_evaluate(model, predict, ds, autocast=nullcontext, train_after=False):
    """evaluate(split) -> (logits, metrics) with the model in eval mode and no gradients."""
    def evaluate(split):
        model.eval()
        with torch.no_grad(), autocast():
            logits = predict(model, split)
        if train_after:
            model.train()
        rows = ds.idx(split)
        return logits, ev.metrics(ds.user[rows], ds.label[rows], logits)
    return evaluate


def fit(args, model, train_batches, loss_fn, predict, ds):
    """Train `model`'s trainable parameters; return the metrics.json dict of the best epoch.

    train_batches(epoch) -> list of batches, each a dict holding at least "label" (its size);
        the order must depend only on (args.seed, epoch), so that runs and resumes repeat.
    loss_fn(model, batch) -> scalar loss tensor.
    predict(model, split) -> np.ndarray of logits, one per row of ds.idx(split), in that order;
        called under torch.no_grad() with model.eval().
    args needs: out, seed, lr, wd, max_epochs, patience, warmup_epochs, clip, amp, device,
        resume, stop_after, plus whatever the caller's functions read.
    """
    out = args.out
    os.makedirs(out, exist_ok=True)
    rank, world = rank_world()
    say = print if rank == 0 else (lambda *a, **k: None)  # rank 0 alone prints
    params = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in params), "trainable parameters must stay fp32"
    steps_per_epoch = len(train_batches(0))
    total_steps = args.max_epochs * steps_per_epoch
    opt = torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(int(args.warmup_epochs * steps_per_epoch), total_steps))
    device_type = torch.device(args.device).type
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    scaler = torch.amp.GradScaler(device_type, enabled=args.amp == "fp16")
    autocast = (lambda: torch.autocast(device_type, dtype=amp_dtype)) if amp_dtype else nullcontext

    evaluate = make_evaluate(model, predict, ds, autocast, train_after=True)

    def checkpoint(epoch, best_auc, full=False):
        ck = dict(args=vars(args), epoch=epoch, best_valid_auc=best_auc, model=trainable_state(model))
        if full:
            ck.update(optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                      scaler=scaler.state_dict(), rng=rng_state(), bad_epochs=bad_epochs,
                      best_epoch=best_epoch)
        return ck

    start, best_auc, best_epoch, bad_epochs = 1, -1.0, 0, 0
    last_path = os.path.join(out, "last.pt")
    if args.resume:
        if not os.path.exists(last_path):
            raise FileNotFoundError(f"--resume: no {last_path}; run without --resume first")
        ck = torch.load(last_path, weights_only=False)
        load_trainable(model, ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"])
        start, best_auc = ck["epoch"] + 1, ck["best_valid_auc"]
        best_epoch, bad_epochs = ck["best_epoch"], ck["bad_epochs"]
        say(f"resumed from {last_path} after epoch {ck['epoch']} (best valid AUC {best_auc:.4f})")
    elif is_main() and os.path.exists(os.path.join(out, "log.jsonl")):
        os.remove(os.path.join(out, "log.jsonl"))  # a fresh run starts a fresh log

    model.train()
    steps = 0
    t_run = time.time()
    for epoch in range(start, args.max_epochs + 1):
        if bad_epochs >= args.patience:
            break
        t0 = time.time()
        total_loss, n_seen = 0.0, 0
        for batch in train_batches(epoch):
            with autocast():
                loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"epoch {epoch}: loss is {loss.item()}; stopping rather than training on garbage "
                    f"(try a lower --lr, --amp none, or check the data)")
            opt.zero_grad(set_to_none=True)
            total_loss += loss.item() * len(batch["label"])  # this rank's rows
            if world > 1:  # weight by this rank's share of the global batch, then sum over ranks
                loss = loss * (len(batch["label"]) * world / batch["n_global"])
            scaler.scale(loss).backward()
            if world > 1:
                all_reduce_grads(params)
            scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(params, args.clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            n_seen += batch.get("n_global", len(batch["label"]))
            steps += 1
            if args.max_steps and steps >= args.max_steps:
                break
        if world > 1:  # the mean train loss over all ranks' rows
            t = torch.tensor([total_loss])
            dist.all_reduce(t)
            total_loss = t.item()
        train_seconds = time.time() - t0
        _, m = evaluate("valid")
        seconds = time.time() - t0
        if m["auc"] > best_auc or best_epoch == 0:  # the first epoch is kept even when AUC is undefined (one class)
            best_auc, best_epoch, bad_epochs = m["auc"], epoch, 0
            save_atomic(checkpoint(epoch, best_auc), os.path.join(out, "best.pt"))
        else:
            bad_epochs += 1
        if epoch % 8 == 0:
            save_atomic(checkpoint(epoch, best_auc), os.path.join(out, f"epoch_{epoch:03d}.pt"))
        save_atomic(checkpoint(epoch, best_auc, full=True), last_path)
        rec = dict(epoch=epoch, train_loss=total_loss / n_seen, valid=m, lr=sched.get_last_lr()[0],
                   seconds=seconds, samples_per_s=n_seen / train_seconds)
        log_line(out, rec)
        eta = (time.time() - t_run) / (epoch - start + 1) * (args.max_epochs - epoch)
        say(f"epoch {epoch:3d} | loss {rec['train_loss']:.4f} | valid auc {m['auc']:.4f} uauc {m['uauc']:.4f} "
              f"| best {best_auc:.4f}@{best_epoch} | lr {rec['lr']:.2e} | {seconds:.1f}s "
              f"{rec['samples_per_s']:.0f}/s | eta <= {eta / 60:.1f} min", flush=True)
        if args.max_steps and steps >= args.max_steps:
            say(f"--max-steps {args.max_steps}: stopping after {steps} steps")
            break
        if args.stop_after and epoch >= args.stop_after:
            say(f"--stop-after {args.stop_after}: stopping early (continue with --resume)")
            return None
    say(f"done: best valid AUC {best_auc:.4f} at epoch {best_epoch} ({(time.time() - t_run) / 60:.1f} min)")
    return finish(args, model, evaluate, ds)


def finish(args, model, evaluate, ds):
    """Reload best.pt, score valid and test, write metrics.json."""
    barrier()  # rank 0 has written best.pt
    ck = torch.load(os.path.join(args.out, "best.pt"), weights_only=False, map_location="cpu")
    load_trainable(model, ck["model"])
    logits_valid, _ = evaluate("valid")
    logits_test, _ = evaluate("test")
    report = ev.split_report(ds, logits_valid, logits_test)
    report["best_epoch"] = ck["epoch"]
    if not is_main():
        return report
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    t = report["test"]
    print(f"test auc {t['auc']:.4f} uauc {t['uauc']:.4f} | valid auc {report['valid']['auc']:.4f} "
          f"-> {os.path.join(args.out, 'metrics.json')}")
    return report


def fit_closed_form(args, model, fit_rows, predict, ds):
    """Pop and MC: set the tables from the train rows, then write the same files as `fit`."""
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    model.fit(*fit_rows)
    model.eval()

    evaluate = make_evaluate(model, predict, ds)

    _, m = evaluate("valid")
    ck = dict(args=vars(args), epoch=0, best_valid_auc=m["auc"], model=trainable_state(model))
    save_atomic(ck, os.path.join(args.out, "best.pt"))
    with open(os.path.join(args.out, "log.jsonl"), "w") as f:
        f.write(json.dumps(dict(epoch=0, train_loss=None, valid=m, lr=0.0, seconds=time.time() - t0,
                                samples_per_s=None)) + "\n")
    print(f"fitted {args.stage} in closed form | valid auc {m['auc']:.4f} uauc {m['uauc']:.4f}")
    return finish(args, model, evaluate, ds)

# -----------------------------------------------------------------------------
# CRM stages


def build_crm(args, ds):
    if args.stage == "sasrec":
        return SASRec(ds.n_items, ds.n_users, dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                      maxlen=args.maxlen, dropout=args.dropout, bias=not args.no_bias)
    if args.stage == "mf":
        return MF(ds.n_users, ds.n_items, dim=args.dim)
    if args.stage == "ncf":
        return NCF(ds.n_users, ds.n_items, dim=args.dim, dropout=args.dropout)
    if args.stage == "gru4rec":
        return GRU4Rec(ds.n_items, dim=args.dim, dropout=args.dropout)
    if args.stage == "pop":
        return Pop(ds.n_users, ds.n_items)
    if args.stage == "mc":
        return MC(ds.n_items)
    raise ValueError(f"unknown CRM stage {args.stage!r}; choose from {CRM_STAGES}")


@torch.no_grad()
def init_biases(model, ds, rows):
    """Start the user/item/global biases at Pop's smoothed log-odds of the train rows, so that
    training begins from the popularity floor and the embeddings learn what it cannot explain.
    (With zero-initialized biases, AdamW's ~lr-sized steps need dozens of epochs to reach
    like-rates whose log-odds span several units, and the embeddings overfit meanwhile.)"""
    pop = Pop(ds.n_users, ds.n_items)
    pop.fit(torch.from_numpy(ds.user[rows]), torch.from_numpy(ds.item[rows]), torch.from_numpy(ds.label[rows]))
    model.global_bias.copy_(pop.global_logit)
    model.item_bias.weight[:, 0] = pop.item_logit - pop.global_logit
    if hasattr(model, "user_bias"):
        model.user_bias.weight[:, 0] = pop.user_logit - pop.global_logit


def crm_tensors(ds, rows, maxlen, next_item=False):
    """All rows' tensors at once (ML-1M is small): user, item, hist (B, maxlen), label, group
    (rows with one history share it), and for the next-item objective
    seq = (hist + [item])[-(maxlen+1):], left-padded."""
    t = data.crm_batch(ds, rows, maxlen)
    key = ds.user[rows] * (ds.n_items + 1) + np.array([len(ds.history[r]) for r in rows])
    t["group"] = torch.from_numpy(np.unique(key, return_inverse=True)[1].ravel())  # shared-history id
    if next_item:
        t["seq"] = data.pad_left([list(ds.history[r]) + [int(ds.item[r])] for r in rows], maxlen + 1)
    return t


def shuffled_batches(tensors, batch_size, seed, epoch):
    """Batches of batch_size rows in an order that depends only on (seed, epoch).

    Rows that share a history (same user, same number of earlier likes) stay next to each other,
    so a sequence model encodes that history once per batch; the groups themselves are shuffled."""
    group = tensors["group"]  # (N,) sorted group id per row
    n_groups = int(group.max()) + 1
    rank = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n_groups))
    order = torch.argsort(rank[group], stable=True)  # rows of the shuffled groups, in turn
    return [{k: v[order[i:i + batch_size]] for k, v in tensors.items()}
            for i in range(0, len(group), batch_size)]


def bce_loss(model, batch):
    return F.binary_cross_entropy_with_logits(model(batch["user"], batch["hist"], batch["item"]), batch["label"])


def next_item_loss(model, batch):
    """SASRec's original objective: at every position, the true next liked item against one
    uniformly sampled negative, BCE on both; padded targets are ignored."""
    seq = batch["seq"]  # (B, T+1)
    hist, pos = seq[:, :-1], seq[:, 1:]  # (B, T) each
    neg = torch.randint(1, model.item_emb.num_embeddings, pos.shape)
    keep = (pos != 0) & (hist != 0)  # a position with no history yet predicts nothing
    pos_logit, neg_logit = model.seq_logits(hist, pos), model.seq_logits(hist, neg)
    loss = (F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit), reduction="none")
            + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit), reduction="none"))
    return (loss * keep).sum() / keep.sum().clamp(min=1)


def crm_predictor(ds, maxlen, batch_size):
    cache = {s: crm_tensors(ds, ds.idx(s), maxlen) for s in ("valid", "test")}

    def predict(model, split):
        t = cache[split]
        out = [model(t["user"][i:i + batch_size], t["hist"][i:i + batch_size], t["item"][i:i + batch_size])
               for i in range(0, len(t["label"]), batch_size)]
        return torch.cat(out).float().numpy()
    return predict


def run_crm(args, ds=None):
    """Train or fit one CRM stage; ds (already loaded) saves tests a reload."""
    ds = load_data(args, ds)
    seed_everything(args.seed)
    model = build_crm(args, ds)
    predict = crm_predictor(ds, args.maxlen, 4096)
    train_rows = ds.idx("train")
    if args.stage in ("pop", "mc"):
        last = torch.tensor([ds.history[r][-1] if ds.history[r] else 0 for r in train_rows])
        fit_rows = (torch.from_numpy(ds.user[train_rows]), torch.from_numpy(ds.item[train_rows]),
                    torch.from_numpy(ds.label[train_rows]), last)
        return fit_closed_form(args, model, fit_rows, predict, ds)
    if args.init_bias and hasattr(model, "item_bias") and args.objective == "bce":
        init_biases(model, ds, train_rows)
    if args.stage == "sasrec" and args.objective == "next":
        train_rows = train_rows[ds.label[train_rows] == 1]  # the next-item objective reads liked items only
        tensors, loss_fn = crm_tensors(ds, train_rows, args.maxlen, next_item=True), next_item_loss
    else:
        tensors, loss_fn = crm_tensors(ds, train_rows, args.maxlen), bce_loss
    return fit(args, model, lambda epoch: shuffled_batches(tensors, args.batch_size, args.seed, epoch),
               loss_fn, predict, ds)


def load_data(args, ds=None):
    """args.data from args.data_dir (or the given ds), cut to the first --limit rows of each split."""
    ds = ds if ds is not None else data.load(args.data, args.data_dir)
    return data_slice(ds, args.limit) if args.limit else ds


def data_slice(ds, limit):
    """Keep the first `limit` rows of each split (row order), for smoke tests."""
    keep = np.sort(np.concatenate([ds.idx(s)[:limit] for s in ("train", "valid", "test")]))
    arrays = {f.name: getattr(ds, f.name)[keep] for f in dataclasses.fields(ds)
              if isinstance(getattr(ds, f.name), np.ndarray)}
    return dataclasses.replace(ds, history=[ds.history[i] for i in keep], **arrays)

# -----------------------------------------------------------------------------
# LLM stages (paper Sections 3.2-3.3): text = LoRA on text-only prompts (TALLRec),
# joint = mapping layer + SASRec with LoRA frozen (SASRecLLM), icl = the untuned LLM.

TINYLLAMA_HINT = (
    "Put TinyLlama-1.1B there in Hugging Face format (config.json, model.safetensors, tokenizer.model; "
    "e.g. a download of TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T), or point --llm at such a "
    "directory. To run the whole pipeline without it, use the embedded random backbone: --llm tiny")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def backbone_dir(args, ds):
    """The HF-format LLM directory: --llm DIR, or the embedded tiny backbone written once under --runs."""
    if args.llm != "tiny":
        if not os.path.exists(os.path.join(args.llm, "config.json")):
            raise FileNotFoundError(f"no LLM checkpoint at {args.llm} (config.json missing). {TINYLLAMA_HINT}")
        return args.llm
    d = os.path.join(args.runs, "tiny-llm")
    if not os.path.exists(os.path.join(d, "model.safetensors")):
        if is_main():
            texts = ds.titles[1:] + [data.prompt_collab(ds, int(i)) for i in ds.idx("train")[:2000]]
            llama.make_tiny(d, texts=texts, tokenizer_model=args.tokenizer, seed=0)
            print(f"wrote the embedded tiny backbone (random weights) to {d}")
        barrier()
    return d


def load_cf(path, ds, device):
    """A CRM encoder (SASRec, MF, GRU4Rec...) rebuilt from its own best.pt: plug-and-play."""
    if not os.path.exists(path):
        stage = os.path.basename(os.path.dirname(path)) or "sasrec"
        raise FileNotFoundError(f"no CF checkpoint at {path}; make it with: python train.py --stage {stage} "
                                f"--data {ds.name} --out {os.path.dirname(path)}")
    ck = torch.load(path, weights_only=False, map_location="cpu")
    cf = build_crm(argparse.Namespace(**ck["args"]), ds)
    load_trainable(cf, ck["model"])
    return cf.to(device)


def build_llm_model(args, ds, stage):
    """SASRecLLM in the configuration of `stage`, with exactly that stage's parts trainable
    (hierarchical freezing):
        icl   : nothing trains            text-only prompt, no LoRA
        text  : LoRA trains               text-only prompt
        joint : mapping (+ SASRec) train  collaborative prompt, LoRA loaded and frozen"""
    llm, tok = llama.load(backbone_dir(args, ds), dtype=DTYPES[args.dtype], device=args.device)
    llm.requires_grad_(False)
    cf = None
    if stage == "text":
        lora.inject(llm, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout)  # only LoRA trains
    elif stage == "joint":
        if not os.path.exists(os.path.join(args.lora, "adapter_config.json")):
            raise FileNotFoundError(f"no LoRA adapter at {args.lora}; make it with: python train.py --stage text "
                                    f"--data {ds.name} --llm {args.llm} --out {os.path.dirname(args.lora)}")
        lora.load_adapter(llm, args.lora)
        llm.requires_grad_(False)  # LoRA frozen in the joint stage
        cf = load_cf(args.cf_ckpt, ds, args.device)
        cf.requires_grad_(not args.freeze_sasrec)
    model = SASRecLLM(llm, tok.yes_id, tok.no_id, cf=cf, proj_token_num=args.proj_token_num,
                      cf_bias=bool(getattr(args, "cf_bias", 0)))  # runs saved before --cf-bias had none
    if model.mapping is not None:
        model.mapping.to(args.device)  # fp32: trainable parameters stay fp32
    return model, tok


class PromptBatches:
    """One epoch's batches, collated lazily. Rows are length-bucketed (little left padding), and
    each global batch is split across ranks, so ranks see disjoint rows (the DistributedSampler's
    job) while every global batch stays one length bucket."""

    def __init__(self, groups, make):
        self.groups, self.make = groups, make

    def __len__(self):
        return len(self.groups)

    def __iter__(self):
        return (self.make(g) for g in self.groups)


def prompt_batch(ds, prompts, rows, positions, maxlen, device, cf_rows=None):
    """Tensors for rows[positions]: the prompt (input_ids, attention_mask, marker slots), the CF
    encoder's inputs (user, hist, item) and the labels. cf_rows, when given, feeds the CF encoder
    other rows' users and items (the --shuffle-cf ablation)."""
    r = rows[positions]
    b = data.collate_prompts([prompts[i] for i in r])
    c = data.crm_batch(ds, r if cf_rows is None else cf_rows[positions], maxlen)
    b.update(user=c["user"], hist=c["hist"], item=c["item"], label=torch.from_numpy(ds.label[r]).float())
    return {k: v.to(device) for k, v in b.items()}


def llm_forward(model, b):
    return model(b["input_ids"], b["attention_mask"], b["user_pos"], b["item_pos"], b["user"], b["hist"], b["item"])


def llm_loss(model, b):
    """BCE on s = z_Yes - z_No."""
    return F.binary_cross_entropy_with_logits(llm_forward(model, b), b["label"])


def llm_train_batches(args, ds, prompts):
    rows = ds.idx("train")
    lengths = [len(prompts[i].ids) for i in rows]
    rank, world = rank_world()

    def one_pass(p):  # a shuffled, bucketed pass over the train rows; depends only on (seed, p)
        return data.bucket_batches(lengths, args.batch_size, shuffle=True, seed=[args.seed, p])

    def make(g):
        b = prompt_batch(ds, prompts, rows, np.asarray(g[rank::world], dtype=np.int64), args.maxlen, args.device)
        b["n_global"] = len(g)
        return b

    def batches(epoch):
        if not args.iters_per_epoch:  # an epoch is one pass over the train rows
            return PromptBatches(one_pass(epoch), make)
        # CoLLM's epochs: a fixed number of iterations, drawn from a stream of passes
        P = len(one_pass(0))
        start = max(epoch - 1, 0) * args.iters_per_epoch  # fit asks for epoch 0 to count the steps
        idx = [(g // P, g % P) for g in range(start, start + args.iters_per_epoch)]
        passes = {p: one_pass(p) for p in {p for p, _ in idx}}
        return PromptBatches([passes[p][j] for p, j in idx], make)
    return batches


def llm_predictor(args, ds, prompts, shuffle_cf=False, seed=0):
    """predict(model, split) -> logits in ds.idx(split)'s order. Each rank scores a share of the
    length buckets; the scores are gathered so that every rank computes the same metrics."""
    rank, world = rank_world()

    def predict(model, split):
        rows = ds.idx(split)
        cf_rows = rows[np.random.default_rng(seed).permutation(len(rows))] if shuffle_cf else None
        groups = data.bucket_batches([len(prompts[i].ids) for i in rows], args.eval_batch_size, shuffle=False)
        local = {}
        for g in groups[rank::world]:
            s = llm_forward(model, prompt_batch(ds, prompts, rows, np.asarray(g), args.maxlen, args.device, cf_rows))
            local.update(zip(g, s.float().cpu().tolist()))
        scores = gather_scores(local)
        return np.array([scores[j] for j in range(len(rows))])
    return predict


def encode_all(ds, tok, collab, proj_token_num):
    t0 = time.time()
    prompts = data.encode_prompts(ds, range(len(ds)), tok, collab, proj_token_num)
    if is_main():
        n = np.array([len(p.ids) for p in prompts])
        print(f"tokenized {len(prompts)} {'collaborative' if collab else 'text-only'} prompts in "
              f"{time.time() - t0:.1f}s: {n.mean():.0f} tokens on average, max {n.max()}")
    return prompts


def build_llm_stage(args, ds):
    """The stage's model and every row's prompt, tokenized once (collaborative for joint)."""
    model, tok = build_llm_model(args, ds, args.stage)
    return model, encode_all(ds, tok, collab=args.stage == "joint", proj_token_num=args.proj_token_num)


def run_llm(args, ds=None):
    """One LLM stage: icl (evaluate only), text (TALLRec) or joint (SASRecLLM)."""
    ds = load_data(args, ds)
    seed_everything(args.seed)
    model, prompts = build_llm_stage(args, ds)
    predict = llm_predictor(args, ds, prompts)
    if args.stage == "icl":
        return evaluate_only(args, model, predict, ds)
    report = fit(args, model, llm_train_batches(args, ds, prompts), llm_loss, predict, ds)
    if args.stage == "text" and report is not None and is_main():
        # fit() has reloaded the best epoch: publish its LoRA in peft's format (plug-and-play)
        lora.save_adapter(model.llm, os.path.join(args.out, "adapter"))
    barrier()
    return report


def evaluate_only(args, model, predict, ds):
    """ICL: no training; score valid and test with the base LLM and write the same files."""
    os.makedirs(args.out, exist_ok=True)
    model.eval()
    save_atomic(dict(args=vars(args), epoch=0, best_valid_auc=None, model=trainable_state(model)),
                os.path.join(args.out, "best.pt"))

    evaluate = make_evaluate(model, predict, ds)
    return finish(args, model, evaluate, ds)


def run_all(args):
    """The dual-stage chain: SASRec alone, then LoRA on text-only prompts, then joint tuning."""
    ds = data.load(args.data, args.data_dir)
    reports = {}
    for stage in ("sasrec", "text", "joint"):
        a = fill_defaults(argparse.Namespace(**vars(args)), stage)
        a.stage, a.out = stage, os.path.join(args.runs, stage)
        if is_main():
            print(f"=== stage {stage} -> {a.out}", flush=True)
        reports[stage] = (run_crm if stage == "sasrec" else run_llm)(a, ds)
    return reports


def load_run(run_dir):
    """(args, ds, model, make_predict) for a finished run, rebuilt from its best.pt (eval.py uses it).

    make_predict(shuffle_cf=False, seed=0) -> predict(model, split); shuffle_cf (joint runs only)
    feeds the CF encoder a seed-permuted copy of the split's rows. The model and the tokenized
    prompts are built once, whatever the number of evaluations."""
    path = os.path.join(run_dir, "best.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; train the run first")
    ck = torch.load(path, weights_only=False, map_location="cpu")
    args = argparse.Namespace(**ck["args"])
    ds = load_data(args)
    if args.stage in CRM_STAGES:
        model = build_crm(args, ds)
        prompts = None
    else:
        model, prompts = build_llm_stage(args, ds)
    load_trainable(model, ck["model"])

    def make_predict(shuffle_cf=False, seed=0):
        if shuffle_cf and args.stage != "joint":
            raise ValueError(f"--shuffle-cf needs a joint run; {run_dir} is a '{args.stage}' run")
        if prompts is None:
            return crm_predictor(ds, args.maxlen, 4096)
        return llm_predictor(args, ds, prompts, shuffle_cf=shuffle_cf, seed=seed)
    return args, ds, model, make_predict


def run_chain(run_dir):
    """[(stage, run dir)] that built run_dir, oldest first: a joint run names its SASRec and text runs."""
    ck = torch.load(os.path.join(run_dir, "best.pt"), weights_only=False, map_location="cpu")
    a = ck["args"]
    chain = []
    if a["stage"] == "joint":
        chain = [("sasrec", os.path.dirname(a["cf_ckpt"])), ("text", os.path.dirname(a["lora"]))]
    return chain + [(a["stage"], run_dir)]


# -----------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", required=True, choices=CRM_STAGES + LLM_STAGES)
    ap.add_argument("--data", default="ml1m", help="ml1m, movielens or amazon")
    ap.add_argument("--data-dir", default=None, help="data root (default: $SASRECLLM_DATA or data/)")
    ap.add_argument("--out", default=None, help="run directory (default: runs/<stage>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="keep only the first N rows of each split (smoke tests)")
    ap.add_argument("--device", default="cpu")
    # optimization; None means the stage's default from CRM_DEFAULTS
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--wd", type=float, default=None, help="AdamW weight decay")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 1024 for CRMs, 16 for LLM stages")
    ap.add_argument("--max-epochs", type=int, default=None, help="default 300; 10 for LLM stages on --llm tiny")
    ap.add_argument("--patience", type=int, default=None, help="epochs without a better valid AUC before stopping")
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--clip", type=float, default=1.0, help="max gradient norm")
    ap.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument("--stop-after", type=int, default=0, help="stop after this epoch, as if interrupted (tests --resume)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    # models
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--dropout", type=float, default=None)
    ap.add_argument("--maxlen", type=int, default=25, help="history length the sequence models read")
    ap.add_argument("--layers", type=int, default=2, help="SASRec blocks")
    ap.add_argument("--heads", type=int, default=4, help="SASRec attention heads")
    ap.add_argument("--no-bias", action="store_true", help="SASRec without user/item biases")
    ap.add_argument("--init-bias", type=int, default=1, help="1: start biases at Pop's log-odds (MF, SASRec, GRU4Rec)")
    ap.add_argument("--objective", default="bce", choices=("bce", "next"),
                    help="SASRec: pointwise BCE on labels, or next-item with sampled negatives")
    # LLM stages
    ap.add_argument("--runs", default="runs", help="root of the stage runs (--stage all, the tiny backbone, defaults)")
    ap.add_argument("--llm", default=TINYLLAMA_DIR, help="HF-format LLM directory, or 'tiny' for the embedded random backbone")
    ap.add_argument("--tokenizer", default=None, help="--llm tiny: use this tokenizer.model (else one is trained on the data)")
    ap.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="LLM weight dtype")
    ap.add_argument("--cf", default="sasrec", choices=("sasrec", "mf", "gru4rec"), help="the CF encoder of the joint stage")
    ap.add_argument("--sasrec", dest="cf_ckpt", default=None, help="CF checkpoint (default: RUNS/<cf>/best.pt)")
    ap.add_argument("--lora", default=None, help="text-stage LoRA adapter dir (default: RUNS/text/adapter)")
    ap.add_argument("--freeze-sasrec", action="store_true", help="joint stage: train the mapping layer only")
    ap.add_argument("--cf-bias", type=int, default=1, choices=(0, 1),
                    help="joint: 1 appends the CF model's biases to its user/item vectors (their dot product is then "
                         "the CF logit; see sasrecllm.cf_vectors), 0 hands the mapping layer the bare embeddings")
    ap.add_argument("--proj-token-num", type=int, default=1, help="pseudo-tokens per <UserID> / <TargetItemID>")
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--eval-batch-size", type=int, default=64)
    ap.add_argument("--iters-per-epoch", type=int, default=None,
                    help="LLM stages: CoLLM-style epochs of N iterations (default 400; 0: one pass over train)")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after N optimizer steps (smoke runs)")
    args = ap.parse_args(argv)
    if args.stage != "all":
        fill_defaults(args, args.stage)
    if args.out is None:
        args.out = os.path.join(args.runs, args.stage)
    if args.cf_ckpt is None:
        args.cf_ckpt = os.path.join(args.runs, args.cf, "best.pt")
    if args.lora is None:
        args.lora = os.path.join(args.runs, "text", "adapter")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    init_distributed(args)
    try:
        if args.stage == "all":
            run_all(args)
        elif args.stage in CRM_STAGES:
            run_crm(args)
        else:
            run_llm(args)
    except (FileNotFoundError, FloatingPointError, ValueError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
