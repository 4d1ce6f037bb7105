"""Machinery that keeps a run's files whole and its failures readable, in this order: error lines (an
expected failure: one `error: ...` line, exit 2; a non-finite loss or score 1; Ctrl-C 130), flag types,
files written whole (a checkpoint with its SHA-256), what a run is made from, what --resume restores,
and run directories with one writer (OUT/run.lock), an earlier run continued or moved aside, never lost."""
import argparse
import fcntl
import functools
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open

from tools import limits
from tools.dist import barrier, is_main, say
from tools.sources import DECIMAL, DIGITS, loads, read_json, regular_file

LOCK = "run.lock"  # in a run directory while a run writes there: its pid, host and start
# What a run directory may hold: the files train.py and eval.py write there, their temporaries, earlier runs
RUN_FILE = re.compile(r"(best|last|epoch_[0-9]+)\.pt|log\.jsonl|metrics\.json|rescored(-[0-9-]+)?\.json|"
                      r"adapter(\.(tmp|old)-\w+)?|[\w.-]+\.tmp|run\.lock|old-[\w-]+")
MADE_FROM = "made_from.json"  # beside a tiny backbone or an adapter: the digests of what made it
MAX_ERROR = 1000  # characters of an error line


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
        except (ArithmeticError, ValueError, KeyError, OSError) as e:  # DataError, RunError: ValueErrors
            why = str(e.args[0]) if isinstance(e, KeyError) and e.args else first_line(e)  # a KeyError without quotes
            if len(why) > MAX_ERROR:  # a value echoed from a hostile file (a 1 MB flag in a checkpoint)
                why = f"{why[:MAX_ERROR]}... ({len(why)} characters)"
            print(f"error: {why}", file=sys.stderr)
            return 1 if isinstance(e, FloatingPointError) else 2
        except (MemoryError, RuntimeError) as e:  # numpy's or torch's out of memory, from a size no check foresaw
            if isinstance(e, RuntimeError) and not isinstance(e, torch.OutOfMemoryError) \
                    and not re.search("can't allocate memory|Cannot allocate memory", str(e)):  # (the allocator's, mmap's)
                raise
            print(f"error: out of memory ({first_line(e)[:200]})", file=sys.stderr)
            return 1
        except KeyboardInterrupt as e:
            print(f"\ninterrupted{'; ' + str(e) if str(e) else ''}", file=sys.stderr)
            return 130
    return run


DEVICE = re.compile(r"cpu|cuda(:(0|[1-9][0-9]{0,3}))?")  # ASCII digits, one spelling of each


def check_device(device):
    if not DEVICE.fullmatch(device):
        raise RunError(f"--device {device}: expected cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"--device {device}, but torch {torch.__version__} sees no CUDA device; use --device cpu")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise RunError(f"--device {device}, but torch sees {torch.cuda.device_count()} CUDA device(s)")


def device(text):
    """An argparse type: a device's spelling ("--device ''" is no device, not the default one); check_device
    then asks torch for it."""
    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text[:40]!r}")
    return text


def default_precision(a, own_cap=True):
    """(weight dtype, why) for Run a without --dtype (autocast follows), as drivers/bench.py --ckpt measured."""
    if a.device.startswith("cuda"):
        return "float32", "the paper's mixed precision on CUDA: fp32 weights, fp16 autocast and a GradScaler"
    if a.llm == "tiny" or a.stage not in ("icl", "text", "joint"):
        return "float32", "fp32: the tiny backbone and the CF models gain nothing from bf16 on a CPU"
    if native_bf16(own_cap):
        return "bfloat16", "bf16 weights and autocast: this CPU has native bf16 (AMX or avx512_bf16)"
    return "float32", "fp32: this CPU has no native bf16 (no AMX, no avx512_bf16), where bf16 is slower"


def native_bf16(own_cap=True):
    """Whether this CPU computes bf16 in hardware (AMX or avx512_bf16), and oneDNN may use it: an ISA cap
    below AVX512_CORE_BF16 (ONEDNN_MAX_CPU_ISA, as PORTABLE sets for the tests) leaves bf16 emulated.
    own_cap=False: the cap numerics() set in this process for an fp32 run does not count."""
    capped = (own_cap or "ONEDNN_MAX_CPU_ISA" not in SET_HERE) and os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper() in (
        "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")
    return not capped and (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


# One kernel path on every x86-64 CPU with AVX2: ATen's vector width, MKL's GEMM branch (MKL_CBWR) and
# oneDNN's ISA pinned, so that an fp32 run's bits do not depend on the CPU it ran on. Each library reads its
# variable once, at its first use, not at import: so numerics() works until torch's first op, and not after.
# Inductor keys its kernel cache without the ISA it was told: AVX512 kernels cached by a native run crashed a
# portable --compile run (seen on an AMD EPYC), so portable runs keep their own cache.
# HOME="" reads as "/" (and a relative HOME as the cwd): the kernels then land where no one looks
HOME = h if os.environ.get("HOME") != "" and os.path.isabs(h := os.path.expanduser("~")) else tempfile.gettempdir()
PORTABLE = dict(ATEN_CPU_CAPABILITY="avx2", MKL_CBWR="AVX2", ONEDNN_MAX_CPU_ISA="AVX2",
                TORCHINDUCTOR_CACHE_DIR=os.path.join(HOME, ".cache", "sasrecllm", "torchinductor-avx2"))
SET_HERE = set()  # the PORTABLE variables numerics() set in this process, not its caller


def numerics(dtype, device="cpu"):
    """Turn portable numerics on for an fp32 CPU run (bf16 keeps the CPU's native bf16 units); the line says."""
    if device != "cpu" or dtype != "float32" or platform.machine().lower() not in ("x86_64", "amd64"):
        return "numerics: native (this machine's fastest kernels; the bits may differ between CPU kinds)"
    for k, v in PORTABLE.items():
        if k not in os.environ:  # (set one yourself to opt out)
            os.environ[k] = v
            SET_HERE.add(k)
    got = torch.backends.cpu.get_cpu_capability()
    other = [f"{k}={os.environ[k][:20]}" for k in list(PORTABLE)[1:3] if os.environ[k].upper() != PORTABLE[k]]
    if got != "AVX2" or other:  # (oneDNN runs its widest ISA for a value it cannot read)
        why = f"torch runs its {got} kernels" if got != "AVX2" else f"{' and '.join(other)}, not AVX2"
        return (f"numerics: NOT portable: {why} (torch chose before this line, or ATEN_CPU_CAPABILITY, MKL_CBWR or "
                "ONEDNN_MAX_CPU_ISA was set); the bits may differ between CPU kinds")
    return "numerics: portable (one AVX2 kernel path on every x86-64 CPU: " + \
        " ".join(f"{k}={os.environ[k]}" for k in list(PORTABLE)[:3]) + ")"


def default_amp(device, dtype):
    """--amp's default: the paper's fp16 (+ GradScaler) on CUDA, bf16 autocast with bf16 weights, else none."""
    return "fp16" if device.startswith("cuda") else "bf16" if dtype == "bfloat16" else "none"


def precision_note(a):
    """Why Run a computes in its precision: the default's reason, or "as asked" (warning where bf16 is emulated)."""
    dtype, why = default_precision(a, own_cap=False)  # (an fp32 run's own oneDNN cap is not why it is fp32)
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
        if len(text) > 40 or not re.fullmatch(r"-?[0-9]+" if kind is int else DECIMAL, text):  # no "1_0"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text[:40]!r}{'...' * (len(text) > 40)}")
        v = kind(text)
        if not math.isfinite(v) or (v <= low if low_open else v < low) or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"expected {what} {where}, got {text}")
        return v
    return parse


def path(text):
    """An argparse type: a path, never empty ("--into $DIR" with DIR unset must not mean "no --into"), as
    check_path reads it."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got ''")
    try:
        return check_path(text)
    except RunError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def is_utf8(text):
    """Whether text encodes as UTF-8: bytes the system could not decode arrive as lone surrogates."""
    return not any("\ud800" <= c <= "\udfff" for c in text)


def utf8(value):
    """An argparse type: text that is UTF-8."""
    if not is_utf8(value):
        raise argparse.ArgumentTypeError(f"{ascii(value)[:80]}: not UTF-8 text")
    return value


PATH_PARTS = 256  # folders deep at most: os.makedirs recurses once per missing folder


def check_path(p):
    """A path as a flag gives it: UTF-8 (a name that is not fails at the first checkpoint, after the work), "~"
    expanded as the shell would have ("--out=~/runs" reaches us unexpanded), at most PATH_PARTS folders deep,
    and never one that leads elsewhere than it reads (refuse_dotdot)."""
    if not is_utf8(p):
        raise RunError(f"{ascii(p)[:200]}: a path that is not UTF-8; rename it")
    p = os.path.expanduser(p)
    if os.path.abspath(p).count(os.sep) > PATH_PARTS:
        raise RunError(f"{p[:60]}...: more than {PATH_PARTS} folders deep")
    return refuse_dotdot(p)


def refuse_dotdot(p):
    """"link/.." is the link target's parent to the kernel, the link's folder to os.path.abspath: refused."""
    if os.path.realpath(p) != os.path.realpath(os.path.normpath(p)):
        raise RunError(f"{p}: a '..' after a symbolic link leads elsewhere than it reads; spell the path without it")
    return p


positive = number(1, kind=int)      # a batch size, a count of epochs
non_negative = number(0, kind=int)  # 0 meaning "none" or "no limit"


@contextmanager
def writing(path):
    """A failed write (a full disk, a read-only directory) as one RunError naming the file."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as e:  # torch and safetensors report a full disk their own way
        raise RunError(f"{path}: could not write it ({first_line(e)}); is the disk full or read-only?") from None


def refuse_link(path):
    """Nothing is written through a symbolic link planted where a run writes: it could point anywhere."""
    if os.path.islink(os.path.normpath(path)):  # ("link/" and "link/." are the folder it points to, not a link)
        raise RunError(f"{path} is a symbolic link; refusing to write through it (remove it, or use another --out)")
    refuse_dotdot(path)


def write_atomic(path, data: bytes):
    """path's new bytes, written to a unique temporary file beside it (made exclusively, removed if anything
    fails) and renamed into place: a reader never sees half a file, a retry never meets a stale one."""
    if not is_main():  # under torchrun, rank 0 alone writes
        return
    refuse_link(path)
    if os.path.exists(path) and not os.path.isfile(path):  # (a device or FIFO would be replaced: /dev/null, as root)
        raise RunError(f"{path} is not a regular file (a directory, device or FIFO); write to a file's path")
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path) or ".")
        try:
            os.fchmod(fd, 0o666 & ~UMASK)  # (mkstemp makes 0600: results stay as readable as open() makes them)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with suppress(OSError):
                os.remove(tmp)
            raise


UMASK = os.umask(0o22)
os.umask(UMASK)

# A checkpoint is a safetensors file: its tensors, and everything else (the flags, the epoch, the optimizer's
# numbers, the RNG states) as JSON in the header, with the SHA-256 of both. Loading one parses data only:
# nothing in it is unpickled or run, and no tensor is larger than the file.
FORMAT = "sasrecllm-checkpoint-2"


def _split(obj, tensors, path=""):
    """obj with each tensor moved into `tensors` (under its path) and left as {"tensor": path}."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"tensor": path}
    if isinstance(obj, dict):  # int keys (an optimizer's state) survive JSON as an "int_keys" object
        ints = bool(obj) and all(isinstance(k, int) for k in obj)
        out = {str(k): _split(v, tensors, f"{path}/{k}") for k, v in obj.items()}
        return {"int_keys": out} if ints else out
    return [_split(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)] if isinstance(obj, (list, tuple)) else obj


def _join(obj, tensors):
    if isinstance(obj, dict) and set(obj) == {"tensor"}:
        return tensors[obj["tensor"]]
    if isinstance(obj, dict) and set(obj) == {"int_keys"}:  # (as _split spells them: "7", never "07", "+7" or "7_0")
        if bad := next((k for k in obj["int_keys"] if not DIGITS.fullmatch(k)), None):
            raise ValueError(f"int_keys key {bad!r:.40} is not an integer as a checkpoint writes one")
        return {int(k): _join(v, tensors) for k, v in obj["int_keys"].items()}
    if isinstance(obj, dict):
        return {k: _join(v, tensors) for k, v in obj.items()}
    return [_join(v, tensors) for v in obj] if isinstance(obj, list) else obj


def _sha256(meta, tensors):
    h = hashlib.sha256(meta.encode())
    for k in sorted(tensors):
        t = tensors[k]
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # (its buffer: no copy)
    return h.hexdigest()


def save_atomic(obj, path):
    """obj (dicts, lists, numbers, strings and tensors) as a checkpoint file, written whole."""
    tensors = {}
    meta = json.dumps(_split(obj, tensors))
    write_atomic(path, safetensors.torch.save(tensors, dict(format=FORMAT, meta=meta, sha256=_sha256(meta, tensors))))


def read_checkpoint(path):
    """A checkpoint that save_atomic wrote (its tensors on the CPU), its digest checked, or one error line."""
    regular_file(path, "a checkpoint")
    limits.fits(os.path.getsize(path), f"{path} (its tensors)")  # (before reading: a sparse file costs no disk)
    try:
        with safe_open(path, framework="pt") as f:
            head, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
        if head.get("format") != FORMAT:
            raise RunError(f"not a {FORMAT} file (format {head.get('format')!r})")
        if _sha256(head["meta"], tensors) != head.get("sha256"):
            raise RunError("its bytes do not match the SHA-256 it was written with: the file is damaged")
        ck = _join(loads(head["meta"]), tensors)
        for key in ("args", "made_from", "model"):  # (objects of names: an int_keys object there is no run's)
            if not isinstance(part := ck.get(key, {}), dict) or not all(isinstance(k, str) for k in part):
                raise RunError(f"its {key} is not an object of names")
        return ck
    except Exception as e:  # a missing, truncated, foreign or hostile file fails in many ways; none runs code
        raise RunError(f"{path}: cannot read this checkpoint ({type(e).__name__}: {first_line(e)})") from None


def peek_args(path, key="args"):
    """A checkpoint's flags (or another dict of its header: made_from), no tensor read; {} if unreadable."""
    with suppress(Exception):
        with safe_open(regular_file(path), framework="pt") as f:
            meta = loads(f.metadata()["meta"])
            if isinstance(meta, dict) and (not key or isinstance(meta[key], dict)):  # (a list, a string: unreadable)
                return meta[key] if key else meta
    return {}


def refuse_artefact(folder, what, itself=True):
    """No tool writes into a run's, an adapter's or a backbone's folder, or a folder inside a run's or an
    adapter's, but the one that made it: a file there replaces the run's figures, changes the digest other runs
    were made from, or is a run inside a run (itself=False: folder's ancestors alone, --out's)."""
    folder = os.path.abspath(folder)
    for d in [folder] * itself + list(map(str, Path(folder).parents)):
        marks = ("best.pt", "last.pt", LOCK, MADE_FROM, "adapter_config.json") + ("config.json",) * (d == folder)
        if hit := next((f for f in marks if os.path.exists(os.path.join(d, f))), None):
            where = folder if d == folder else f"{folder} is inside {d}, which"
            raise RunError(f"{what} {where} holds {hit}: a run's, an adapter's or a backbone's folder; write elsewhere")


def check_metrics_of(run_dir, m=None, log=None):
    """A run's metrics.json `m` and log.jsonl's epochs `log` are its best.pt's (where it has one): a file copied in
    from another run holds its figures. Both name best.pt's epoch, and a trained run's valid AUC there."""
    best = os.path.join(run_dir, "best.pt")
    h = peek_args(best, None) if os.path.exists(best) else {}  # ({} unreadable; a run's best.pt has an epoch)
    e, auc = h.get("epoch"), h.get("best_valid_auc")
    same = lambda a: not isinstance(auc, float) or a == auc or auc != auc and (a is None or a != a)  # noqa: E731
    if m is not None and ("epoch" in h and e != m.get("best_epoch") or ("best_valid_auc" in m or isinstance(auc, float))
                          and not same(m.get("best_valid_auc", "none"))):  # (NaN: null, or NaN; runs before
        # session 20 wrote the epoch alone, in both files: a metrics.json without the AUC its best.pt has is not its)
        raise RunError(f"{run_dir}: its metrics.json is of epoch {m.get('best_epoch')!r:.20} (valid AUC "
                       f"{m.get('best_valid_auc')!r:.20}), its best.pt of epoch {e!r:.20} ({auc!r:.20}); "
                       "expected one run's files (a metrics.json copied in from another run?)")
    if log and type(e) is int and e >= 1 and not (len(log) >= e and same(log[e - 1]["valid"].get("auc"))):
        raise RunError(f"{run_dir}: its log.jsonl does not hold its best.pt's epoch {e} (valid AUC {auc!r:.20}); "
                       "expected one run's files (a log.jsonl copied in from another run?)")
    return m


def json_bytes(obj):
    """JSON with NaN written as null (a metric undefined on one class)."""
    clean = lambda v: (None if isinstance(v, float) and math.isnan(v) else
                       {k: clean(x) for k, x in v.items()} if isinstance(v, dict) else v)
    return json.dumps(clean(obj), indent=2).encode()


def write_json(obj, path):
    write_atomic(path, json_bytes(obj))


def publish_dir(final, write):
    """A multi-file artefact whole or not at all: write(tmp) fills a fresh sibling directory (a unique
    name, made exclusively), which then replaces FINAL (an earlier FINAL is kept beside it, as FINAL.old-*);
    a failure removes it and leaves FINAL as it was."""
    if not is_main():
        return
    refuse_link(final)
    parent, name = os.path.split(os.path.abspath(final))
    with writing(final):
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=name + ".tmp-", dir=parent)
    try:
        with writing(final):
            write(tmp)
            old = None
            if os.path.exists(final):  # renames only: a kill never leaves FINAL half deleted; nor is it deleted
                os.rename(final, old := tempfile.mkdtemp(prefix=name + ".old-", dir=parent))
            os.rename(tmp, final)
        if old:
            print(f"kept the earlier {final} as {old}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


GET_SMOLLM2 = Path(__file__).resolve().parents[2] / "shared" / "tools" / "get_smollm2.py"  # (CI's layout only)
MISSING_LLM = ("Put a Hugging Face Llama there (huggingface-cli download TinyLlama/TinyLlama-1.1B-intermediate-step-"
               "1431k-3T --local-dir DIR, or HuggingFaceTB/SmolLM2-135M-Instruct" +
               (f"; or python {GET_SMOLLM2} DIR" if GET_SMOLLM2.exists() else "") +
               "), or use the embedded random backbone: --llm tiny")


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
    """{rows: the rows this run loaded, labels and splits too; catalog: what the ids mean, any --limit;
    data: the whole data set a --limit or --valid-rows slice was cut from (two slices of it differ in rows);
    domain: the prompts' noun}."""
    catalog = json.dumps([ds.name, ds.n_users, ds.n_items, ds.titles]).encode()
    rows = lambda d: digest(d.user, d.item, d.label, d.timestamp, d.split.astype("U5"),  # noqa: E731
                            d.history.liked, d.history.start, catalog)
    loaded = rows(ds)  # (a whole data set is its own "data": digested once)
    return dict(rows=loaded, catalog=digest(catalog), data=loaded if ds.whole is None else rows(ds.whole),
                domain=ds.domain)


# Keys that record which library version wrote a config, not what the model computes: the same weights
# rebuilt under transformers 5.24 and 5.25 differ only in "transformers_version", and must digest alike.
PROVENANCE = ("transformers_version", "peft_version", "_name_or_path")
PROVENANCE_KEY = re.compile(b'"(' + "|".join(PROVENANCE).encode() + b')"')
DIGEST_MAX = 64 << 30  # bytes: far above a 7B model's largest shard (10 GB)


def files_digest(path):
    """The digest of a file, or of a directory's files by name, read once in 1 MiB blocks; a JSON object is
    digested without its PROVENANCE keys (a file that has none digests as its bytes)."""
    if not os.path.exists(path):  # a missing input is missing, not "changed"
        raise FileNotFoundError(f"{path} not found")
    h = hashlib.sha256()
    files = [os.path.join(path, f) for f in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
    for f in filter(os.path.isfile, files):
        if (size := os.path.getsize(f)) > DIGEST_MAX:  # (a sparse 1 TB file beside an adapter: hours of reading)
            raise ValueError(f"{f}: {size} bytes; expected at most {DIGEST_MAX >> 30} GiB in a file a run reads")
        h.update(os.path.basename(f).encode())
        with open(f, "rb") as fh:
            head = fh.read(min(size, 64 << 20)) if f.endswith(".json") else b""  # (a config: its whole text)
            with suppress(ValueError, RecursionError):  # (not JSON, or nested too deep: digested as bytes)
                if PROVENANCE_KEY.search(head) and isinstance(obj := json.loads(head), dict):
                    h.update(json.dumps({k: v for k, v in obj.items() if k not in PROVENANCE}, sort_keys=True).encode())
                    continue
            h.update(head)
            for block in iter(lambda: fh.read(min(1 << 20, size - fh.tell())), b""):  # its size, no more:
                h.update(block)
            if fh.read(1):  # /proc/self/pagemap says 0 bytes and gives 256 GiB
                raise ValueError(f"{f}: more bytes than its size ({size}); expected a regular file a run reads")
    return h.hexdigest()[:16]


def read_made_from(d):
    path = Path(d, MADE_FROM)
    return read_json(path, "the digests of what made it", obj=True) if path.exists() else {}


NEWER = ("data", "domain", "template")  # made_from keys that runs before session 19 lack: compared where recorded


def made_from_changes(recorded, now, keys=None):
    return [k for k in keys or sorted(set(recorded) | set(now))
            if recorded.get(k) != now.get(k) and (k in recorded or k not in NEWER)]


def check_made_from(what, recorded, now, keys=None):
    """Refuse, in one line naming what changed, a use of `what` on other inputs than it was made from."""
    if changed := made_from_changes(recorded, now, keys):
        was = "; ".join(f"{k} {recorded.get(k)} then, {now.get(k)} now" for k in changed)
        raise RunError(f"{what} was made from other inputs than these: {', '.join(changed)} changed ({was}); "
                       "use the inputs it was made from, or train a new run")


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_resumed(opt, sched, scaler, fresh, steps):
    """A last.pt's AdamW, LambdaLR and GradScaler states, loaded into opt, sched and scaler, against the
    fresh states (state dicts) this run's flags build: every setting the same (maximize, amsgrad, betas,
    growth_interval...), finite moments of the parameters' shapes, AdamW's and the schedule's step at most
    `steps` in, each learning rate the schedule's own at its step, a finite loss scale > 0."""
    fresh_opt, fresh_sched, fresh_scaler = fresh
    plain = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731 (a JSON header has no tuples)
    groups = [{k: plain(v) for k, v in g.items() if k != "params"} for g in opt.state_dict()["param_groups"]]
    want = [{k: plain(v) for k, v in g.items() if k != "params"} for g in fresh_opt["param_groups"]]
    for g, w in zip(groups, want, strict=True):
        if changed := sorted(k for k in g.keys() | w.keys() if k != "lr" and g.get(k) != w.get(k)):
            raise ValueError(f"optimizer setting {changed[0]} {g.get(changed[0])!r:.40} instead of {w.get(changed[0])!r:.40}")
    for g in opt.param_groups:
        keys = {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if g["amsgrad"] else set())
        for p, st in ((p, opt.state[p]) for p in g["params"] if p in opt.state):
            if set(st) != keys:
                raise ValueError(f"optimizer state {sorted(st)} instead of {sorted(keys)}")
            step = st["step"]
            if not (torch.is_tensor(step) and step.ndim == 0 and step.dtype in (torch.float32, torch.float64)
                    and math.isfinite(k := float(step)) and k == int(k) and 0 <= k <= steps):  # (a bool: a traceback)
                raise ValueError(f"an AdamW step {step!r:.40} of a run {steps} steps in")
            if not all(torch.is_tensor(t := st[k]) and t.shape == p.shape and t.dtype == p.dtype
                       and torch.isfinite(t).all() and (k == "exp_avg" or (t >= 0).all()) for k in keys - {"step"}):
                raise ValueError("optimizer moments that are not finite, or of another shape or dtype than the "
                                 "parameters")
    sc = scaler.state_dict()
    if sc.keys() != fresh_scaler.keys() or any(sc[k] != fresh_scaler[k] for k in sc if k not in ("scale", "_growth_tracker")):
        raise ValueError("a loss scaler of other settings")
    if sc and not (isinstance(sc["scale"], float) and 0 < sc["scale"] < math.inf and type(sc["_growth_tracker"]) is int
                   and 0 <= sc["_growth_tracker"] < sc["growth_interval"]):
        raise ValueError(f"a loss scale {sc['scale']!r:.40} (growth tracker {sc['_growth_tracker']!r:.40})")
    s = sched.state_dict()
    if s.keys() != fresh_sched.keys() or s["base_lrs"] != fresh_sched["base_lrs"]:
        raise ValueError("a scheduler of other settings")
    if not (type(s["last_epoch"]) is int and 0 <= s["last_epoch"] <= steps and s["_step_count"] == s["last_epoch"] + 1):
        raise ValueError(f"a schedule at step {s['last_epoch']!r:.40} of a run {steps} steps in")
    for g, base, f in zip(opt.param_groups, s["base_lrs"], sched.lr_lambdas):
        if not math.isclose(g["lr"], base * f(s["last_epoch"]), rel_tol=1e-6, abs_tol=1e-12):
            raise ValueError(f"a learning rate {g['lr']!r:.40} where the schedule has {base * f(s['last_epoch'])}")


def rng_state():
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return dict(torch=torch.get_rng_state(), numpy=[name, key.tolist(), pos, has_gauss, gauss],
                python=random.getstate())


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    name, key, pos, has_gauss, gauss = s["numpy"]
    if not (name == "MT19937" and len(key) == 624 and type(pos) is int and 0 <= pos <= 624 and has_gauss in (0, 1)
            and type(gauss) is float):  # numpy trusts pos: past 624 it reads outside its state (a crash)
        raise ValueError("numpy's RNG state is not MT19937's (624 words, a position 0..624)")
    np.random.set_state((name, np.array(key, dtype=np.uint32), pos, has_gauss, gauss))
    version, state, gauss = s["python"]
    random.setstate((version, tuple(state), gauss))


def changed_flags(saved, now, may_change):
    """'--flag NEW (the run has OLD)' for every flag that would change a resumed run."""
    return [f"--{k.replace('_', '-')} {now.get(k)} (the run has {saved.get(k)})"
            for k in sorted((saved.keys() | now.keys()) - set(may_change)) if saved.get(k) != now.get(k)]


def refuse_overlap(target, inputs, what="--out"):
    """A directory or file written to must neither be, hold, nor lie inside one of the run's inputs."""
    t = os.path.realpath(target)
    for i in filter(None, inputs):
        if os.path.commonpath([t, r := os.path.realpath(i)]) in (t, r):
            raise RunError(f"{what} {target} overlaps {i}, which this run reads; write elsewhere")


@contextmanager
def own_run_dirs(outs, resume=False, overwrite=False, inputs=()):
    """Hold each directory in outs (locked by rank 0, which proves it writable) until every file is
    written; unless resuming it starts empty: --overwrite moves an earlier run's files aside."""
    if resume and overwrite:  # (one would be ignored)
        raise RunError("--resume continues a run and --overwrite starts it over; give one of them")
    made = []  # the directories this call makes: a run refused or failed before it wrote a file leaves none
    try:
        with ExitStack() as held:
            for out in outs if is_main() else ():
                refuse_link(out)  # a link planted in a table root would take the run, and --overwrite, elsewhere
                refuse_overlap(out, inputs)
                refuse_artefact(out, "--out", itself=False)  # (RUN/old-x: a run among another's set-aside files)
                if os.path.exists(out) and not os.path.isdir(out):
                    raise RunError(f"{out} is a file; expected a run directory (--out)")
                missing, d = [], os.path.abspath(out)
                while not os.path.exists(d):  # (a parent made as well: removed as well, if the run leaves it empty)
                    missing.append(d)
                    d = os.path.dirname(d)
                try:
                    for d in reversed(missing):  # one by one: what another process made meanwhile is not ours
                        with suppress(FileExistsError):
                            os.mkdir(d)
                            made.append(d)
                    held.callback(unlock, *lock(out))
                except OSError as e:
                    raise RunError(f"{out}: cannot write there ({first_line(e)})") from None
                names = sorted(os.listdir(out))
                if not resume and (foreign := [f for f in names if not RUN_FILE.fullmatch(f)]):  # (--overwrite: moved)
                    raise RunError(f"{out} holds files no run writes ({', '.join(foreign[:3])}{', ...' * len(foreign[3:])})"
                                   "; --out must be a run directory: a new or empty one, or an earlier run's")
                for name in names if resume else ():  # (a fresh run moves them aside, as all else)
                    refuse_link(os.path.join(out, name))
                old = [f for f in names if f != LOCK and not f.startswith("old-")]
                if resume and "last.pt" not in old and [f for f in old if not f.endswith(".tmp")]:  # (they'd be overwritten)
                    raise RunError(f"--resume: {out} has no last.pt to continue from, but an earlier run's files "
                                   f"({', '.join(old[:3])}); start over with --overwrite (they move to {out}/old-*)")
                if old and not resume and not overwrite:
                    raise RunError(f"{out} holds an earlier run ({', '.join(old[:3])}{', ...' if old[3:] else ''}); "
                                   f"continue it with --resume, or start over with --overwrite (it moves to {out}/old-*)")
                if not resume:
                    move_aside(out, old, "--overwrite")
            barrier()
            yield
    except BaseException:
        for d in sorted(made, key=lambda d: -d.count(os.sep)):  # deepest first; a folder holding anything stays
            with suppress(OSError):
                os.rmdir(d)
        raise


def move_aside(out, names, why):
    """out's files `names` moved into a new out/old-<time>-*/, never deleted (on rank 0)."""
    if names and is_main():
        aside = tempfile.mkdtemp(prefix=time.strftime("old-%Y%m%d-%H%M%S-"), dir=out)  # a new name, always
        for name in names:
            os.rename(os.path.join(out, name), os.path.join(aside, name))
        say(f"{why}: moved the earlier {', '.join(names[:3])}{', ...' * len(names[3:])} in {out} to {aside}")


# out/run.lock is held with flock(2) for as long as its run lives: the kernel releases it when the process
# ends, however it ends, whatever PID namespace or host name it had. So a lock nobody holds is proven stale,
# and a pid in the file (only said to the user) proves nothing. Only the holder removes it.

HELD = set()  # the run directories whose lock this process holds


def lock(out):
    """(fd, path) of out/run.lock, now held by this process; or a RunError naming its live holder."""
    path = os.path.join(out, LOCK)
    refuse_link(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # a FIFO, a device, a hard link to a file elsewhere
            os.close(fd)
            raise RunError(f"{path} is not a plain lock file (a FIFO, device or hard link); remove it, or use another --out")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunError(busy_message(out, read_lock(path))) from None
        with suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False)):
                break  # (else its holder removed the file between our open and flock: try again)
        os.close(fd)
    if old := read_lock(path):
        say(f"{path}: taking over the lock of pid {old.get('pid')} (since {old.get('started')}), which has ended")
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(dict(pid=os.getpid(), host=socket.gethostname(),
                                 started=time.strftime("%Y-%m-%d %H:%M:%S"))).encode())
    HELD.add(os.path.realpath(out))
    return fd, path


def unlock(fd, path):
    HELD.discard(os.path.realpath(os.path.dirname(path)))
    with suppress(OSError):
        if os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False)):  # still our file
            os.remove(path)
    os.close(fd)


def read_lock(path):
    """What a lock file says of its holder ({} if unreadable), read without following a link."""
    with suppress(OSError, ValueError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            holder = loads(f.read(4096)) if stat.S_ISREG(os.fstat(fd).st_mode) else {}
        return holder if isinstance(holder, dict) else {}
    return {}


def live_lock(out):
    """What the lock of a run that is being written says of its holder (a dict, maybe empty), else None."""
    path = os.path.join(out, LOCK)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError:  # a link or something stranger where the lock belongs: treated as held
        return {}
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it: stale
    except BlockingIOError:
        return read_lock(path)
    finally:
        os.close(fd)


def check_finished(run_dir, what):
    """A run another builds on is neither being written (its lock held) nor paused (a last.pt, no metrics.json)."""
    if os.path.realpath(run_dir) not in HELD and (holder := live_lock(run_dir)) is not None:  # (--stage all: ours)
        raise RunError(f"{what}: {busy_message(run_dir, holder)}")
    if os.path.exists(os.path.join(run_dir, "last.pt")) and not os.path.exists(os.path.join(run_dir, "metrics.json")):
        raise RunError(f"{what}: its run {run_dir} has not finished (a last.pt, no metrics.json); finish it first "
                       "(its command again, with --resume)")


def busy_message(out, holder):
    who = (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}" if holder
           else "an unreadable lock")
    return f"{out} is in use by another run ({who}); wait for it to finish or use another --out"
