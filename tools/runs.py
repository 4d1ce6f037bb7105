"""Run directories, checkpoint files and error lines: what keeps a run's files whole and its
failures readable. Machinery beside the lesson; the training loop calls it in one line each.

- A run directory belongs to one run (`own_run_dirs`): OUT/run.lock names its writer, a lock whose
  process is gone is taken over with a message, and an earlier run is continued (--resume, same
  flags) or moved aside into OUT/old-<time>-*/ (--overwrite), never deleted.
- Files appear whole or not at all: checkpoints and JSON are written to a temporary name and
  renamed (`save_atomic`, `write_json`); multi-file artefacts (the tiny backbone, a LoRA adapter)
  fill a sibling directory that is renamed into place (`publish_dir`).
- A checkpoint carries the SHA-256 of its own bytes, checked on every load, so a damaged file is
  refused instead of loading wrong numbers.
- An expected failure (bad input, a missing file, a busy directory) is one `error: ...` line and
  exit status 2 (`cli`); a non-finite loss or score exits 1, Ctrl-C 130.
"""
import argparse
import functools
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import socket
import sys
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import torch

from tools.dist import barrier, is_main, say

LOCK = "run.lock"  # in a run directory while a run writes there: its pid, host and start


class RunError(ValueError):
    """A run directory, checkpoint or flag that cannot be used as asked; the message says what to do."""


# -----------------------------------------------------------------------------
# error lines and flag types


def first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def error_line(e):
    """One 'error: ...' line for an expected failure (a KeyError's message without its quotes)."""
    return f"error: {e.args[0] if isinstance(e, KeyError) and e.args else first_line(e)}"


def cli(main):
    """A command's main(argv), wrapped: expected failures become one error line on stderr and an
    exit status (1 for a non-finite loss or score, 2 for bad input or files, 130 for Ctrl-C)."""
    @functools.wraps(main)
    def run(argv=None):
        try:
            return main(argv)
        except FloatingPointError as e:
            print(error_line(e), file=sys.stderr)
            return 1
        except (ValueError, KeyError, OSError) as e:  # DataError, CheckpointError and RunError are ValueErrors
            print(error_line(e), file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            print(f"\ninterrupted{'; ' + str(e) if str(e) else ''}", file=sys.stderr)
            return 130
    return run


def check_device(device):
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise RunError(f"--device {device}: expected cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"--device {device}, but this torch ({torch.__version__}) sees no CUDA device; use "
                            "--device cpu, or install a CUDA build of torch on a machine with a GPU")


def default_precision(a):
    """(weight dtype, why) for Run a when --dtype is not given; the loop's autocast follows the
    weights (bf16 weights: bf16 autocast). Measured by tools/bench.py --ckpt (results/README.md)."""
    if a.device.startswith("cuda"):
        return "float32", "the paper's mixed precision on CUDA: fp32 weights, fp16 autocast and a GradScaler"
    if a.llm == "tiny" or a.stage not in ("icl", "text", "joint"):
        return "float32", "fp32: the tiny backbone and the CF models gain nothing from bf16 on a CPU"
    if torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported():
        return "bfloat16", "bf16 weights and autocast: this CPU has native bf16 (AMX or avx512_bf16)"
    return "float32", "fp32: this CPU has no native bf16 (no AMX, no avx512_bf16), where bf16 is slower"


def number(low=None, high=None, kind=float, low_open=False):
    """An argparse type: a finite number of `kind` in [low, high] (low excluded with low_open)."""
    what = "an integer" if kind is int else "a finite number"

    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        bad = (not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low))
               or (high is not None and v > high))
        if bad:
            where = ("" if low is None else f"{'>' if low_open else '>='} {low}") + \
                    ("" if high is None else f"{' and ' if low is not None else ''}<= {high}")
            raise argparse.ArgumentTypeError(f"expected {what} {where}, got {text}")
        return v
    return parse


positive = number(1, kind=int)      # a batch size, a count of epochs
non_negative = number(0, kind=int)  # 0 meaning "none" or "no limit"

# -----------------------------------------------------------------------------
# files: written whole, read back checked


@contextmanager
def writing(path):
    """A failed write (a full disk, a read-only directory) as one RunError naming the file."""
    try:
        yield
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        raise RunError(f"{path}: could not write it ({first_line(e)}); is the disk full or the "
                       "directory read-only?") from None


def save_atomic(obj, path):
    """torch.save(obj) with the SHA-256 of its bytes, under a temporary name renamed into place."""
    if not is_main():  # under torchrun, rank 0 alone writes
        return
    buf = io.BytesIO()
    with writing(path):
        torch.save(obj, buf)
        payload = buf.getvalue()
        torch.save(dict(sha256=hashlib.sha256(payload).hexdigest(), payload=payload), path + ".tmp")
        os.replace(path + ".tmp", path)  # a reader never sees half a file


def read_checkpoint(path, map_location="cpu"):
    """A checkpoint that save_atomic wrote, its digest checked, or one error line saying why not."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; expected a checkpoint written by train.py")
    try:
        outer = torch.load(path, weights_only=False, map_location="cpu")
        payload = outer["payload"]
        if hashlib.sha256(payload).hexdigest() != outer["sha256"]:
            raise RunError("its bytes do not match the SHA-256 it was written with: the file is damaged")
        ck = torch.load(io.BytesIO(payload), weights_only=False, map_location=map_location)
    except Exception as e:  # a truncated or foreign file fails to unpickle in many ways
        raise RunError(f"{path}: cannot read this checkpoint ({type(e).__name__}: {first_line(e)}); "
                       "expected a complete file written by train.py") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("model"), dict) or not isinstance(ck.get("args"), dict):
        raise RunError(f"{path}: expected a train.py checkpoint (a dict with 'args' and 'model')")
    return ck


def write_json(obj, path):
    """JSON with NaN written as null (a metric undefined on one class), atomically."""
    clean = lambda v: (None if isinstance(v, float) and math.isnan(v) else
                       {k: clean(x) for k, x in v.items()} if isinstance(v, dict) else v)
    if is_main():
        with writing(path):
            with open(path + ".tmp", "w") as f:
                json.dump(clean(obj), f, indent=2)
            os.replace(path + ".tmp", path)


def publish_dir(final, write):
    """A multi-file artefact whole or not at all: write(tmp) fills a fresh sibling directory, which
    is then renamed into place. A kill mid-write leaves FINAL.tmp-<pid> beside it and FINAL as it
    was; an existing FINAL is replaced."""
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


def check_adapter(adapter_dir):
    """A LoRA adapter directory that lora.load_adapter can read, or one error line naming the file."""
    path = os.path.join(adapter_dir, "adapter_config.json")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except ValueError as e:
        raise RunError(f"{path}: expected peft's adapter_config.json (JSON: {e})") from None
    if not isinstance(cfg, dict) or not {"r", "lora_alpha", "target_modules"} <= set(cfg):
        raise RunError(f"{path}: expected peft's adapter_config.json with r, lora_alpha and target_modules")
    if not any(os.path.exists(os.path.join(adapter_dir, f)) for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise RunError(f"{adapter_dir}: no adapter_model.safetensors; an incomplete adapter (rerun its text stage "
                       "with --resume to write it again)")

MISSING_LLM = ("Put TinyLlama-1.1B there in Hugging Face format (config.json, model.safetensors, tokenizer.model; "
               "e.g. a download of TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T), or point --llm at such a "
               "directory (python ../shared/tools/get_smollm2.py checkpoints/SmolLM2-135M-Instruct builds a real "
               "one here). To run the whole pipeline without one, use the embedded random backbone: --llm tiny")


def check_joint_parts(a):
    """What the joint stage (Run a) needs and lacks, each with the command that makes it, as one error."""
    need = [f"an LLM at {a.llm} ({MISSING_LLM})"] if a.llm != "tiny" and not os.path.exists(
        os.path.join(a.llm, "config.json")) else []
    if not os.path.exists(a.cf_ckpt):
        need.append(f"a CF checkpoint at {a.cf_ckpt}: python train.py --stage {a.cf} --data {a.data} "
                    f"--out {os.path.dirname(a.cf_ckpt)}")
    if not os.path.exists(os.path.join(a.lora, "adapter_config.json")):  # --resume: its run stopped before it
        resume = " --resume" if os.path.exists(os.path.join(os.path.dirname(a.lora), "last.pt")) else ""
        need.append(f"a text-stage LoRA adapter at {a.lora}: python train.py --stage text --data {a.data} "
                    f"--llm {a.llm} --out {os.path.dirname(a.lora)}{resume}")
    if need:
        raise FileNotFoundError("the joint stage needs " + "; and ".join(need) +
                                f". Or make all of them in turn: python train.py --stage all --data {a.data} --llm {a.llm}")

# -----------------------------------------------------------------------------
# what a run is made from: digests, recorded in every checkpoint and checked on every later use


def digest(*parts):
    """SHA-256 (16 hex digits) of byte strings and numpy arrays, in order."""
    h = hashlib.sha256()
    for p in parts:
        h.update(np.ascontiguousarray(p).tobytes() if isinstance(p, np.ndarray) else p)
    return h.hexdigest()[:16]


def data_digests(ds):
    """{rows: the rows this run loaded, labels and splits included; catalog: what the ids mean (the
    data set, its users and titles), the same for every --limit of it}."""
    cols = [ds.user, ds.item, ds.label, ds.timestamp, ds.split.astype("U5"), ds.history.liked, ds.history.start]
    catalog = json.dumps([ds.name, ds.n_users, ds.n_items, ds.titles]).encode()
    return dict(rows=digest(*cols, catalog), catalog=digest(catalog))


def files_digest(*paths):
    """The digest of files (a directory: its files, by name), read in 1 MiB blocks."""
    h = hashlib.sha256()
    for path in paths:
        for f in sorted(os.listdir(path)) if os.path.isdir(path) else [path]:
            f = os.path.join(path, f) if os.path.isdir(path) else f
            if os.path.isfile(f):
                h.update(os.path.basename(f).encode())
                with open(f, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
    return h.hexdigest()[:16]


MADE_FROM = "made_from.json"  # beside a tiny backbone or an adapter: the digests of what made it


def read_made_from(d):
    path = os.path.join(d, MADE_FROM)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def check_made_from(what, recorded, now, keys=None):
    """Refuse, in one line naming what changed, a use of `what` on other inputs than it was made from."""
    keys = keys or sorted(set(recorded) | set(now))
    changed = [k for k in keys if recorded.get(k) != now.get(k)]
    if changed:
        raise RunError(f"{what} was made from other inputs than these: {', '.join(changed)} changed "
                       f"({'; '.join(f'{k} {recorded.get(k)} then, {now.get(k)} now' for k in changed)}); use the "
                       "inputs it was made from, or train a new run")

# -----------------------------------------------------------------------------
# what --resume restores besides the tensors


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


def changed_flags(saved, now, may_change):
    """'--flag NEW (the run has OLD)' for every flag that would change a resumed run."""
    keys = sorted((saved.keys() | now.keys()) - set(may_change))
    return [f"--{k.replace('_', '-')} {now.get(k)} (the run has {saved.get(k)})" for k in keys
            if saved.get(k) != now.get(k)]

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
                raise RunError(busy_message(out, holder)) from None
            say(f"{path}: taking over the lock of pid {holder['pid']} (since {holder['started']}), which has ended")
            if os.path.exists(path):
                os.remove(path)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(dict(pid=os.getpid(), host=socket.gethostname(), started=time.strftime("%Y-%m-%d %H:%M:%S")), f)
        return
    raise RunError(f"{out}: another run took the lock first")


def busy_message(out, holder):
    who = f"pid {holder['pid']} on {holder['host']}, since {holder['started']}" if holder else "an unreadable lock"
    return (f"{out} is in use by another run ({who}); wait for it to finish or use another --out "
            f"(if no run is using it, delete {os.path.join(out, LOCK)})")


def live_lock(out):
    """The holder of out/run.lock if a live process holds it, else None (no lock, or a dead one)."""
    holder = read_lock(os.path.join(out, LOCK))
    return None if holder is None or holder_is_gone(holder) else holder


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
