"""SASRecLLM's training recipes, in the paper's order (Section 3.3, dual-stage training with
hierarchical freezing: each stage trains its part and freezes the others):

    1. sasrec  SASRec alone, on the interactions (mf, ncf, gru4rec, pop, mc: the CF baselines)
    2. text    LoRA on text-only prompts; the LLM frozen (this alone is TALLRec)
    3. joint   the mapping layer and SASRec on collaborative prompts; LLM and LoRA frozen
    all        1, 2 and 3 in turn;   icl: the untuned LLM, scored without training

    python train.py --stage all --data ml1m --llm tiny     # the whole chain on the tiny backbone
    python train.py --stage joint --data ml1m              # stage 3 alone, with TinyLlama

Each stage builds its model and its batches and hands them to loop.train (the loop: AdamW,
warm-up + cosine, AMP, early stopping, checkpoints, --resume, torchrun). Every part is saved on
its own (plug-and-play): a CF run's best.pt, the text stage's LoRA in peft's format under
OUT/adapter/, the joint stage's mapping layer and CF encoder.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import data
import llama
import loop
import lora
from baselines import MC, MF, NCF, GRU4Rec, Pop
from metrics import markdown_table
from sasrecllm import SASRec, SASRecLLM

CF_STAGES = ("sasrec", "pop", "mf", "ncf", "gru4rec", "mc")
LLM_STAGES = ("icl", "text", "joint")
TINYLLAMA_DIR = os.path.join("checkpoints", "TinyLlama-1.1B")
RUN_FORMAT = 3  # saved with each run; runs of older checkouts are upgraded by upgrade_args

# Every stage's defaults, in one place (flags left at None take them). CF values were chosen on
# ML-1M validation AUC (the README lists the sweep); strong weight decay wins because
# the split is temporal. LLM stages: TALLRec's lr 1e-4 for LoRA, CoLLM's 1e-3 for the mapping
# layer, and epochs of a fixed number of iterations as CoLLM counts them, but 400 rather than its
# 50 (train_configs/*_ood_cc.yaml): every epoch ends in a full validation pass of 10,401 prompts,
# which at 50 iterations (800 prompts) would cost 13 times the training (0 = a full pass).
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
# The random tiny backbone keeps creeping up for dozens of epochs (it must learn popularity from
# title tokens through LoRA alone), so its LLM stages stop after 10 epochs to keep the chain short.
MAX_EPOCHS_TINY = 10


def fill_defaults(args, stage):
    """Set every option left at None to `stage`'s default."""
    defaults = dict(STAGE_DEFAULTS[stage])
    if stage in LLM_STAGES and args.llm == "tiny":
        defaults["max_epochs"] = MAX_EPOCHS_TINY
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def train_config(args):
    return loop.TrainConfig(out=args.out, lr=args.lr, wd=args.wd, max_epochs=args.max_epochs,
                            patience=args.patience, warmup_epochs=args.warmup_epochs, clip=args.clip,
                            amp=args.amp, device=args.device, resume=args.resume, stop_after=args.stop_after,
                            max_steps=args.max_steps, max_minutes=args.max_minutes, run_args=vars(args))


def load_data(args, ds=None):
    """args.data from --data-dir (or the given ds), cut to the first --limit rows of each split."""
    ds = ds if ds is not None else data.load(args.data, args.data_dir, args.split, args.reviews, args.meta)
    return data.data_slice(ds, args.limit) if args.limit else ds

# -----------------------------------------------------------------------------
# Stage 1: SASRec (and the CF baselines) on the interactions alone


def build_cf(a, ds):
    """A CF model from a run's arguments `a` (a dict, so that saved runs rebuild the same way)."""
    kind = a["stage"]
    if kind == "sasrec":
        return SASRec(ds.n_items, ds.n_users, dim=a["dim"], n_layers=a["layers"], n_heads=a["heads"],
                      maxlen=a["maxlen"], dropout=a["dropout"], bias=not a["no_bias"])
    if kind == "mf":
        return MF(ds.n_users, ds.n_items, dim=a["dim"])
    if kind == "ncf":
        return NCF(ds.n_users, ds.n_items, dim=a["dim"], dropout=a["dropout"])
    if kind == "gru4rec":
        return GRU4Rec(ds.n_items, dim=a["dim"], dropout=a["dropout"])
    if kind == "pop":
        return Pop(ds.n_users, ds.n_items)
    if kind == "mc":
        return MC(ds.n_items)
    raise ValueError(f"unknown CF model {kind!r}; expected one of {', '.join(CF_STAGES)}")


@torch.no_grad()
def init_biases(model, ds, rows):
    """Start the user/item/global biases at Pop's smoothed log-odds of the train rows, so that
    training begins from the popularity floor and the embeddings learn what it cannot explain.
    (With zero biases, AdamW's ~lr-sized steps need dozens of epochs to reach like-rates whose
    log-odds span several units, and the embeddings overfit meanwhile.)"""
    pop = Pop(ds.n_users, ds.n_items)
    pop.fit(torch.from_numpy(ds.user[rows]), torch.from_numpy(ds.item[rows]), torch.from_numpy(ds.label[rows]))
    model.global_bias.copy_(pop.global_logit)
    model.item_bias.weight[:, 0] = pop.item_logit - pop.global_logit
    if hasattr(model, "user_bias"):
        model.user_bias.weight[:, 0] = pop.user_logit - pop.global_logit


def bce_loss(model, b):
    """BCE on the model's logit against the like label: CF models and SASRecLLM alike."""
    return F.binary_cross_entropy_with_logits(model(**b.inputs), b.label)


def cf_predictor(ds, maxlen, device="cpu", chunk=4096):
    """predict(model, split) -> logits in ds.idx(split)'s order."""
    cache = {s: data.cf_batch(ds, ds.idx(s), maxlen) for s in ("valid", "test")}

    def predict(model, split):
        t = cache[split]
        return torch.cat([model(**{k: t[k][i:i + chunk].to(device) for k in ("user", "hist", "item")})
                          for i in range(0, len(t["label"]), chunk)]).float().cpu().numpy()
    return predict


def run_cf(args, ds=None):
    """Train SASRec or a CF baseline; Pop and MC are fitted in closed form from the train rows."""
    ds = load_data(args, ds)
    loop.seed_everything(args.seed)
    model = build_cf(vars(args), ds)
    predict = cf_predictor(ds, args.maxlen, args.device)
    rows = ds.idx("train")
    cfg = train_config(args)
    data.require_both_labels(ds, "train")
    if args.stage in ("pop", "mc"):
        last = torch.tensor([ds.history[r][-1] if ds.history[r] else 0 for r in rows])
        model.fit(*(torch.from_numpy(a[rows]) for a in (ds.user, ds.item, ds.label)), last)
        return score_only(cfg, model.to(args.device), predict, ds)
    if args.init_bias and hasattr(model, "item_bias") and args.objective == "bce":
        init_biases(model, ds, rows)
    model.to(args.device)
    next_item = args.stage == "sasrec" and args.objective == "next"
    if next_item:
        rows = rows[ds.label[rows] == 1]  # the next-item objective reads liked items only
    t = data.cf_tensors(ds, rows, args.maxlen, next_item)
    inputs = ("seq",) if next_item else ("user", "hist", "item")
    return loop.train(cfg, model, lambda epoch: data.cf_batches(t, args.batch_size, args.seed, epoch, inputs),
                      SASRec.next_item_loss if next_item else bce_loss, predict, ds)


def score_only(cfg, model, predict, ds):
    """No training (Pop, MC, ICL): save the model as best.pt, then score valid and test."""
    os.makedirs(cfg.out, exist_ok=True)
    loop.save_atomic(loop.checkpoint(cfg, model, 0, dict(auc=None)), os.path.join(cfg.out, "best.pt"))
    return loop.finish(cfg, model, predict, ds)

# -----------------------------------------------------------------------------
# Stages 2 and 3 (and ICL): the LLM reads the prompt; s = z_Yes - z_No


MISSING_LLM = ("Put TinyLlama-1.1B there in Hugging Face format (config.json, model.safetensors, tokenizer.model; "
               "e.g. a download of TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T), or point --llm at such a "
               "directory (python ../shared/tools/get_smollm2.py checkpoints/SmolLM2-135M-Instruct builds a real "
               "one here). To run the whole pipeline without one, use the embedded random backbone: --llm tiny")


def backbone_dir(args, ds):
    """The HF-format LLM directory: --llm DIR, or the embedded tiny backbone written once under --runs."""
    if args.llm != "tiny":
        if not os.path.exists(os.path.join(args.llm, "config.json")):
            raise FileNotFoundError(f"no LLM checkpoint at {args.llm} (config.json missing). {MISSING_LLM}")
        return args.llm
    d = os.path.join(args.runs, "tiny-llm")
    if not os.path.exists(os.path.join(d, "config.json")):
        if loop.is_main():  # its tokenizer learns the data's titles and prompt words
            texts = ds.titles[1:] + [data.prompt(ds, int(i), True, args.template) for i in ds.idx("train")[:2000]]
            loop.publish_dir(d, lambda tmp: llama.make_tiny(tmp, texts=texts, tokenizer_model=args.tokenizer, seed=0))
            print(f"wrote the embedded tiny backbone (random weights) to {d}")
        loop.barrier()
    return d


def missing_parts(args, ds):
    """What the joint stage needs and lacks, each with the command that makes it."""
    need = [f"an LLM at {args.llm} ({MISSING_LLM})"] if args.llm != "tiny" and not os.path.exists(
        os.path.join(args.llm, "config.json")) else []
    if not os.path.exists(args.cf_ckpt):
        need.append(f"a CF checkpoint at {args.cf_ckpt}: python train.py --stage {args.cf} --data {ds.name} "
                    f"--out {os.path.dirname(args.cf_ckpt)}")
    if not os.path.exists(os.path.join(args.lora, "adapter_config.json")):  # --resume: its run stopped before it
        resume = " --resume" if os.path.exists(os.path.join(os.path.dirname(args.lora), "last.pt")) else ""
        need.append(f"a text-stage LoRA adapter at {args.lora}: python train.py --stage text --data {ds.name} "
                    f"--llm {args.llm} --out {os.path.dirname(args.lora)}{resume}")
    return need


def load_cf(path, ds, device):
    """A CF encoder rebuilt from its own best.pt (plug-and-play)."""
    ck = loop.read_checkpoint(path)
    cf = build_cf(ck["args"], ds)
    loop.load_trainable(cf, ck["model"])
    return cf.to(device)


def build_llm_model(args, ds):
    """SASRecLLM as `args.stage` trains it, with exactly that stage's parts trainable:
        icl   : nothing trains            text-only prompt, no LoRA
        text  : LoRA trains               text-only prompt
        joint : mapping (+ CF) trains     collaborative prompt, LoRA loaded and frozen"""
    if args.stage == "joint" and missing_parts(args, ds):
        raise FileNotFoundError("the joint stage needs " + "; and ".join(missing_parts(args, ds)) +
                                f". Or make all of them in turn: python train.py --stage all --data {ds.name} --llm {args.llm}")
    llm, tok = llama.load(backbone_dir(args, ds), dtype=llama.DTYPES[args.dtype], device=args.device)
    llm.requires_grad_(False)
    cf = None
    if args.stage == "text":
        lora.inject(llm, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout)  # only LoRA trains
    elif args.stage == "joint":
        loop.check_adapter(args.lora)
        lora.load_adapter(llm, args.lora)
        llm.requires_grad_(False)  # LoRA frozen in the joint stage
        cf = load_cf(args.cf_ckpt, ds, args.device)
        cf.requires_grad_(not args.freeze_cf)
    model = SASRecLLM(llm, tok.yes_id, tok.no_id, cf=cf, proj_token_num=args.proj_token_num, cf_bias=bool(args.cf_bias))
    t0 = time.time()
    prompts = data.encode_prompts(ds, range(len(ds)), tok, cf is not None, args.proj_token_num, args.template)
    n = np.array([len(p.ids) for p in prompts])
    loop.say(f"tokenized {len(prompts)} {'collaborative' if cf is not None else 'text-only'} {args.template} prompts in "
             f"{time.time() - t0:.1f}s: {n.mean():.0f} tokens on average, max {n.max()}")
    return model, prompts


def llm_batches(args, ds, prompts):
    """batches(epoch) over the train rows: length-bucketed, shuffled by (seed, epoch), split across ranks."""
    rows = ds.idx("train")
    lengths = [len(prompts[r].ids) for r in rows]
    rank, world = loop.rank_world()
    return lambda epoch: data.PromptBatches(
        ds, prompts, rows, data.epoch_groups(lengths, args.batch_size, args.seed, epoch, args.iters_per_epoch),
        args.maxlen, rank, world, pad_multiple=args.pad_multiple)


def llm_predictor(args, ds, prompts, shuffle_cf=False, seed=0):
    """predict(model, split) -> logits in ds.idx(split)'s order. Each rank scores a share of the
    length buckets, and the scores are gathered so that every rank computes the same metrics.
    shuffle_cf feeds the CF encoder a seed-permuted copy of the split's rows (the ablation)."""
    rank, world = loop.rank_world()

    def predict(model, split):
        rows = ds.idx(split)
        cf_rows = rows[np.random.default_rng(seed).permutation(len(rows))] if shuffle_cf else None
        groups = data.bucket_batches([len(prompts[r].ids) for r in rows], args.eval_batch_size, shuffle=False)
        local, t0, t_said = {}, time.time(), time.time()
        for b in data.PromptBatches(ds, prompts, rows, groups[rank::world], args.maxlen, cf_rows=cf_rows,
                                    pad_multiple=args.pad_multiple):
            s = model(**b.to(args.device).inputs)
            local.update(zip(b.positions.tolist(), s.float().cpu().tolist()))
            if time.time() - t_said > loop.PROGRESS_SECONDS:  # a long evaluation (a real LLM on a CPU) says how far
                t_said = time.time()
                loop.say(f"  scoring {split}: {len(local)}/{-(-len(rows) // world)} | {len(local) / (t_said - t0):.1f}/s")
        scores = loop.gather_scores(local)
        return np.array([scores[j] for j in range(len(rows))])
    return predict


def run_llm(args, ds=None):
    """icl (score only), text (TALLRec) or joint (SASRecLLM)."""
    ds = load_data(args, ds)
    loop.seed_everything(args.seed)
    model, prompts = build_llm_model(args, ds)
    predict, cfg = llm_predictor(args, ds, prompts), train_config(args)
    if args.stage == "icl":
        return score_only(cfg, model, predict, ds)
    report = loop.train(cfg, model, llm_batches(args, ds, prompts), bce_loss, predict, ds)
    if args.stage == "text" and report is not None and loop.is_main():
        # loop.train has reloaded the best epoch: publish its LoRA in peft's format (plug-and-play)
        loop.publish_dir(os.path.join(args.out, "adapter"), lambda d: lora.save_adapter(model.llm, d))
    loop.barrier()
    return report


def run_all(args):
    """The dual-stage chain: SASRec alone, then LoRA on text-only prompts, then joint tuning."""
    ds, reports = load_data(args), {}
    for stage in ("sasrec", "text", "joint"):
        a = fill_defaults(argparse.Namespace(**{**vars(args), "stage": stage}), stage)
        a.out = os.path.join(args.runs, stage)
        loop.say(f"=== stage {stage} -> {a.out}")
        reports[stage] = (run_cf if stage in CF_STAGES else run_llm)(a, ds)
    loop.say(markdown_table([(s, r["test"]) for s, r in reports.items() if r]))  # the chain's test table
    return reports

# -----------------------------------------------------------------------------
# Finished runs, rebuilt (eval.py re-scores them, draws them, shuffles their CF tokens)


def upgrade_args(a):
    """A run's saved arguments in today's names; runs of older checkouts lack some keys."""
    a = dict(a)
    if "run_format" not in a:  # before the restructure: --sasrec was cf_ckpt already
        a.setdefault("cf_bias", 0)  # runs saved before --cf-bias mapped the bare embeddings
        a["freeze_cf"] = a.pop("freeze_sasrec", False)
    if a.get("run_format", 1) < 3:  # runs saved before --template read CoLLM's wording
        a.setdefault("template", "collm")
    defaults = vars(parse_args(["--stage", a["stage"]]))
    return argparse.Namespace(**{**defaults, **a})


def load_run(run_dir, data_dir=None, device=None):
    """(args, ds, model, make_predict) for a finished run, rebuilt from its best.pt on its own device
    (or `device`: a GPU run re-scored on the CPU).

    make_predict(shuffle_cf=False, seed=0) -> predict(model, split). The model and the tokenized
    prompts are built once, whatever the number of evaluations."""
    path = os.path.join(run_dir, "best.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; train the run first")
    ck = loop.read_checkpoint(path)
    args = upgrade_args(ck["args"])
    args.data_dir, args.device = data_dir or args.data_dir, device or args.device
    ds = load_data(args)
    model, prompts = (build_cf(vars(args), ds).to(args.device), None) if args.stage in CF_STAGES else build_llm_model(args, ds)
    loop.load_trainable(model, ck["model"])

    def make_predict(shuffle_cf=False, seed=0):
        if shuffle_cf and args.stage != "joint":
            raise ValueError(f"--shuffle-cf needs a joint run; {run_dir} is a '{args.stage}' run")
        if prompts is None:
            return cf_predictor(ds, args.maxlen, args.device)
        return llm_predictor(args, ds, prompts, shuffle_cf=shuffle_cf, seed=seed)
    return args, ds, model, make_predict


def run_chain(run_dir):
    """[(stage, run dir)] that built run_dir, oldest first: a joint run names its CF and text runs."""
    a = loop.read_checkpoint(os.path.join(run_dir, "best.pt"))["args"]
    chain = []
    if a["stage"] == "joint":
        chain = [(a.get("cf", "sasrec"), os.path.dirname(a["cf_ckpt"])), ("text", os.path.dirname(a["lora"]))]
    return chain + [(a["stage"], run_dir)]

# -----------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", required=True, choices=CF_STAGES + LLM_STAGES + ("all",))
    ap.add_argument("--data", default="ml1m", help="ml1m, movielens or amazon")
    ap.add_argument("--split", default=None, choices=("months", "ratio"), help="CoLLM's month windows (ml1m, movielens)"
                    " or the paper's chronological 8:1:1 (amazon's default)")
    ap.add_argument("--reviews", default=None, help="amazon: reviews file (default DATA/amazon-book/Books_5.json.gz)")
    ap.add_argument("--meta", default=None, help="amazon: metadata file (default DATA/amazon-book/meta_Books.json.gz)")
    ap.add_argument("--data-dir", default=None, help="data root (default: $SASRECLLM_DATA, else data/)")
    ap.add_argument("--out", default=None, help="run directory (default: RUNS/<stage>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=loop.non_negative, default=0, help="only the first N rows of each split (smoke tests)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=loop.positive, default=2, help="torch CPU threads")
    # the loop; None takes the stage's default from STAGE_DEFAULTS
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--wd", type=float, default=None, help="AdamW weight decay")
    ap.add_argument("--batch-size", type=loop.positive, default=None, help="default: 1024 (CF models), 16 (LLM stages)")
    ap.add_argument("--max-epochs", type=loop.positive, default=None, help="default 300; LLM stages on --llm tiny: 10")
    ap.add_argument("--patience", type=loop.positive, default=None, help="epochs with no better valid AUC before stopping")
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--clip", type=float, default=1.0, help="max gradient norm")
    ap.add_argument("--amp", default=None, choices=("none", "bf16", "fp16"), help="default: fp16 with a GradScaler on "
                    "CUDA (the paper's mixed precision), none on CPU")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt, with the same flags")
    ap.add_argument("--overwrite", action="store_true", help="start over in a used OUT (old files move to OUT/old-*/)")
    ap.add_argument("--stop-after", type=loop.non_negative, default=0, help="stop after epoch N, as if killed (tests --resume)")
    ap.add_argument("--max-steps", type=loop.non_negative, default=0, help="stop after N optimizer steps (smoke runs)")
    ap.add_argument("--max-minutes", type=float, default=0, help="start no new epoch after this many minutes")
    ap.add_argument("--iters-per-epoch", type=loop.non_negative, default=None,
                    help="LLM stages: epochs of N iterations (default 400; CoLLM's 50; 0: one pass over train)")
    # CF models
    ap.add_argument("--dim", type=loop.positive, default=None)
    ap.add_argument("--dropout", type=float, default=None)
    ap.add_argument("--maxlen", type=loop.positive, default=25, help="history length the sequence models read")
    ap.add_argument("--layers", type=loop.positive, default=2, help="SASRec blocks")
    ap.add_argument("--heads", type=loop.positive, default=4, help="SASRec attention heads")
    ap.add_argument("--no-bias", action="store_true", help="SASRec without user/item biases")
    ap.add_argument("--init-bias", type=int, default=1, help="1: start biases at Pop's log-odds (MF, SASRec, GRU4Rec)")
    ap.add_argument("--objective", default="bce", choices=("bce", "next"),
                    help="SASRec: pointwise BCE on labels, or next-item with sampled negatives")
    # LLM stages
    ap.add_argument("--runs", default="runs", help="root of the stage runs (--stage all, the tiny backbone, defaults)")
    ap.add_argument("--llm", default=TINYLLAMA_DIR, help="HF-format LLM directory, or 'tiny' for the embedded random backbone")
    ap.add_argument("--template", default="paper", choices=tuple(data.TEMPLATES), help="prompt wording (data.TEMPLATES)")
    ap.add_argument("--tokenizer", default=None, help="--llm tiny: use this tokenizer.model (else one is trained on the data)")
    ap.add_argument("--dtype", default="float32", choices=tuple(llama.DTYPES), help="LLM weight dtype")
    ap.add_argument("--cf", default="sasrec", choices=("sasrec", "mf", "gru4rec"), help="the joint stage's CF encoder")
    ap.add_argument("--cf-ckpt", default=None, help="the joint stage's CF checkpoint (default: RUNS/<cf>/best.pt)")
    ap.add_argument("--lora", default=None, help="text-stage LoRA adapter dir (default: RUNS/text/adapter)")
    ap.add_argument("--freeze-cf", action="store_true", help="joint stage: train the mapping layer only")
    ap.add_argument("--cf-bias", type=int, default=1, choices=(0, 1),
                    help="joint: 1 appends the CF model's biases to its user/item vectors (their dot product is then "
                         "the CF logit; see sasrecllm.cf_vectors), 0 hands the mapping layer the bare embeddings")
    ap.add_argument("--proj-token-num", type=loop.positive, default=1, help="pseudo-tokens per <UserID>, <TargetItemID>")
    ap.add_argument("--lora-r", type=loop.positive, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--eval-batch-size", type=loop.positive, default=64)
    ap.add_argument("--pad-multiple", type=loop.positive, default=1,
                    help="round prompt batches' lengths up to a multiple of N (few shapes, for GPUs)")
    args = ap.parse_args(argv)
    args.run_format = RUN_FORMAT
    args.amp = args.amp or ("fp16" if args.device.startswith("cuda") else "none")
    if args.stage != "all":
        fill_defaults(args, args.stage)
    args.out = args.out or os.path.join(args.runs, args.stage)
    args.cf_ckpt = args.cf_ckpt or os.path.join(args.runs, args.cf, "best.pt")
    args.lora = args.lora or os.path.join(args.runs, "text", "adapter")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    outs = [os.path.join(args.runs, s) for s in ("sasrec", "text", "joint")] if args.stage == "all" else [args.out]
    try:
        args.device = loop.init_distributed(args.device)
        with loop.own_run_dirs(outs, args.resume, args.overwrite):  # refuses a second writer, keeps old runs
            (run_all if args.stage == "all" else run_cf if args.stage in CF_STAGES else run_llm)(args)
    except (data.DataError, FileNotFoundError, FloatingPointError, ValueError, KeyError, OSError) as e:
        print(loop.error_line(e), file=sys.stderr)
        return 1 if isinstance(e, FloatingPointError) else 2  # 2: bad input or files (loop.RunError is a ValueError)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with the same command and --resume (in {', '.join(outs)})", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
