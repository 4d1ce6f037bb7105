"""The training loop every stage shares (paper Section 3.3): AdamW, linear warm-up then cosine
decay, autocast (bf16, or fp16 with a GradScaler), gradient clipping, early stopping on
validation AUC, checkpoints (the best, every 8 epochs, and the last for --resume), and data
parallelism under torchrun. At the end it reloads the best epoch and writes metrics.json.

It names no stage. A stage (train.py) hands it a model, its batches, a loss and a predictor:
    batches(epoch) -> iterable of data.Batch; the order depends only on (seed, epoch)
    loss_fn(model, batch) -> scalar loss
    predict(model, split) -> np.ndarray of logits in ds.idx(split)'s order

Why a file of its own: train.py says *what* each stage trains, this file says *how*, and eval.py
and bench.py reuse it without the recipes. Read `train` first; the helpers above it are small.

Outputs in cfg.out: best.pt, last.pt, epoch_XXX.pt, log.jsonl, metrics.json. A checkpoint holds
the run's arguments, the epoch, the best valid AUC and only the trainable tensors (last.pt adds
the optimizer, scheduler, scaler and RNG states).

A run directory belongs to one run (own_run_dirs): a lock file names its writer, an earlier run
is continued (--resume, with the same flags) or moved aside (--overwrite), never deleted, and
multi-file artefacts appear whole or not at all (publish_dir).
"""
import argparse
import json
import math
import os
import random
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

import llama
import metrics as M

CHECKPOINT_EVERY = 8   # epochs between the numbered checkpoints (the paper's habit)
PROGRESS_SECONDS = 30  # a progress line inside an epoch at most this often
LOCK = "run.lock"      # in a run directory while a run writes there: its pid, host and start
# Flags that say how to run, not what the run is: the only ones --resume lets differ.
RESUME_MAY_CHANGE = ("resume", "overwrite", "stop_after", "max_steps", "max_minutes", "threads", "device",
                     "eval_batch_size", "data_dir", "runs", "out")


class RunError(ValueError):
    """A run directory, checkpoint or flag that cannot be used as asked. The message names the
    path and what to do."""


def error_line(e):
    """One 'error: ...' line for an expected failure (a KeyError's message without its quotes)."""
    return f"error: {e.args[0] if isinstance(e, KeyError) and e.args else first_line(e)}"


def first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def positive(text):
    """argparse type: an integer >= 1 (a batch size, a count of epochs)."""
    return _int_at_least(text, 1)


def non_negative(text):
    """argparse type: an integer >= 0 (0 meaning "none" or "no limit")."""
    return _int_at_least(text, 0)


def _int_at_least(text, low):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if n < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {n}")
    return n


@dataclass
class TrainConfig:
    out: str                     # the run directory
    lr: float
    wd: float = 0.0              # AdamW's decoupled decay, on matrices only (param_groups)
    max_epochs: int = 300
    patience: int = 5            # epochs without a better valid AUC before stopping
    warmup_epochs: float = 1.0
    clip: float = 1.0            # max gradient norm
    amp: str = "none"            # "none", "bf16" or "fp16" (fp16 adds a GradScaler)
    device: str = "cpu"
    resume: bool = False         # continue from out/last.pt
    stop_after: int = 0          # stop after this epoch, as if interrupted (tests --resume)
    max_steps: int = 0           # stop after N optimizer steps (smoke runs)
    max_minutes: float = 0       # start no new epoch after this long (budgeted runs); 0 = no limit
    run_args: dict = field(default_factory=dict)  # saved in each checkpoint, to rebuild the run

# -----------------------------------------------------------------------------
# data parallelism: torchrun sets RANK / WORLD_SIZE; one process is rank 0 of a world of 1


def rank_world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main():
    return rank_world()[0] == 0


def say(*a):
    if is_main():
        print(*a, flush=True)


def barrier():
    if rank_world()[1] > 1:
        dist.barrier()


def init_distributed(device):
    """Under torchrun: join the process group (NCCL on GPUs, gloo on CPU); returns this rank's device."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"--device {device}, but this torch ({torch.__version__}) sees no CUDA device; use "
                       "--device cpu, or install a CUDA build of torch on a machine with a GPU")
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    if backend == "nccl":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    return device


def all_reduce_grads(params):
    """Sum the gradients over ranks. Each rank's loss was pre-weighted by its share of the global
    batch, so the sum is the gradient of the global batch's mean loss. Written out instead of
    DistributedDataParallel: with a frozen LLM only a few tensors train, and the reader sees the
    one collective that data parallelism needs."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)


def all_sum(x):
    """A float summed over ranks."""
    if rank_world()[1] == 1:
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item()


def gather_scores(local):
    """{row position: score} from every rank -> one dict (every rank gets all of it)."""
    if rank_world()[1] == 1:
        return local
    parts = [None] * rank_world()[1]
    dist.all_gather_object(parts, local)
    return {k: v for part in parts for k, v in part.items()}

# -----------------------------------------------------------------------------
# checkpoints: only the trainable tensors, written atomically


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


@contextmanager
def writing(path):
    """A failed write (a full disk, a read-only directory) as one RunError naming the file."""
    try:
        yield
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        raise RunError(f"{path}: could not write it ({first_line(e)}); is the disk full or the "
                       "directory read-only?") from None


def save_atomic(obj, path):
    if not is_main():  # under torchrun, rank 0 alone writes
        return
    tmp = path + ".tmp"
    with writing(path):
        torch.save(obj, tmp)
        os.replace(tmp, path)  # a reader never sees half a file


def read_checkpoint(path, map_location="cpu"):
    """A checkpoint that save_atomic wrote, or one error line saying why it cannot be read."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; expected a checkpoint written by train.py")
    try:
        ck = torch.load(path, weights_only=False, map_location=map_location)
    except Exception as e:  # a truncated or foreign file fails to unpickle in many ways
        raise RunError(f"{path}: cannot read this checkpoint ({type(e).__name__}: {first_line(e)}); "
                       "expected a complete file written by train.py") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("model"), dict) or not isinstance(ck.get("args"), dict):
        raise RunError(f"{path}: expected a train.py checkpoint (a dict with 'args' and 'model')")
    return ck


def check_adapter(adapter_dir):
    """A LoRA adapter directory that lora.load_adapter can read, or one error line naming the
    file (an adapter copied in part, or written by an older checkout that a kill interrupted)."""
    path = os.path.join(adapter_dir, "adapter_config.json")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except ValueError as e:
        raise RunError(f"{path}: expected peft's adapter_config.json (JSON: {e})") from None
    if not isinstance(cfg, dict) or not {"r", "lora_alpha", "target_modules"} <= set(cfg):
        raise RunError(f"{path}: expected peft's adapter_config.json with r, lora_alpha and target_modules")
    weights = os.path.join(adapter_dir, "adapter_model.safetensors")
    if os.path.exists(weights):
        llama.check_safetensors(weights)
    elif not os.path.exists(os.path.join(adapter_dir, "adapter_model.bin")):
        raise RunError(f"{adapter_dir}: no adapter_model.safetensors; an incomplete adapter (rerun its text stage "
                       "with --resume to write it again)")


def write_json(obj, path):
    """JSON with NaN written as null (a metric undefined on one class), atomically."""
    clean = lambda v: (None if isinstance(v, float) and math.isnan(v) else
                       {k: clean(x) for k, x in v.items()} if isinstance(v, dict) else v)
    if is_main():
        with writing(path):
            with open(path + ".tmp", "w") as f:
                json.dump(clean(obj), f, indent=2)
            os.replace(path + ".tmp", path)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    return dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate())


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


# -----------------------------------------------------------------------------
# run directories: one writer each; an earlier run is moved aside, never deleted


@contextmanager
def own_run_dirs(outs, resume=False, overwrite=False):
    """Hold each directory in outs for this run, from before training until every file is
    written; rank 0 takes the locks and the other ranks wait for it."""
    held = []
    try:
        if is_main():
            for out in outs:
                held.append(out)
                claim(out, resume, overwrite)
        barrier()
        yield
    finally:
        for out in held:
            release(out)


def claim(out, resume, overwrite):
    """Lock out (which also proves it writable, before any training) and, unless resuming,
    start it empty: an earlier run's files move into out/old-<time>/ with --overwrite."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunError(f"{out} is a file; expected a run directory (--out)")
    try:
        os.makedirs(out, exist_ok=True)
        lock(out)
    except OSError as e:
        raise RunError(f"{out}: cannot write there ({first_line(e)}); expected a writable run directory") from None
    old = [] if resume else run_files(out)
    if old and not overwrite:
        raise RunError(held_message(out, old))
    if old:
        aside = tempfile.mkdtemp(prefix=time.strftime("old-%Y%m%d-%H%M%S-"), dir=out)  # a new name, always
        for name in old:
            os.rename(os.path.join(out, name), os.path.join(aside, name))
        say(f"--overwrite: moved the earlier run's files in {out} to {aside}")


def run_files(out):
    """What an earlier run left in out: everything but the lock and the runs moved aside."""
    return sorted(f for f in os.listdir(out) if f != LOCK and not f.startswith("old-")) if os.path.isdir(out) else []


def held_message(out, files):
    listed = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
    return (f"{out} holds an earlier run ({listed}); continue it with --resume, or start over with --overwrite "
            f"(its files move to {os.path.join(out, 'old-<time>')}/)")


def lock(out):
    """Create out/run.lock, or refuse: a live holder keeps it, a dead one's lock is taken over."""
    path = os.path.join(out, LOCK)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: one of two writers wins
        except FileExistsError:
            holder = read_lock(path)
            if holder is None or not holder_is_gone(holder):
                who = (f"pid {holder['pid']} on {holder['host']}, since {holder['started']}" if holder
                       else "an unreadable lock")
                raise RunError(f"{out} is in use by another run ({who}); wait for it to finish or use another "
                               f"--out (if no run is using it, delete {path})") from None
            say(f"{path}: taking over the lock of pid {holder['pid']} (since {holder['started']}), which has ended")
            if os.path.exists(path):
                os.remove(path)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(dict(pid=os.getpid(), host=socket.gethostname(), started=time.strftime("%Y-%m-%d %H:%M:%S")), f)
        return
    raise RunError(f"{out}: another run took the lock first")


def read_lock(path):
    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if {"pid", "host", "started"} <= set(holder) else None
    except (OSError, ValueError, TypeError):
        return None


def holder_is_gone(holder):
    """True only when the holder ran on this host and its pid no longer exists."""
    if holder["host"] != socket.gethostname() or holder["pid"] == os.getpid():
        return False
    try:
        os.kill(holder["pid"], 0)  # signal 0 checks that the process exists, and sends nothing
    except ProcessLookupError:
        return True
    except (OSError, OverflowError, TypeError):  # another user's live process, or not a pid at all
        return False
    return False


def release(out):
    path = os.path.join(out, LOCK)
    holder = read_lock(path)
    if holder and (holder["pid"], holder["host"]) == (os.getpid(), socket.gethostname()):
        os.remove(path)


def publish_dir(final, write):
    """A multi-file artefact (the tiny backbone, a LoRA adapter) whole or not at all: write(tmp)
    fills a fresh sibling directory, which is then renamed into place. A kill mid-write leaves
    FINAL.tmp-<pid> beside it and FINAL as it was; an existing FINAL is replaced."""
    if not is_main():
        return final
    tmp, old = f"{final}.tmp-{os.getpid()}", f"{final}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    with writing(final):
        if os.path.exists(final):
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    return final

# -----------------------------------------------------------------------------
# the optimizer's schedule and groups, autocast, evaluation


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


def autocast_for(amp, device):
    """A context factory: bf16/fp16 autocast, or nothing."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return (lambda: torch.autocast(torch.device(device).type, dtype=dtype)) if dtype else nullcontext


def evaluate(model, predict, ds, split, autocast=nullcontext):
    """(logits, metrics) of one split, in eval mode and without gradients."""
    model.eval()
    with torch.no_grad(), autocast():
        logits = predict(model, split)
    rows = ds.idx(split)
    return logits, M.metrics(ds.user[rows], ds.label[rows], logits)


def finish(cfg, model, predict, ds, autocast=nullcontext):
    """Reload best.pt, score valid and test, write metrics.json (test's warm/cold parts too)."""
    barrier()  # rank 0 has written best.pt
    ck = read_checkpoint(os.path.join(cfg.out, "best.pt"))
    load_trainable(model, ck["model"])
    logits_valid, _ = evaluate(model, predict, ds, "valid", autocast)
    logits_test, _ = evaluate(model, predict, ds, "test", autocast)
    report = dict(M.split_report(ds, logits_valid, logits_test), best_epoch=ck["epoch"])
    write_json(report, os.path.join(cfg.out, "metrics.json"))
    t = report["test"]
    say(f"test auc {t['auc']:.4f} uauc {t['uauc']:.4f} | valid auc {report['valid']['auc']:.4f} "
        f"-> {os.path.join(cfg.out, 'metrics.json')}")
    return report


def checkpoint(cfg, model, epoch, best, opt=None, sched=None, scaler=None):
    """What a checkpoint holds; with the optimizer given, everything --resume needs."""
    ck = dict(args=cfg.run_args, epoch=epoch, best_valid_auc=best["auc"], model=trainable_state(model))
    if opt is not None:
        ck.update(optimizer=opt.state_dict(), scheduler=sched.state_dict(), scaler=scaler.state_dict(),
                  rng=rng_state(), best=best)
    return ck


def resume_from(cfg, model, opt, sched, scaler):
    """Restore last.pt into the model, optimizer, scheduler, scaler and RNGs -> (epoch, best)."""
    path = os.path.join(cfg.out, "last.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--resume: no {path}; run without --resume first")
    ck = read_checkpoint(path, map_location=None)
    if "optimizer" not in ck:
        raise RunError(f"{path}: no optimizer state; expected the last.pt that train.py writes")
    changed = changed_flags(ck["args"], cfg.run_args)
    if changed:
        raise RunError(f"--resume: {path} was trained with other flags: {'; '.join(changed)}. Resume with "
                       "the run's own flags, or start a new run (another --out, or --overwrite)")
    load_trainable(model, ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    scaler.load_state_dict(ck["scaler"])
    set_rng_state(ck["rng"])
    say(f"resumed from {path} after epoch {ck['epoch']} (best valid AUC {ck['best']['auc']:.4f})")
    return ck["epoch"], ck["best"]


def changed_flags(saved, now):
    """'--flag NEW (the run has OLD)' for every flag that would change a resumed run."""
    keys = sorted((saved.keys() & now.keys()) - set(RESUME_MAY_CHANGE))
    return [f"--{k.replace('_', '-')} {now[k]} (the run has {saved[k]})" for k in keys if saved[k] != now[k]]

# -----------------------------------------------------------------------------
# the loop


def train(cfg, model, batches, loss_fn, predict, ds):
    """Train `model`'s trainable parameters; return the best epoch's metrics.json dict (None when
    --stop-after interrupts the run)."""
    os.makedirs(cfg.out, exist_ok=True)
    world = rank_world()[1]
    params = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in params), "trainable parameters must stay fp32"
    steps_per_epoch = len(batches(1))
    opt = torch.optim.AdamW(param_groups(model, cfg.wd), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(int(cfg.warmup_epochs * steps_per_epoch), cfg.max_epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler(torch.device(cfg.device).type, enabled=cfg.amp == "fp16")
    autocast = autocast_for(cfg.amp, cfg.device)
    epoch, best = 0, dict(auc=-1.0, epoch=0, bad_epochs=0)
    if cfg.resume:
        epoch, best = resume_from(cfg, model, opt, sched, scaler)
    elif is_main() and (old := run_files(cfg.out)):  # a fresh run never writes over an earlier one
        raise RunError(held_message(cfg.out, old))
    steps, t_run, epoch_seconds = 0, time.time(), []
    while epoch < cfg.max_epochs and best["bad_epochs"] < cfg.patience:
        if cfg.max_minutes and time.time() - t_run > 60 * cfg.max_minutes:
            say(f"--max-minutes {cfg.max_minutes:g}: no new epoch after {epoch}")
            break
        epoch += 1
        model.train()
        t0 = t_said = time.time()
        loss_sum, n_seen = torch.zeros((), dtype=torch.float64, device=cfg.device), 0  # summed on the device: no sync per step
        for b in batches(epoch):
            b = b.to(cfg.device)
            with autocast():
                loss = loss_fn(model, b)
            loss_sum += loss.detach().double() * len(b.label)  # this rank's rows
            if world > 1:  # weight by this rank's share of the global batch, then sum over ranks
                loss = loss * (len(b.label) * world / b.n_global)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if world > 1:
                all_reduce_grads(params)
            scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            scaler.step(opt)  # with fp16, skips a step whose gradients overflowed
            scaler.update()
            sched.step()
            n_seen, steps = n_seen + b.n_global, steps + 1
            if time.time() - t_said > PROGRESS_SECONDS:  # the only host sync inside an epoch
                t_said = time.time()
                check_finite(loss_sum, epoch)
                say(f"  epoch {epoch} step {steps} | loss {loss_sum.item() / max(1, n_seen // world):.4f} "
                    f"| {n_seen / (t_said - t0):.0f} samples/s")
            if cfg.max_steps and steps >= cfg.max_steps:
                break
        check_finite(loss_sum, epoch)
        train_seconds = time.time() - t0
        _, m = evaluate(model, predict, ds, "valid", autocast)
        if m["auc"] > best["auc"] or best["epoch"] == 0:  # the first epoch counts even when AUC is undefined
            best = dict(auc=m["auc"], epoch=epoch, bad_epochs=0)
            save_atomic(checkpoint(cfg, model, epoch, best), os.path.join(cfg.out, "best.pt"))
        else:
            best["bad_epochs"] += 1
        if epoch % CHECKPOINT_EVERY == 0:
            save_atomic(checkpoint(cfg, model, epoch, best), os.path.join(cfg.out, f"epoch_{epoch:03d}.pt"))
        save_atomic(checkpoint(cfg, model, epoch, best, opt, sched, scaler), os.path.join(cfg.out, "last.pt"))
        epoch_seconds.append(time.time() - t0)
        log_epoch(cfg, epoch, all_sum(loss_sum) / n_seen, m, sched.get_last_lr()[0], epoch_seconds,
                  n_seen / train_seconds, best)
        if cfg.max_steps and steps >= cfg.max_steps:
            say(f"--max-steps {cfg.max_steps}: stopping after {steps} steps")
            break
        if cfg.stop_after and epoch >= cfg.stop_after:
            say(f"--stop-after {cfg.stop_after}: stopping early (continue with --resume)")
            return None
    say(f"done: best valid AUC {best['auc']:.4f} at epoch {best['epoch']} ({(time.time() - t_run) / 60:.1f} min)")
    return finish(cfg, model, predict, ds, autocast)


def check_finite(loss_sum, epoch):
    if not torch.isfinite(loss_sum):
        raise FloatingPointError(f"epoch {epoch}: loss is {loss_sum.item()}; stopping rather than training on "
                                 f"garbage (try a lower --lr, --amp none, or check the data)")


def log_epoch(cfg, epoch, train_loss, m, lr, epoch_seconds, samples_per_s, best):
    """One log.jsonl line and one progress line. The ETA brackets the end: at the earliest when
    the patience runs out with no better epoch, at the latest at max_epochs."""
    rec = dict(epoch=epoch, train_loss=train_loss, valid=m, lr=lr, seconds=epoch_seconds[-1],
               samples_per_s=samples_per_s)
    if is_main():
        with writing(os.path.join(cfg.out, "log.jsonl")), open(os.path.join(cfg.out, "log.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
    per_epoch = sum(epoch_seconds) / len(epoch_seconds) / 60
    soonest = min(cfg.patience - best["bad_epochs"], cfg.max_epochs - epoch)
    say(f"epoch {epoch:3d} | loss {train_loss:.4f} | valid auc {m['auc']:.4f} uauc {m['uauc']:.4f} "
        f"| best {best['auc']:.4f}@{best['epoch']} | lr {lr:.2e} | {epoch_seconds[-1]:.1f}s "
        f"{samples_per_s:.0f}/s | eta {soonest * per_epoch:.1f}-{(cfg.max_epochs - epoch) * per_epoch:.1f} min")
