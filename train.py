"""SASRecLLM's training recipes, in the paper's order (Section 3.3, dual-stage training with
hierarchical freezing: each stage trains its part and freezes the others):

    1. sasrec  SASRec alone, on the interactions (mf, ncf, gru4rec, pop, mc: the CF baselines)
    2. text    LoRA on text-only prompts; the LLM frozen (this alone is TALLRec)
    3. joint   the mapping layer and SASRec on collaborative prompts; LLM and LoRA frozen
    all        1, 2 and 3 in turn;   icl: the untuned LLM, scored without training

    python train.py --stage all --data ml1m --llm tiny     # the whole chain on the tiny backbone
    python train.py --stage joint --data ml1m              # stage 3 alone, with TinyLlama
"""
import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

import data
import llama
import loop
import lora
from baselines import MC, MF, NCF, GRU4Rec, Pop
from sasrecllm import SASRec, SASRecLLM
from tools import backbones, limits, runs, sources
from tools.dist import barrier, gather_scores, init_distributed, is_main, rank_world, say
from tools.tables import markdown_table
from tools.runs import cli, non_negative, number, positive

CF_STAGES, LLM_STAGES = ("sasrec", "pop", "mf", "ncf", "gru4rec", "mc"), ("icl", "text", "joint")
TEMPLATES, DTYPES = tuple(data.TEMPLATES), tuple(llama.DTYPES)  # (Run's fields shadow the modules data, runs)

# Every stage's defaults (flags left at None take them). CF: chosen on ML-1M validation AUC (results/).
# LLM stages: TALLRec's lr for LoRA, CoLLM's for the mapping, epochs of 400 iterations (README.md).
_CF = dict(batch_size=1024, patience=5, iters_per_epoch=0, max_epochs=300)
_LLM = dict(dim=None, dropout=None, batch_size=16, patience=3, iters_per_epoch=400, max_epochs=300)
STAGE_DEFAULTS = {
    "sasrec": dict(_CF, lr=1e-3, wd=30.0, dim=64, dropout=0.5),
    "mf": dict(_CF, lr=3e-3, wd=30.0, dim=64, dropout=0.0),
    "ncf": dict(_CF, lr=1e-3, wd=10.0, dim=64, dropout=0.2),
    "gru4rec": dict(_CF, lr=3e-3, wd=10.0, dim=64, dropout=0.5),
    "pop": dict(_CF, lr=0.0, wd=0.0, dim=1, dropout=0.0),
    "mc": dict(_CF, lr=0.0, wd=0.0, dim=1, dropout=0.0),
    "text": dict(_LLM, lr=1e-4, wd=1e-3),
    "joint": dict(_LLM, lr=1e-3, wd=1e-3),
    "icl": dict(_LLM, lr=0.0, wd=0.0),
}
PATHS = ("data_dir", "reviews", "meta", "out", "runs", "llm", "tokenizer", "cf_ckpt", "lora")
_TRAINED = ("sasrec", "mf", "ncf", "gru4rec")
READS = {  # the flags that only some stages read (the others every stage), checked as typed (parse_args)
    "dim": _TRAINED, "dropout": ("sasrec", "ncf", "gru4rec"), "amp": _TRAINED + LLM_STAGES,
    **dict.fromkeys(("layers", "heads", "no_bias", "objective"), ("sasrec",)),
    # what is learned, and how (a budget, --max-epochs or --max-steps, any stage takes: a table's rows share one)
    **dict.fromkeys(("lr", "wd", "batch_size", "warmup_epochs", "clip"), _TRAINED + ("text", "joint")),
    "maxlen": ("sasrec", "gru4rec", "joint"),
    **dict.fromkeys(("llm", "template", "tokenizer", "dtype", "pad_multiple", "eval_batch_size", "compile"), LLM_STAGES),
    "iters_per_epoch": ("text", "joint"),
    **dict.fromkeys(("lora_r", "lora_alpha", "lora_dropout"), ("text",)),
    **dict.fromkeys(("cf", "cf_ckpt", "lora", "freeze_cf", "cf_bias", "proj_token_num"), ("joint",))}
COMPILE_FROM_STEPS = 100  # a real LLM's training steps from which --compile is the default on a CPU
MAX_EPOCHS_TINY = 10  # the random tiny backbone creeps up for dozens of epochs: keep the chain short


def flag(default=None, help=None, type=None, choices=None, resume_may_change=False):
    """A Run field and its flag. resume_may_change: how to run (a device), not what, or a path whose files made_from
    checks by content (a link or another cwd spells the same files otherwise): --resume lets it differ."""
    return field(default=default, metadata=dict(help=help, type=type, choices=choices,
                                                resume_may_change=resume_may_change))


@dataclass
class Run:
    """One run: every flag of train.py. Saved in each checkpoint, so that a run rebuilds itself."""
    stage: str = flag(None, "which stage (or all: sasrec, text, joint in turn)",
                      choices=CF_STAGES + LLM_STAGES + ("all",))
    data: str = flag("ml1m", "ml1m, movielens or amazon", choices=("ml1m", "movielens", "amazon"))
    split: str = flag(None, "CoLLM's month windows, or the paper's 8:1:1 (amazon's default)",
                      choices=("months", "ratio"))
    reviews: str = flag(None, "amazon: reviews file (default DATA/amazon-book/Books_5.json.gz)", resume_may_change=True)
    meta: str = flag(None, "amazon: metadata file (default DATA/amazon-book/meta_Books.json.gz)", resume_may_change=True)
    data_dir: str = flag(None, "data root (default: $SASRECLLM_DATA, else data/)", resume_may_change=True)
    out: str = flag(None, "run directory (default: RUNS/<stage>)", resume_may_change=True)
    seed: int = flag(0, "the seed of torch, numpy and random", type=number(0, 2 ** 32 - 1, int))  # numpy's range
    limit: int = flag(0, "only the first N rows of each split (smoke tests)", type=non_negative)
    valid_rows: int = flag(0, "validate on a fixed random N of the valid rows (0: all); test is always whole",
                           type=non_negative)
    device: str = flag("cpu", "cpu, cuda or cuda:N", resume_may_change=True)
    threads: int = flag(None, "torch CPU threads (default: torch's own, OMP_NUM_THREADS or the cores)", type=positive,
                        resume_may_change=True)
    # the loop; None takes the stage's default from STAGE_DEFAULTS
    lr: float = flag(None, "learning rate", type=number(0))
    wd: float = flag(None, "AdamW weight decay", type=number(0))
    batch_size: int = flag(None, "default: 1024 (CF models), 16 (LLM stages)", type=positive)
    max_epochs: int = flag(None, "default 300; LLM stages on --llm tiny: 10", type=positive)
    patience: int = flag(None, "epochs with no better valid AUC before stopping", type=positive)
    warmup_epochs: float = flag(1.0, type=number(0))
    clip: float = flag(1.0, "max gradient norm", type=number(0, low_open=True))
    amp: str = flag(None, "default: fp16 + GradScaler on CUDA, bf16 with bf16 weights, else none",
                    choices=("none", "bf16", "fp16"))
    resume: bool = flag(False, "continue from OUT/last.pt, with the same flags", resume_may_change=True)
    overwrite: bool = flag(False, "start over in a used OUT (old files move to OUT/old-*/)", resume_may_change=True)
    stop_after: int = flag(0, "stop after epoch N, as if killed (tests --resume)", type=non_negative,
                           resume_may_change=True)
    max_steps: int = flag(0, "stop after N optimizer steps (smoke runs)", type=non_negative, resume_may_change=True)
    max_minutes: float = flag(0.0, "start no new epoch after this many minutes", type=number(0), resume_may_change=True)
    pause_minutes: float = flag(0.0, "stop as --stop-after does before an epoch that would end after N minutes "
                                "(judged by the last one); continue with --resume", type=number(0),
                                resume_may_change=True)
    iters_per_epoch: int = flag(None, "LLM stages: epochs of N iterations (default 400; 0: one pass)",
                                type=non_negative)
    # CF models
    dim: int = flag(None, type=positive)
    dropout: float = flag(None, type=number(0, 0.99))
    maxlen: int = flag(25, "history length the sequence models read", type=positive)
    layers: int = flag(2, "SASRec blocks", type=positive)
    heads: int = flag(4, "SASRec attention heads", type=positive)
    no_bias: bool = flag(False, "SASRec without user/item biases")
    objective: str = flag("bce", "SASRec: BCE on labels, or next-item with sampled negatives", choices=("bce", "next"))
    # LLM stages
    runs: str = flag("runs", "root of the stage runs (--stage all, the tiny backbone, defaults)",
                     resume_may_change=True)
    llm: str = flag(os.path.join("checkpoints", "TinyLlama-1.1B"), "HF-format LLM dir, or tiny (a random backbone)",
                    resume_may_change=True)
    template: str = flag("paper", "prompt wording (data.TEMPLATES)", choices=TEMPLATES)
    tokenizer: str = flag(None, "--llm tiny: use this tokenizer.model (else one is trained on the data)",
                          resume_may_change=True)
    dtype: str = flag(None, "LLM weights (default: bfloat16 on a CPU with native bf16, else float32)", choices=DTYPES)
    cf: str = flag("sasrec", "the joint stage's CF encoder", choices=("sasrec", "mf", "gru4rec"))
    cf_ckpt: str = flag(None, "the joint stage's CF checkpoint (default: RUNS/<cf>/best.pt)", resume_may_change=True)
    lora: str = flag(None, "text-stage LoRA adapter dir (default: RUNS/text/adapter)", resume_may_change=True)
    freeze_cf: bool = flag(False, "joint stage: train the mapping layer only")
    cf_bias: int = flag(1, "joint: 1 appends the CF biases to its vectors (sasrecllm.cf_vectors)", choices=(0, 1))
    proj_token_num: int = flag(1, "pseudo-tokens per <UserID>, <TargetItemID>", type=positive)
    lora_r: int = flag(8, type=positive)
    lora_alpha: float = flag(16.0, type=number(0, 65504, low_open=True))  # (fp16's largest, as adapters are checked)
    lora_dropout: float = flag(0.05, type=number(0, 0.99))
    eval_batch_size: int = flag(64, type=positive, resume_may_change=True)
    pad_multiple: int = flag(1, "round prompt batch lengths up to a multiple of N (for GPUs)", type=positive)
    compile: bool = flag(None, "LLM stages: torch.compile every decoder layer (default: where it measured faster, "
                         "a real LLM's text or joint stage of >= 100 steps on a CPU)", resume_may_change=True)

    def __post_init__(self):
        tiny = dict(max_epochs=MAX_EPOCHS_TINY) if self.stage in LLM_STAGES and self.llm == "tiny" else {}
        for k, v in {**STAGE_DEFAULTS.get(self.stage, {}), **tiny}.items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        self.threads = self.threads or torch.get_num_threads()
        limits.check_flags(self)  # --heads against --dim, --threads: before any data is read
        if empty := [k for k in PATHS if getattr(self, k) == ""]:  # ("--out $OUT" with OUT unset: not the default)
            raise runs.RunError(f"--{empty[0].replace('_', '-')} '': an empty path; give one, or leave the flag out")
        if self.stage == "all" and (given := [k for k in ("out", "cf_ckpt", "lora") if getattr(self, k)]):
            raise runs.RunError(f"--stage all writes and reads its stages under --runs ({self.runs}/sasrec, text, "
                                f"joint); --{given[0].replace('_', '-')} is for one stage: give --runs instead")
        if self.stage != "all":  # (--stage all: each stage takes these under --runs, each its own)
            self.dtype = self.dtype or runs.default_precision(self)[0]
            self.amp = self.amp or runs.default_amp(self.device, self.dtype)
            if self.compile is None:  # ~50 s of compiling: even at 20 steps, +11% at 100 (results/README.md)
                self.compile = (self.stage in ("text", "joint") and self.llm != "tiny" and self.device == "cpu"
                                and (self.max_steps or self.iters_per_epoch * self.max_epochs) >= COMPILE_FROM_STEPS)
            self.out = self.out or os.path.join(self.runs, self.stage)
            self.cf_ckpt = self.cf_ckpt or os.path.join(self.runs, self.cf, "best.pt")
            self.lora = self.lora or os.path.join(self.runs, "text", "adapter")
        self.data_dir = self.data_dir or data.DATA_DIR
        for k in PATHS:  # recorded as absolute paths: a run means the same files from any directory
            if getattr(self, k) is not None and (k, getattr(self, k)) != ("llm", "tiny"):  # (--out tiny: a folder)
                setattr(self, k, os.path.abspath(runs.check_path(getattr(self, k))))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    for f in fields(Run):
        m, name = f.metadata, "--" + f.name.replace("_", "-")
        if f.type is bool:  # (a default of None: --compile / --no-compile, else the default decides)
            ap.add_argument(name, action=argparse.BooleanOptionalAction if f.default is None else "store_true",
                            help=m["help"])
        else:
            kind = m["type"] or {int: non_negative}.get(f.type, f.type)  # (ints as the data files' are: digits)
            ap.add_argument(name, default=f.default, type=kind, choices=m["choices"],
                            help=m["help"], required=f.name == "stage")
    given = vars(ap.parse_args(argv))
    stage = given["stage"]
    stages = ("sasrec", "text", "joint") if stage == "all" else (stage,)
    for k, v in given.items():  # a flag no stage of the run reads is refused, not recorded and ignored
        if v != ap.get_default(k) and (READS.get(k) and not set(READS[k]) & set(stages) or
                                       k in ("reviews", "meta") and given["data"] != "amazon" or
                                       k == "tokenizer" and given["llm"] != "tiny"):
            raise runs.RunError(f"--{k.replace('_', '-')}: --stage {stage}"
                                f"{' --data ' + given['data'] if k in ('reviews', 'meta') else ''}"
                                f"{' --llm ' + given['llm'] if k == 'tokenizer' else ''} does not read it")
    return Run(**given)


def load_data(args, ds=None):
    ds = ds if ds is not None else data.load(args.data, args.data_dir, args.split, args.reviews, args.meta)
    return data.data_slice(ds, args.limit, args.valid_rows) if args.limit or args.valid_rows else ds


def bce_loss(model, b):
    return F.binary_cross_entropy_with_logits(model(**b.inputs), b.label)


def score_only(args, made, model, predict, ds):
    loop.save(args, "best.pt", made, model, 0, dict(auc=None))
    return loop.finish(args, model, predict, ds, loop.autocast_for(args))  # (--amp, as eval.py re-scores it)

# -----------------------------------------------------------------------------
# Stage 1: SASRec (and the CF baselines) on the interactions alone

def build_cf(a, ds):
    limits.check_cf(a, ds)  # its memory, before it is built
    if a.stage == "sasrec":
        return SASRec(ds.n_items, ds.n_users, dim=a.dim, n_layers=a.layers, n_heads=a.heads,
                      maxlen=a.maxlen, dropout=a.dropout, bias=not a.no_bias)
    if a.stage == "mf":
        return MF(ds.n_users, ds.n_items, dim=a.dim)
    if a.stage == "ncf":
        return NCF(ds.n_users, ds.n_items, dim=a.dim, dropout=a.dropout)
    if a.stage == "gru4rec":
        return GRU4Rec(ds.n_items, dim=a.dim, dropout=a.dropout)
    return Pop(ds.n_users, ds.n_items) if a.stage == "pop" else MC(ds.n_items)


@torch.no_grad()
def init_biases(model, ds, rows):
    """Start the biases at Pop's log-odds of the train rows: from zero, AdamW's ~lr-sized steps take
    dozens of epochs to reach log-odds that span several units, and the embeddings overfit meanwhile."""
    pop = Pop(ds.n_users, ds.n_items)
    pop.fit(torch.from_numpy(ds.user[rows]), torch.from_numpy(ds.item[rows]), torch.from_numpy(ds.label[rows]))
    model.global_bias.copy_(pop.global_logit)
    model.item_bias.weight[:, 0] = pop.item_logit - pop.global_logit
    if hasattr(model, "user_bias"):
        model.user_bias.weight[:, 0] = pop.user_logit - pop.global_logit


def cf_predictor(ds, maxlen, device="cpu", chunk=4096):
    cache = {s: data.cf_batch(ds, ds.idx(s), maxlen) for s in ("valid", "test")}
    def predict(model, split):
        t = cache[split]
        return torch.cat([model(**{k: t[k][i:i + chunk].to(device) for k in ("user", "hist", "item")})
                          for i in range(0, len(t["label"]), chunk)]).float().cpu().numpy()
    return predict


def run_cf(args, ds=None):
    """Train SASRec or a CF baseline; Pop and MC are fitted in closed form from the train rows."""
    if rank_world()[1] > 1:  # (every rank trained on every batch, its loss counted world times)
        raise runs.RunError(f"--stage {args.stage} under torchrun: a CF stage runs in one process (its batches are "
                            "not split across ranks); run it with python train.py")
    ds = load_data(args, ds)
    runs.seed_everything(args.seed)
    model, predict = build_cf(args, ds), cf_predictor(ds, args.maxlen, args.device)
    rows = ds.idx("train")
    for split in ("train", "valid", "test"):  # one class: nothing to learn, no AUC to pick an epoch by or report
        data.require_both_labels(ds, split)
    if args.stage in ("pop", "mc"):
        last = torch.tensor([ds.history[r][-1] if ds.history[r] else 0 for r in rows])
        model.fit(*(torch.from_numpy(a[rows]) for a in (ds.user, ds.item, ds.label)), last)
        return score_only(args, made_from(args, ds), model.to(args.device), predict, ds)
    if hasattr(model, "item_bias") and args.objective == "bce":
        init_biases(model, ds, rows)
    model.to(args.device)
    next_item = args.stage == "sasrec" and args.objective == "next"
    if next_item:
        rows = rows[ds.label[rows] == 1]  # the next-item objective reads liked items only
    inputs, loss = (("seq",), SASRec.next_item_loss) if next_item else (("user", "hist", "item"), bce_loss)
    t = data.cf_tensors(ds, rows, args.maxlen, next_item)
    batches = lambda epoch: data.cf_batches(t, args.batch_size, args.seed, epoch, inputs)
    return loop.train(args, made_from(args, ds), model, batches, loss, predict, ds)

# -----------------------------------------------------------------------------
# Stages 2 and 3 (and ICL): the LLM reads the prompt; s = z_Yes - z_No

def inputs(args, tiny=True):
    """What a run reads (the data, the tokenizer, the LLM or tiny=the tiny one under --runs, the CF checkpoint
    and adapter): never written into."""
    llm = args.llm if args.llm != "tiny" else os.path.join(args.runs, "tiny-llm") if tiny else None
    return sources.input_dirs(args.data, args.data_dir, args.reviews, args.meta) + [args.tokenizer] + (
        [llm] if llm and args.stage in LLM_STAGES + ("all",) else []) + (
        [args.cf_ckpt, args.lora] if args.stage == "joint" else [])


def backbone_dir(args, ds):
    """--llm DIR, or the tiny backbone under --runs (its tokenizer knows the titles, not the rows loaded)."""
    if args.llm != "tiny":
        if not os.path.exists(os.path.join(args.llm, "config.json")):
            raise FileNotFoundError(f"no LLM checkpoint at {args.llm} (config.json missing). {runs.MISSING_LLM}")
        return args.llm
    d = os.path.join(args.runs, "tiny-llm")
    runs.refuse_overlap(d, inputs(args, tiny=False), "--runs")  # (train.py, walk.py: whoever writes it)
    forms = [f.format(**n) for t in data.TEMPLATES.values() for f in t.values() for n in data.NOUNS.values()]
    texts = [f'"{t}"' for t in ds.titles[1:]] + forms * 50  # titles as prompts quote them; the words, often
    want = dict(texts=runs.digest(json.dumps(texts).encode()),
                tokenizer=runs.files_digest(args.tokenizer) if args.tokenizer else None)
    if not os.path.exists(os.path.join(d, "config.json")):
        if args.tokenizer:  # missing, garbage, or "Yes"/"No" not one piece each: one line naming it, before writing
            tok = llama.load_tokenizer(args.tokenizer)
            tok.yes_id, tok.no_id
            if not isinstance(tok, llama.Tokenizer):  # make_tiny trains its own from a sentencepiece model
                raise ValueError(f"--tokenizer {args.tokenizer}: --llm tiny needs a sentencepiece tokenizer.model")
        if is_main():
            runs.publish_dir(d, lambda tmp: (backbones.make_tiny(tmp, texts, args.tokenizer, seed=0),
                                             runs.write_json(want, os.path.join(tmp, runs.MADE_FROM))))
            print(f"wrote the embedded tiny backbone (random weights) to {d}")
        barrier()
    runs.check_made_from(f"the tiny backbone {d} (delete it, or use another --runs)", runs.read_made_from(d), want)
    return d


def made_from(args, ds):
    out = runs.data_digests(ds)
    if args.stage in LLM_STAGES:
        out["backbone"] = runs.files_digest(backbone_dir(args, ds))
    if args.stage == "joint":
        out.update(cf=runs.files_digest(args.cf_ckpt), adapter=runs.files_digest(args.lora))
    return out


def load_cf(args, ds):
    """The joint stage's CF encoder, rebuilt from its own best.pt (plug-and-play)."""
    a, ck = read_run(args.cf_ckpt)
    if "made_from" in ck:  # (a CF checkpoint from elsewhere has no record to check)
        runs.check_made_from(f"--cf-ckpt {args.cf_ckpt}", ck["made_from"], runs.data_digests(ds), ["catalog", "data"])
    if (a.stage, a.maxlen) != (args.cf, args.maxlen):
        raise runs.RunError(f"--cf-ckpt {args.cf_ckpt} is a {a.stage} run reading {a.maxlen} items of history; the "
                            f"joint stage has --cf {args.cf} --maxlen {args.maxlen}: give the flags of that run")
    cf = build_cf(a, ds)
    loop.load_trainable(cf, ck["model"], args.cf_ckpt)
    return cf.to(args.device)


def build_llm_model(args, ds):
    """(SASRecLLM, prompts), only `args.stage`'s part trainable: text LoRA, joint the mapping (+ CF)."""
    if args.stage == "joint":
        runs.check_joint_parts(args)  # one error listing every missing part and the command that makes it
    backbone = backbone_dir(args, ds)
    llm, tok = llama.load(backbone, dtype=llama.DTYPES[args.dtype], device=args.device)
    llm.requires_grad_(False)
    cf = None
    if args.stage == "text":
        lora.inject(llm, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout)  # only LoRA trains
    elif args.stage == "joint":
        if recorded := runs.read_made_from(args.lora):  # ours records its backbone and data; peft's do not
            now = dict(runs.data_digests(ds), backbone=runs.files_digest(backbone), template=args.template)
            runs.check_made_from(f"--lora {args.lora}", recorded, now, ["catalog", "data", "domain", "backbone",
                                                                        "template"])
        lora.load_adapter(llm, args.lora)
        llm.requires_grad_(False)  # LoRA frozen in the joint stage
        cf = load_cf(args, ds)
        cf.requires_grad_(not args.freeze_cf)
    if args.compile and (cache := os.environ.get("TORCHINDUCTOR_CACHE_DIR")):  # (inductor writes its kernels there)
        runs.refuse_overlap(cache, inputs(args), "TORCHINDUCTOR_CACHE_DIR")
    for layer in llm.model.layers if args.compile else ():  # the same Block.forward, fused by inductor
        layer.compile()
    limits.check_llm(args, llm.cfg, cf)  # the pseudo-tokens' positions and the mapping's memory, before it is built
    model = SASRecLLM(llm, tok.yes_id, tok.no_id, cf=cf, proj_token_num=args.proj_token_num, cf_bias=bool(args.cf_bias))
    say(f"precision: --dtype {args.dtype} --amp {args.amp} ({runs.precision_note(args)})"
        + ("; decoder layers compiled (--no-compile: eager)" if args.compile else ""))
    prompts = data.encode_prompts(ds, range(len(ds)), tok, cf is not None, args.proj_token_num, args.template)
    limits.check_prompts(args, ds, llm.cfg, prompts)  # none past max_position_embeddings; batches that fit
    say(f"{len(prompts)} {args.template} prompts, {np.mean([len(p.ids) for p in prompts]):.0f} tokens on average")
    return model, prompts


def llm_batches(args, ds, prompts):
    """batches(epoch) over the train rows: length-bucketed, shuffled by (seed, epoch), split across ranks."""
    rows = ds.idx("train")
    lengths = [len(prompts[r].ids) for r in rows]
    rank, world = rank_world()
    return lambda epoch: data.PromptBatches(
        ds, prompts, rows, data.epoch_groups(lengths, args.batch_size, args.seed, epoch, args.iters_per_epoch),
        args.maxlen, rank, world, pad_multiple=args.pad_multiple)


def llm_predictor(args, ds, prompts, shuffle=None, seed=0):
    """Each rank scores a share of the length buckets. The ablations permute the split's rows (seed): shuffle
    "cf" gives each prompt the CF inputs of the row the permutation maps it to; "text" gives each row's CF
    inputs the prompt (titles and slots) of that row; either way a row keeps its label. A permutation of n
    rows leaves about one row on itself, and some on a row of the same user (more in a --limit slice)."""
    rank, world = rank_world()
    def predict(model, split):
        rows = ds.idx(split)
        other = rows[np.random.default_rng(seed).permutation(len(rows))] if shuffle else None
        cf_rows, texts = (other if shuffle == "cf" else None), list(prompts)
        for r, o in zip(rows, other) if shuffle == "text" else ():
            texts[r] = prompts[o]
        local, t0, t_said = {}, time.time(), time.time()
        groups = data.bucket_batches([len(texts[r].ids) for r in rows], args.eval_batch_size, shuffle=False)
        for b in data.PromptBatches(ds, texts, rows, groups[rank::world], args.maxlen, cf_rows=cf_rows,
                                    pad_multiple=args.pad_multiple):
            s = model(**b.to(args.device).inputs)
            local.update(zip(b.positions.tolist(), s.float().cpu().tolist()))
            if time.time() - t_said > loop.PROGRESS_SECONDS:  # a long evaluation (a real LLM on a CPU) says how far
                t_said = time.time()
                say(f"  scoring {split}: {len(local)}/{-(-len(rows) // world)} | {len(local) / (t_said - t0):.1f}/s")
        scores = gather_scores(local)
        return np.array([scores[j] for j in range(len(rows))])
    return predict


def run_llm(args, ds=None):
    """icl (score only), text (TALLRec) or joint (SASRecLLM)."""
    ds = load_data(args, ds)
    for split in ("valid", "test") if args.stage == "icl" else ("train", "valid", "test"):  # (as run_cf's)
        data.require_both_labels(ds, split)
    runs.seed_everything(args.seed)
    for flag, path in [("--cf-ckpt", args.cf_ckpt), ("--lora", args.lora)] if args.stage == "joint" else []:
        runs.check_finished(os.path.dirname(path), f"{flag} {path}")  # (not one paused, or being trained again)
    model, prompts = build_llm_model(args, ds)
    predict = llm_predictor(args, ds, prompts)
    made = made_from(args, ds)  # (digests a backbone of gigabytes: once per run)
    if args.stage == "icl":
        return score_only(args, made, model, predict, ds)
    report = loop.train(args, made, model, llm_batches(args, ds, prompts), bce_loss, predict, ds)
    if args.stage == "text" and report is not None and is_main():
        # loop.train has reloaded the best epoch: publish its LoRA in peft's format (plug-and-play)
        runs.publish_dir(os.path.join(args.out, "adapter"), lambda d: (
            lora.save_adapter(model.llm, d), runs.write_json(dict(made, template=args.template, run=dict(
                epoch=report["best_epoch"], valid_auc=report["best_valid_auc"])), os.path.join(d, runs.MADE_FROM))))
    barrier()
    return report


def run_all(args):
    """The dual-stage chain: SASRec alone, then LoRA on text-only prompts, then joint tuning."""
    ds, reports, t0 = load_data(args), {}, time.time()
    for stage in ("sasrec", "text", "joint"):
        # --max-minutes and --pause-minutes are the chain's: each stage gets what the ones before it left
        left = {k: getattr(args, k) - (time.time() - t0) / 60 for k in ("max_minutes", "pause_minutes") if getattr(args, k)}
        if any(v <= 0 for v in left.values()):
            say(f"=== the chain's minutes are spent before stage {stage}; --stage {stage} goes on from here")
            break
        a = replace(args, stage=stage, out=os.path.join(args.runs, stage), **left)  # the stage's own defaults
        say(f"=== stage {stage} -> {a.out}")
        reports[stage] = (run_cf if stage in CF_STAGES else run_llm)(a, ds)
        if reports[stage] is None:  # paused or stopped: a later stage must not build on an unfinished one
            say(f"=== stage {stage} did not finish; the chain stops here (--stage {stage} --resume goes on)")
            break
    say(markdown_table([(s, r["test"]) for s, r in reports.items() if r]))  # the chain's test table
    return reports


def read_run(path):
    """(Run, checkpoint) of a checkpoint file: its flags are input like any other, each checked as if it had
    been typed (its type, range and choices), its made_from a dict; any problem is one line naming the file."""
    ck = runs.read_checkpoint(path)
    try:
        saved = ck["args"]
        if unknown := set(saved) - {f.name for f in fields(Run)}:
            raise ValueError(f"written by another version of train.py (flags {sorted(unknown)}); retrain it here")
        for f in fields(Run):
            v, parse, choices = saved.get(f.name, f.default), f.metadata["type"], f.metadata["choices"]
            ok = v is None and f.default is None or (
                isinstance(v, (int, float) if f.type is float else f.type) and isinstance(v, bool) == (f.type is bool)
                and (not choices or v in choices) and (not parse or parse(repr(v)) == v))
            if not ok:
                raise ValueError(f"its flag {f.name} is {v!r}")
        if saved.get("stage") == "all":  # (a chain, not a stage: no dtype or amp of its own)
            raise ValueError("its stage is 'all'; expected the stage that trained it")
        if not isinstance(ck.get("made_from", {}), dict) or not isinstance(ck.get("model"), dict):
            raise ValueError("its made_from or model is not a dict")
        return Run(**saved), ck
    except (ValueError, TypeError, KeyError, AttributeError, argparse.ArgumentTypeError) as e:
        raise runs.RunError(f"{path}: not a checkpoint this train.py can use: {runs.first_line(e)}") from None


def load_run(run_dir, data_dir=None, device=None, dtype=None):
    """(args, ds, model, make_predict(shuffle=None, seed=0) -> predict): a run rebuilt from best.pt,
    in its own precision unless another device or LLM dtype is asked (then autocast follows them)."""
    args, ck = read_run(best := os.path.join(run_dir, "best.pt"))
    cf = args.stage in CF_STAGES
    if dtype and cf:
        raise runs.RunError(f"--dtype sets an LLM run's weights; {run_dir} is a '{args.stage}' run, scored in fp32")
    now = dict(data_dir=data_dir or args.data_dir, device=device or args.device, dtype=dtype or args.dtype)
    if device or dtype:  # autocast follows the device and the weights, as train.py's default does
        now["amp"] = runs.default_amp(now["device"], now["dtype"])
    args = replace(args, **now)
    runs.check_device(args.device)
    if args.llm == "tiny" and not os.path.exists(tiny := os.path.join(args.runs, "tiny-llm", "config.json")):
        raise FileNotFoundError(f"{tiny} not found: the run's tiny backbone is missing (python train.py --stage "
                                f"{args.stage} --llm tiny --runs {args.runs} ... rebuilds it)")  # (never made here)
    ds = load_data(args)
    runs.check_made_from(run_dir, ck.get("made_from", {}), made_from(args, ds))
    model, prompts = (build_cf(args, ds).to(args.device), None) if cf else build_llm_model(args, ds)
    loop.load_trainable(model, ck["model"], best)
    if cf:
        return args, ds, model, lambda shuffle=None, seed=0: cf_predictor(ds, args.maxlen, args.device)
    return args, ds, model, lambda shuffle=None, seed=0: llm_predictor(args, ds, prompts, shuffle, seed)


@cli
def main(argv=None):
    args = parse_args(argv)
    say(runs.numerics(replace(args, stage="text").dtype if args.stage == "all" else args.dtype, args.device))
    torch.set_num_threads(args.threads)
    runs.check_device(args.device)
    outs = [os.path.join(args.runs, s) for s in ("sasrec", "text", "joint")] if args.stage == "all" else [args.out]
    args = replace(args, device=init_distributed(args.device))
    try:
        with runs.own_run_dirs(outs, args.resume, args.overwrite, inputs(args)):  # one writer; old runs and inputs kept
            (run_all if args.stage == "all" else run_cf if args.stage in CF_STAGES else run_llm)(args)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"continue with the same command and --resume (in {', '.join(outs)})") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
