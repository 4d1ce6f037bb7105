"""The training loop every stage shares (paper Section 3.3): AdamW, linear warm-up then cosine
decay, autocast (bf16, or fp16 with a GradScaler), gradient clipping, early stopping on
validation AUC, checkpoints (the best, every 8 epochs, and the last for --resume), and data
parallelism under torchrun. At the end it reloads the best epoch and writes metrics.json.

It names no stage: a stage (train.py) hands it its Run (the flags), a model and
    batches(epoch) -> iterable of data.Batch; the order depends only on (seed, epoch)
    loss_fn(model, batch) -> scalar loss
    predict(model, split) -> np.ndarray of logits in ds.idx(split)'s order
"""
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, fields

import torch

import metrics as M
from tools import limits, runs
from tools.dist import all_reduce_grads, all_sum, barrier, rank_world, say

CHECKPOINT_EVERY = 8   # epochs between the numbered checkpoints (the paper's habit)
PROGRESS_SECONDS = 30  # a progress line inside an epoch at most this often


def train(run, made_from, model, batches, loss_fn, predict, ds):
    """Train `model`'s trainable parameters; return the best epoch's metrics.json dict (None when
    --stop-after interrupts the run). made_from: digests of the run's inputs, saved in each checkpoint."""
    world, params = rank_world()[1], [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in params), "trainable parameters must stay fp32"
    n = len(batches(1))  # steps per epoch
    opt = torch.optim.AdamW(param_groups(model, run.wd), lr=run.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(int(run.warmup_epochs * n), run.max_epochs * n))
    scaler = torch.amp.GradScaler(torch.device(run.device).type, enabled=run.amp == "fp16")
    autocast = autocast_for(run)
    epoch, best, history = 0, dict(auc=-1.0, epoch=0, bad_epochs=0), []  # history: log.jsonl's lines
    if run.resume and os.path.exists(os.path.join(run.out, "last.pt")):
        epoch, best, history = resume_from(run, made_from, model, opt, sched, scaler, n)
        if epoch < run.max_epochs and best["bad_epochs"] < run.patience:  # an ended run goes on: what it said
            runs.move_aside(run.out, [f for f in sorted(os.listdir(run.out))  # then is not what it says now
                                      if f == "metrics.json" or f.startswith("rescored")], "--resume")
    elif run.resume:  # it stopped in its first epoch
        say(f"--resume: {run.out} has no last.pt yet; starting at epoch 1")
    steps, t_run, cut = 0, time.time(), 0  # cut: 1 when a budget ends the run before its epochs or patience do
    while epoch < run.max_epochs and best["bad_epochs"] < run.patience:
        if run.max_minutes and time.time() - t_run > 60 * run.max_minutes:
            say(f"--max-minutes {run.max_minutes:g}: no new epoch after {epoch}")
            cut = 1
            break
        epoch, first_step = epoch + 1, steps
        model.train()
        t0 = t_said = time.time()
        loss_sum, n_seen, tokens = torch.zeros((), dtype=torch.float64, device=run.device), 0, 0  # no sync per step
        for b in (epoch_batches := batches(epoch)):
            b = b.to(run.device)
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
            torch.nn.utils.clip_grad_norm_(params, run.clip)
            scaler.step(opt)  # with fp16, skips a step whose gradients overflowed
            scaler.update()
            sched.step()
            n_seen, steps, tokens = n_seen + b.n_global, steps + 1, tokens + b.tokens * world  # (this rank's x world)
            if time.time() - t_said > PROGRESS_SECONDS:  # the only host sync inside an epoch
                t_said = time.time()
                check_finite(model, loss_sum, epoch)
                say(f"  epoch {epoch} step {steps} | loss {loss_sum.item() / max(1, n_seen // world):.4f} "
                    f"| {n_seen / (t_said - t0):.1f} samples/s")
            if run.max_steps and steps >= run.max_steps:
                break
        check_finite(model, loss_sum, epoch)  # the last update of the epoch, too
        train_seconds = time.time() - t0
        m = evaluate(model, predict, ds, ["valid"], autocast)["valid"]
        if m["auc"] > best["auc"] or best["epoch"] == 0:  # the first epoch counts even when AUC is undefined
            best = dict(auc=m["auc"], epoch=epoch, bad_epochs=0)
        else:
            best["bad_epochs"] += 1
        log = dict(epoch=epoch, train_loss=all_sum(loss_sum) / n_seen, valid=m, lr=sched.get_last_lr()[0],
                   seconds=time.time() - t0, samples_per_s=n_seen / train_seconds, steps=steps - first_step,
                   partial=int(steps - first_step < len(epoch_batches)),  # (--max-steps stopped it)
                   **(dict(tokens_per_s=tokens / train_seconds) if tokens else {}))
        history.append(log)  # last.pt keeps the log, so a failed log.jsonl write loses no line on --resume
        # last.pt first: a run stopped before the next writes resumes from it and writes them (checkpoint_epoch)
        save(run, "last.pt", made_from, model, epoch, best, opt, sched, scaler, history)
        checkpoint_epoch(run, made_from, model, epoch, best)
        write_log(run, history)
        say(f"epoch {epoch:3d} | loss {log['train_loss']:.4f} | valid auc {m['auc']:.4f} uauc {m['uauc']:.4f} | best "
            f"{best['auc']:.4f}@{best['epoch']} | lr {log['lr']:.2e} | {log['seconds']:.1f}s")
        if run.max_steps and steps >= run.max_steps:
            say(f"--max-steps {run.max_steps}: stopping after {steps} steps")
            cut = int(epoch < run.max_epochs and best["bad_epochs"] < run.patience)
            break
        if run.stop_after and epoch >= run.stop_after:
            say(f"--stop-after {run.stop_after}: stopping early (continue with --resume)")
            return None
        if run.pause_minutes and time.time() - t_run + log["seconds"] > 60 * run.pause_minutes \
                and epoch < run.max_epochs and best["bad_epochs"] < run.patience:  # (not when the run ends anyway)
            say(f"--pause-minutes {run.pause_minutes:g}: another epoch would not end in time; paused after epoch "
                f"{epoch} (continue with --resume)")
            return None
    say(f"done: best valid AUC {best['auc']:.4f} at epoch {best['epoch']} ({(time.time() - t_run) / 60:.1f} min)")
    cut |= any(h.get("partial") for h in history)  # an epoch --max-steps cut, in this call or an earlier one
    return finish(run, model, predict, ds, autocast, dict(cut_short=int(cut)))


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


def autocast_for(run):
    """The run's autocast, a context factory: bf16, fp16 (which train pairs with a GradScaler), or none."""
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.amp)
    return (lambda: torch.autocast(torch.device(run.device).type, dtype=amp_dtype)) if amp_dtype else nullcontext


def evaluate(model, predict, ds, splits=("valid", "test"), autocast=nullcontext, raw=False):
    """metrics.json's sections of `splits` (test brings its seen/unseen and warm/cold parts), in eval mode;
    raw=True: the logits themselves, {split: predict(model, split)}."""
    model.eval()
    with torch.no_grad(), autocast():
        logits = {s: predict(model, s) for s in ("valid", "test") if s in splits}
    return logits if raw else M.split_report(ds, logits.get("valid"), logits.get("test"))


def check_finite(model, loss_sum, epoch):
    bad = [n for n, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if bad or not torch.isfinite(loss_sum):
        raise FloatingPointError(f"epoch {epoch}: loss is {loss_sum.item()}, {len(bad)} trained tensor(s) hold NaN "
                                 f"or inf {bad[:2]}; stopping (try a lower --lr, --amp none, or check the data)")


def trainable_state(model):
    """Only the tensors that train: a frozen backbone never lands in a checkpoint."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model, state, path):
    """Load trainable tensors from the checkpoint at path: a missing, unexpected or mis-shaped key is one line."""
    params = dict(model.named_parameters())
    missing = {n for n, p in params.items() if p.requires_grad} - set(state)
    unexpected = set(state) - set(params)
    bad = [n for n in set(state) & set(params) if not (torch.is_tensor(state[n]) and state[n].shape == params[n].shape
                                                        and state[n].dtype in limits.FLOATS.values()
                                                        and torch.isfinite(state[n].to(params[n].dtype)).all())]
    if missing or unexpected or bad:
        raise runs.RunError(f"{path}: does not fit this model: missing {sorted(missing)[:3]}, unexpected "
                            f"{sorted(unexpected)[:3]}, of another shape, not a float or not finite {sorted(bad)[:3]}")
    model.load_state_dict(state, strict=False)


def same_auc(a, b):
    return a == b or a != a and b != b  # (NaN, an undefined AUC, is itself)


def write_log(run, history):
    runs.write_atomic(os.path.join(run.out, "log.jsonl"), "".join(json.dumps(h) + "\n" for h in history).encode())


def save(run, name, made_from, model, epoch, best, opt=None, sched=None, scaler=None, history=()):
    """run.out/name: the flags, what the run is made from, the trained tensors; with opt, all --resume needs."""
    ck = dict(args=asdict(run), made_from=made_from, epoch=epoch, best_valid_auc=best["auc"],
              model=trainable_state(model))
    if opt is not None:
        ck.update(optimizer=opt.state_dict(), scheduler=sched.state_dict(), scaler=scaler.state_dict(),
                  rng=runs.rng_state(), best=best, log=list(history))
    os.makedirs(run.out, exist_ok=True)
    runs.save_atomic(ck, os.path.join(run.out, name))


def checkpoint_epoch(run, made_from, model, epoch, best, only_missing=False):
    """best.pt when this epoch is the best, and every CHECKPOINT_EVERY epochs epoch_NNN.pt (with only_missing, those
    a run stopped after its last.pt's write lacks: a best.pt of an earlier epoch, or none, is this one's now)."""
    for name, due in (("best.pt", best["epoch"] == epoch), (f"epoch_{epoch:03d}.pt", epoch % CHECKPOINT_EVERY == 0)):
        path = os.path.join(run.out, name)
        if due and not (only_missing and runs.peek_args(path, None).get("epoch") == epoch):
            save(run, name, made_from, model, epoch, best)
            if only_missing:
                say(f"--resume: {path} of epoch {epoch} written from last.pt (the run stopped before it)")


def resume_from(run, made_from, model, opt, sched, scaler, n):
    path = os.path.join(run.out, "last.pt")
    ck = runs.read_checkpoint(path)
    try:  # a last.pt is input like any other: what AdamW would read only at its next step is checked now
        may_change = [f.name for f in fields(run) if f.metadata.get("resume_may_change")]
        if changed := runs.changed_flags(ck["args"], asdict(run), may_change):
            raise runs.RunError(f"--resume: {path} was trained with other flags: {'; '.join(changed)}. Resume with "
                                "the run's own flags, or start a new run (another --out, or --overwrite)")
        runs.check_made_from(f"--resume: {path}", ck.get("made_from", {}), made_from)
        load_trainable(model, ck["model"], path)
        fresh = opt.state_dict(), sched.state_dict(), scaler.state_dict()  # as this run's flags build them
        for part, key, now in zip((opt, sched, scaler), ("optimizer", "scheduler", "scaler"), fresh):
            if not isinstance(ck[key], dict) or ck[key].keys() != now.keys():  # (LambdaLR would take any key)
                raise ValueError(f"its {key} state has other keys than this run's")
            part.load_state_dict(ck[key])
        epoch, best, log = ck["epoch"], ck["best"], ck["log"]
        if not (type(epoch) is int and 0 < epoch <= run.max_epochs and isinstance(log, list)
                and [h.get("epoch") if isinstance(h, dict) else None for h in log] == list(range(1, epoch + 1))
                and type(best["epoch"]) is int and 0 < best["epoch"] <= epoch  # the epochs since the best:
                and type(best["bad_epochs"]) is int and best["bad_epochs"] == epoch - best["epoch"]  # patience's
                and isinstance(best["auc"], float) and not best["auc"] < 0 and not best["auc"] > 1  # (NaN: undefined)
                and same_auc(best["auc"], log[best["epoch"] - 1].get("valid", {}).get("auc"))):  # the log's own
            raise ValueError("epoch, best or log of the wrong type or range, or not of one run "
                             "(a log line per epoch; the best epoch within them, its AUC the log's; AUC in 0..1)")
        runs.check_resumed(opt, sched, scaler, fresh, steps=epoch * n)
        runs.set_rng_state(ck["rng"])
        checkpoint_epoch(run, made_from, model, epoch, best, only_missing=True)
        barrier()  # (rank 0 wrote them)
        best_pt = runs.read_checkpoint(os.path.join(run.out, "best.pt"))  # the model the run ends by scoring:
        if best_pt["epoch"] != best["epoch"] or runs.made_from_changes(best_pt["made_from"], made_from) or not same_auc(
                best_pt["best_valid_auc"], best["auc"]) or runs.changed_flags(best_pt["args"], ck["args"], may_change):
            raise ValueError(f"its best.pt is not its best epoch {best['epoch']} (a best.pt of epoch "
                             f"{best_pt['epoch']!r:.20}, or of other flags or inputs)")
    except (runs.RunError, limits.SizeError):  # (too big for memory now is no damage)
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RuntimeError, OverflowError) as e:
        raise runs.RunError(f"{path}: its resume state is damaged or foreign ({type(e).__name__}: "
                            f"{runs.first_line(e)}); start over with --overwrite") from None
    write_log(run, log)  # whole again, if its last write failed
    say(f"resumed from {path} after epoch {epoch} (best valid AUC {best['auc']:.4f})")
    return epoch, best, log


def finish(run, model, predict, ds, autocast=nullcontext, more=None):
    """Reload best.pt, score valid and test, write metrics.json (test's warm/cold parts too, best.pt's epoch and
    valid AUC as training measured it; `more`: how training ended, cut_short 1 when --max-minutes or --max-steps
    stopped it first, which no table row may mix)."""
    barrier()  # rank 0 has written best.pt
    ck = runs.read_checkpoint(path := os.path.join(run.out, "best.pt"))
    load_trainable(model, ck["model"], path)
    report = dict(evaluate(model, predict, ds, autocast=autocast), best_epoch=ck["epoch"],  # (valid re-scored:
                  best_valid_auc=ck["best_valid_auc"], **(more or {}))  # training's figure ties it to best.pt)
    runs.write_json(report, os.path.join(run.out, "metrics.json"))
    say(f"test auc {report['test']['auc']:.4f} | valid auc {report['valid']['auc']:.4f} -> {run.out}/metrics.json")
    return report
