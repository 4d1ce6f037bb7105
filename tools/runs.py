"""Machinery that keeps a run's files whole and its failures readable, in this order: error lines (an
expected failure: one `error: ...` line, exit 2; a non-finite loss or score 1; Ctrl-C 130), flag types,
files written whole (a checkpoint with its SHA-256), what a run is made from, what --resume restores,
and run directories with one writer (OUT/run.lock), an earlier run continued or moved aside, never lost."""
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
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import torch

from tools.dist import barrier, is_main, say

LOCK = "run.lock"  # in a run directory while a run writes there: its pid, host and start
MADE_FROM = "made_from.json"  # beside a tiny backbone or an adapter: the digests of what made it


class RunError(ValueError):
    """A run directory, checkpoint or flag that cannot be used as asked; the message says what to do."""


def first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def cli(main):
    """main(argv), its exit status (0 for None), with an expected failure as one error line on stderr."""
    @functools.wraps(main)
    def run(argv=None):
        try:
            return main(argv) or 0
        except (FloatingPointError, ValueError, KeyError, OSError) as e:  # DataError, RunError: ValueErrors
            why = e.args[0] if isinstance(e, KeyError) and e.args else first_line(e)  # a KeyError without quotes
            print(f"error: {why}", file=sys.stderr)
            return 1 if isinstance(e, FloatingPointError) else 2
        except KeyboardInterrupt as e:
            print(f"\ninterrupted{'; ' + str(e) if str(e) else ''}", file=sys.stderr)
            return 130
    return run


def check_device(device):
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise RunError(f"--device {device}: expected cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"--device {device}, but torch {torch.__version__} sees no CUDA device; use --device cpu")


def default_precision(a):
    """(weight dtype, why) for Run a without --dtype (autocast follows), as tools/bench.py --ckpt measured."""
    if a.device.startswith("cuda"):
        return "float32", "the paper's mixed precision on CUDA: fp32 weights, fp16 autocast and a GradScaler"
    if a.llm == "tiny" or a.stage not in ("icl", "text", "joint"):
        return "float32", "fp32: the tiny backbone and the CF models gain nothing from bf16 on a CPU"
    if native_bf16():
        return "bfloat16", "bf16 weights and autocast: this CPU has native bf16 (AMX or avx512_bf16)"
    return "float32", "fp32: this CPU has no native bf16 (no AMX, no avx512_bf16), where bf16 is slower"


def native_bf16():
    """Whether this CPU computes bf16 in hardware (AMX or avx512_bf16); elsewhere torch emulates it."""
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def default_amp(device, dtype):
    """--amp's default: the paper's fp16 (+ GradScaler) on CUDA, bf16 autocast with bf16 weights, else none."""
    return "fp16" if device.startswith("cuda") else "bf16" if dtype == "bfloat16" else "none"


def precision_note(a):
    """Why Run a computes in its precision: the default's reason, or "as asked" (and a warning where bf16
    would be emulated: a bf16 run re-scored on a CPU without native bf16 runs many times slower)."""
    dtype, why = default_precision(a)
    if a.dtype == dtype:
        return why
    slow = a.dtype == "bfloat16" and a.device == "cpu" and not native_bf16()
    return "as asked" + ("; this CPU has no native bf16 (no AMX, no avx512_bf16), so bf16 is emulated and many"
                         " times slower than fp32: --dtype float32 computes in fp32" if slow else "")


def number(low, high=None, kind=float, low_open=False):
    """An argparse type: a finite number of `kind` in [low, high] (low excluded with low_open)."""
    what = "an integer" if kind is int else "a finite number"
    where = f"{'>' if low_open else '>='} {low}" + ("" if high is None else f" and <= {high}")

    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(v) or (v <= low if low_open else v < low) or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"expected {what} {where}, got {text}")
        return v
    return parse


positive = number(1, kind=int)      # a batch size, a count of epochs
non_negative = number(0, kind=int)  # 0 meaning "none" or "no limit"


@contextmanager
def writing(path):
    """A failed write (a full disk, a read-only directory) as one RunError naming the file."""
    try:
        yield
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        raise RunError(f"{path}: could not write it ({first_line(e)}); is the disk full or read-only?") from None


def save_atomic(obj, path):
    """torch.save(obj) with the SHA-256 of its bytes, under a temporary name renamed into place."""
    if is_main():  # under torchrun, rank 0 alone writes
        with writing(path):
            torch.save(obj, buf := io.BytesIO())
            payload = buf.getvalue()
            torch.save(dict(sha256=hashlib.sha256(payload).hexdigest(), payload=payload), path + ".tmp")
            os.replace(path + ".tmp", path)  # a reader never sees half a file


def read_checkpoint(path, map_location="cpu"):
    """A checkpoint that save_atomic wrote, its digest checked, or one error line saying why not."""
    if not os.path.exists(path):
        raise RunError(f"{path} not found")
    try:
        outer = torch.load(path, weights_only=False, map_location="cpu")
        payload = outer["payload"]
        if hashlib.sha256(payload).hexdigest() != outer["sha256"]:
            raise RunError("its bytes do not match the SHA-256 it was written with: the file is damaged")
        return torch.load(io.BytesIO(payload), weights_only=False, map_location=map_location)
    except Exception as e:  # a missing, truncated or foreign file fails in many ways
        raise RunError(f"{path}: cannot read this checkpoint ({type(e).__name__}: {first_line(e)})") from None


def write_json(obj, path):
    """JSON with NaN written as null (a metric undefined on one class), atomically."""
    clean = lambda v: (None if isinstance(v, float) and math.isnan(v) else
                       {k: clean(x) for k, x in v.items()} if isinstance(v, dict) else v)
    if is_main():
        with writing(path):
            Path(path + ".tmp").write_text(json.dumps(clean(obj), indent=2))
            os.replace(path + ".tmp", path)


def publish_dir(final, write):
    """A multi-file artefact whole or not at all: write(tmp) fills a fresh sibling directory, which
    then replaces FINAL. A kill mid-write leaves FINAL.tmp-<pid> beside it and FINAL as it was."""
    if is_main():
        tmp = f"{final}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        with writing(final):  # renames only: a kill never leaves FINAL half deleted
            if os.path.exists(final):
                os.rename(final, f"{final}.old-{os.getpid()}")
            os.rename(tmp, final)
            shutil.rmtree(f"{final}.old-{os.getpid()}", ignore_errors=True)


def check_adapter(adapter_dir):
    """An adapter_config.json that lora.load_adapter can read, or one error line naming it."""
    path, cfg = Path(adapter_dir, "adapter_config.json"), None
    with suppress(ValueError):  # not JSON: refused below
        cfg = json.loads(path.read_text())
    if not isinstance(cfg, dict) or not {"r", "lora_alpha", "target_modules"} <= set(cfg):
        raise RunError(f"{path}: expected peft's adapter_config.json, JSON with r, lora_alpha and target_modules")


MISSING_LLM = ("Put a Hugging Face Llama there (e.g. TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T, or "
               "python ../shared/tools/get_smollm2.py DIR), or use the embedded random backbone: --llm tiny")


def check_joint_parts(a):
    """The joint stage's missing inputs (Run a), each with the command that makes it, as one error."""
    llm_missing = a.llm != "tiny" and not os.path.exists(os.path.join(a.llm, "config.json"))
    need = [f"an LLM at {a.llm} ({MISSING_LLM})"] if llm_missing else []
    if not os.path.exists(a.cf_ckpt):
        need.append(f"a CF checkpoint at {a.cf_ckpt}: python train.py --stage {a.cf} --data {a.data} --out "
                    f"{os.path.dirname(a.cf_ckpt)}")
    if not os.path.exists(os.path.join(a.lora, "adapter_config.json")):  # --resume: its run stopped before it
        resume = " --resume" if os.path.exists(os.path.join(os.path.dirname(a.lora), "last.pt")) else ""
        need.append(f"a text-stage LoRA adapter at {a.lora}: python train.py --stage text --data {a.data} "
                    f"--llm {a.llm} --out {os.path.dirname(a.lora)}{resume}")
    if need:
        raise FileNotFoundError("the joint stage needs " + "; and ".join(need) + ". Or make all of them in "
                                f"turn: python train.py --stage all --data {a.data} --llm {a.llm}")


def digest(*parts):
    """SHA-256 (16 hex digits) of byte strings and numpy arrays, in order."""
    h = hashlib.sha256()
    for p in parts:
        h.update(np.ascontiguousarray(p).tobytes() if isinstance(p, np.ndarray) else p)
    return h.hexdigest()[:16]


def data_digests(ds):
    """{rows: the rows this run loaded, labels and splits too; catalog: what the ids mean, any --limit}."""
    cols = [ds.user, ds.item, ds.label, ds.timestamp, ds.split.astype("U5"), ds.history.liked, ds.history.start]
    catalog = json.dumps([ds.name, ds.n_users, ds.n_items, ds.titles]).encode()
    return dict(rows=digest(*cols, catalog), catalog=digest(catalog))


def files_digest(path):
    """The digest of a file, or of a directory's files by name, read in 1 MiB blocks."""
    h = hashlib.sha256()
    files = [os.path.join(path, f) for f in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
    for f in filter(os.path.isfile, files):
        h.update(os.path.basename(f).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def read_made_from(d):
    path = Path(d, MADE_FROM)
    return json.loads(path.read_text()) if path.exists() else {}


def check_made_from(what, recorded, now, keys=None):
    """Refuse, in one line naming what changed, a use of `what` on other inputs than it was made from."""
    changed = [k for k in keys or sorted(set(recorded) | set(now)) if recorded.get(k) != now.get(k)]
    if changed:
        was = "; ".join(f"{k} {recorded.get(k)} then, {now.get(k)} now" for k in changed)
        raise RunError(f"{what} was made from other inputs than these: {', '.join(changed)} changed ({was}); "
                       "use the inputs it was made from, or train a new run")


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
    return [f"--{k.replace('_', '-')} {now.get(k)} (the run has {saved.get(k)})"
            for k in sorted((saved.keys() | now.keys()) - set(may_change)) if saved.get(k) != now.get(k)]


@contextmanager
def own_run_dirs(outs, resume=False, overwrite=False):
    """Hold each directory in outs (locked by rank 0, which proves it writable) until every file is
    written; unless resuming it starts empty: --overwrite moves an earlier run's files aside."""
    held = []
    try:
        for out in outs if is_main() else ():
            if os.path.exists(out) and not os.path.isdir(out):
                raise RunError(f"{out} is a file; expected a run directory (--out)")
            held.append(out)
            try:
                os.makedirs(out, exist_ok=True)
                lock(out)
            except OSError as e:
                raise RunError(f"{out}: cannot write there ({first_line(e)})") from None
            old = [] if resume else sorted(f for f in os.listdir(out) if f != LOCK and not f.startswith("old-"))
            if old and not overwrite:
                raise RunError(f"{out} holds an earlier run ({', '.join(old[:3])}{', ...' if old[3:] else ''}); "
                               f"continue it with --resume, or start over with --overwrite (it moves to {out}/old-*)")
            if old:
                aside = tempfile.mkdtemp(prefix=time.strftime("old-%Y%m%d-%H%M%S-"), dir=out)  # a new name, always
                for name in old:
                    os.rename(os.path.join(out, name), os.path.join(aside, name))
                say(f"--overwrite: moved the earlier run's files in {out} to {aside}")
        barrier()
        yield
    finally:
        for out in held:
            holder = live_lock(out)
            if holder and (holder["pid"], holder["host"]) == (os.getpid(), socket.gethostname()):
                os.remove(os.path.join(out, LOCK))


def lock(out):
    """Create out/run.lock, or refuse: a live holder keeps it, a dead one's lock is taken over."""
    if live_lock(out, take_over=True) is None:
        # O_EXCL: of two writers, one creates it; the other's FileExistsError falls through to the refusal
        with suppress(FileExistsError), open(os.path.join(out, LOCK), "x") as f:
            json.dump(dict(pid=os.getpid(), host=socket.gethostname(),
                           started=time.strftime("%Y-%m-%d %H:%M:%S")), f)
            return
    raise RunError(busy_message(out, live_lock(out)))


def live_lock(out, take_over=False):
    """The holder of out/run.lock (pid, host, start) if its process may be alive, else None: no readable
    lock, or its process ran on this host and has ended (take_over: then its lock is removed, said)."""
    path = os.path.join(out, LOCK)
    try:
        holder = json.loads(Path(path).read_text())
        pid, host, started = holder["pid"], holder["host"], holder["started"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    try:
        if host == socket.gethostname() and pid != os.getpid():
            os.kill(pid, 0)  # signal 0 checks that the process exists, and sends nothing
    except ProcessLookupError:
        if take_over:
            say(f"{path}: taking over the lock of pid {pid} (since {started}), which has ended")
            os.remove(path)
        return None
    except (OSError, OverflowError, TypeError):  # another user's live process, or not a pid at all
        pass
    return holder


def busy_message(out, holder):
    who = f"pid {holder['pid']} on {holder['host']}, since {holder['started']}" if holder else "an unreadable lock"
    return (f"{out} is in use by another run ({who}); wait for it to finish or use another --out "
            f"(if no run is using it, delete {os.path.join(out, LOCK)})")
