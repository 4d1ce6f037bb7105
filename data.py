"""Data for SASRecLLM: interactions -> histories -> prompts -> tensors.

Follows the paper "When Transformers Meet Recommenders: Integrating Self-Attentive Sequential
Recommendation with Fine-Tuned LLMs":
- Sec. 3.1, problem formulation: each sample is (user u, item i, label y), y = 1 when the user rated the item >= 4
  ("liked"), and the user's history is the items u liked before this one, oldest first.
- Sec. 3.1.3.1, prompt construction: a fixed template that lists the last 10 liked titles and the
  target title; the SASRecLLM variant adds <UserID> and <TargetItemID> markers where the model
  later splices projected collaborative embeddings (k = proj_token_num slots per marker).

The benchmark is CoLLM's ML-1M split (zyang1580/CoLLM): ml1m/interactions.tsv and items.tsv. A
row's history is every item the user liked earlier, valid and test rows included (CoLLM's rule).
tools/sources.py reads the files, and runs CoLLM's recipe on raw GroupLens and Amazon ratings.

In order: Histories and the warm rule (make_dataset), the prompt templates (TEMPLATES, prompt),
then the tensors: cf_batch for the CF models, prompt_batch for the LLM (left padding, the slots).
"""
import os
import re
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from tools import sources
from tools.sources import DataError

# The data root: --data-dir, else $SASRECLLM_DATA (absolute: the same from any directory; "link/.." where the
# kernel reads it, the link target's parent), else data/.
DATA_DIR = os.path.realpath(os.environ.get("SASRECLLM_DATA") or "data")
SPLITS = sources.SPLITS        # ("train", "valid", "test")
WARM_MORE_THAN = 3             # the paper's warm rows: user and item each with more than 3 train rows
PROMPT_TITLES = 10             # the prompt lists the last 10 liked titles

# ----------------------------------------------------------------------------------------------
# Dataset: the one in-memory form every loader produces

@dataclass
class Histories:
    """history[r]: the items user[r] liked in rows before r in (user, timestamp) order, oldest first.
    All likes sit in one array, user after user, and a row's history is a slice of it: a list per
    row would copy the user's history once per row (memory quadratic in its length)."""

    liked: np.ndarray            # (L,) int64: every like, user after user, each in time order
    start: np.ndarray            # (N,) int64: row r's history is liked[start[r]:end[r]]
    end: np.ndarray              # (N,) int64

    def __getitem__(self, r):
        return self.liked[self.start[r]:self.end[r]].tolist()

    def __iter__(self):
        return (self[r] for r in range(len(self.start)))

    def padded(self, rows, maxlen):
        """The last maxlen items of each row's history, left-padded with 0 (as pad_left). -> (B, maxlen)"""
        rows = np.asarray(rows, dtype=np.int64)
        if len(self.liked) == 0:
            return torch.zeros(len(rows), maxlen, dtype=torch.long)
        at = self.end[rows, None] - maxlen + np.arange(maxlen)    # (B, maxlen) positions in liked
        ids = np.where(at >= self.start[rows, None], self.liked[np.clip(at, 0, None)], 0)
        return torch.from_numpy(ids.astype(np.int64))


@dataclass
class Dataset:
    name: str
    domain: str                  # "movie", "book" or "item": the prompt's noun (NOUNS)
    user: np.ndarray             # (N,) int64, ids 1..n_users
    item: np.ndarray             # (N,) int64, ids 1..n_items
    label: np.ndarray            # (N,) int64 in {0, 1}
    timestamp: np.ndarray        # (N,) int64 unix seconds
    split: np.ndarray            # (N,) str in SPLITS
    titles: list                 # titles[item_id]; titles[0] == ""
    n_users: int
    n_items: int
    history: Histories           # history[row]: item ids the user liked earlier, oldest first
    seen: np.ndarray             # (N,) bool: user and item both occur in train (CoLLM's warm)
    warm: np.ndarray             # (N,) bool: user and item each have > 3 train rows (paper)
    source: str = ""             # the file the rows came from (error messages name it)
    notes: list = field(default_factory=list)  # what the loader changed, e.g. repeated pairs dropped
    whole: object = None         # the Dataset a data_slice was cut from (None: this is the whole one)

    def __len__(self):
        return len(self.user)

    def idx(self, split):  # the rows of one split, in row order
        return np.flatnonzero(self.split == split)


def require_both_labels(ds, split):
    """Refuse a one-class split: a classifier learns nothing there, and the CF start (Pop's log-odds) is infinite."""
    rows = ds.idx(split)
    if (likes := int(ds.label[rows].sum())) in (0, len(rows)):
        raise DataError(f"{ds.source}: the {split} split holds only {'likes' if likes else 'dislikes'} "
                        f"({len(rows)} rows); expected both likes and dislikes (a small --limit can cut one away)")


def seen_warm(user, item, split, n_users, n_items):
    """(seen, warm) per row: its user and item in the train rows at all, and more than 3 times each."""
    train = split == "train"
    user_train = np.bincount(user[train], minlength=n_users + 1)    # (n_users+1,)
    item_train = np.bincount(item[train], minlength=n_items + 1)    # (n_items+1,)
    # The paper (Section 4.1.2) calls a row warm when its "interaction count exceeds a predefined
    # threshold of 3". Both sides must exceed it, as CoLLM's warm/cold split asks of both: the CF
    # half knows a row only when it has seen its user and its item often enough.
    return ((user_train[user] > 0) & (item_train[item] > 0),
            (user_train[user] > WARM_MORE_THAN) & (item_train[item] > WARM_MORE_THAN))


def make_dataset(name, domain, user, item, label, timestamp, split, titles, source, notes=()):
    """Checks the splits, then derives the seen / warm flags and every row's history."""
    for s in SPLITS:
        if not np.any(split == s):
            raise DataError(f"{source}: split {s!r} is empty; expected rows in each of {', '.join(SPLITS)}")
    n_users, n_items = int(user.max()), int(item.max())
    seen, warm = seen_warm(user, item, split, n_users, n_items)

    # Histories. np.lexsort is stable, so rows with the same (user, timestamp) keep their row order.
    order = np.lexsort((timestamp, user))                      # (N,) primary key: user
    u, liked_row = user[order], label[order] == 1
    # In that order each user's train rows come first, then valid, then test: else a train row's history
    # would hold a test row's liked item (a leak no metric shows). CoLLM's month windows keep it.
    rank = (split[order] == "valid") + 2 * (split[order] == "test")  # (N,) 0 train, 1 valid, 2 test
    if (back := np.flatnonzero((u[1:] == u[:-1]) & (rank[1:] < rank[:-1]))).size:
        a, b = order[back[0]], order[back[0] + 1]
        raise DataError(f"{source}: user {user[a]}'s {split[b]} row (item {item[b]}, time {timestamp[b]}) comes at or "
                        f"after its {split[a]} row (item {item[a]}, time {timestamp[a]}): a history would hold a later "
                        "split's like; expected each user's train rows before valid, valid before test")
    liked = item[order][liked_row]                             # (L,) user by user, in time order
    before = np.cumsum(liked_row) - liked_row                  # (N,) likes in earlier sorted rows
    first = np.r_[True, u[1:] != u[:-1]]                       # (N,) a user's first sorted row
    user_start = before[first][np.cumsum(first) - 1]           # (N,) where that user's likes begin
    start, end = np.empty(len(user), dtype=np.int64), np.empty(len(user), dtype=np.int64)
    start[order], end[order] = user_start, before
    return Dataset(name=name, domain=domain, user=user, item=item, label=label, timestamp=timestamp, split=split,
                   titles=titles, n_users=n_users, n_items=n_items, history=Histories(liked, start, end),
                   seen=seen, warm=warm, source=source, notes=list(notes))


def load(name, data_dir=None, split=None, reviews=None, meta=None):
    """Loads "ml1m" (CoLLM's fixed month split), "movielens" or "amazon". split: "months" (CoLLM's
    windows; ml1m's and movielens' default) or "ratio" (the paper's chronological 8:1:1, Amazon's
    default: Amazon Book starts in 1996, so month windows counted from its start hold no rows)."""
    data_dir, split = data_dir or DATA_DIR, split or ("ratio" if name == "amazon" else "months")
    if name == "ml1m":
        if split != "months":
            raise DataError(f"ml1m is CoLLM's fixed month split; --split {split} needs the raw files: load 'movielens'")
        return make_dataset(**sources.load_ml1m(data_dir))
    if name == "movielens":
        return make_dataset(**sources.load_movielens(data_dir, split))
    if name == "amazon":
        return make_dataset(**sources.load_amazon(data_dir, split, reviews, meta))
    raise DataError(f"unknown dataset {name!r}; expected ml1m, movielens or amazon")


# ----------------------------------------------------------------------------------------------
# Prompts (paper Section 3.1.3.1; CoLLM's prompt files). Each template has a text-only form (ICL,
# TALLRec) and a collaborative form, whose <UserID> and <TargetItemID> become the spliced slots.
# "paper" (the default) is the paper's wording with the data's noun; its text-only form, which the
# paper does not print, drops the two feature clauses. "collm" is CoLLM's files word for word. Both
# keep CoLLM's framing; the "\\n" before #Answer: is a literal backslash and n, not a newline.

TEMPLATES = {
    "paper": dict(
        text='#Question: A user has given high ratings to the following {items}: <HisItemTitleList>. '
             'Using all available information, predict whether the user would enjoy the {item} titled '
             '<TargetItemTitle>? Answer with "Yes" or "No". \\n#Answer:',
        collab='#Question: A user has given high ratings to the following {items}: <HisItemTitleList>. '
               'Additionally, user preferences are encoded in the feature <UserID>. Using all available '
               'information, predict whether the user would enjoy the {item} titled <TargetItemTitle> '
               'with the feature <TargetItemID>? Answer with "Yes" or "No". \\n#Answer:'),
    "collm": dict(
        text='#Question: A user has given high ratings to the following {items}: <HisItemTitleList>. '
             'Leverage the information to predict whether the user would enjoy the {item} titled '
             '<TargetItemTitle>? Answer with "Yes" or "No". \\n#Answer:',
        collab='#Question: A user has given high ratings to the following {items}: <HisItemTitleList>. '
               'Additionally, we have information about the user\'s preferences encoded in the feature '
               '<UserID>. Using all available information, make a prediction about whether the user would '
               'enjoy the {item} titled <TargetItemTitle> with the feature <TargetItemID>? Answer with '
               '"Yes" or "No". \\n#Answer:'),
}
NOUNS = {"movie": dict(item="movie", items="movies"), "book": dict(item="book", items="books"),
         "item": dict(item="item", items="items")}
MARKERS = ("<UserID>", "<TargetItemID>")
# An empty history prints CoLLM's placeholder, typo included (convert_title_list_v2 returns
# "unkow"), so our prompts match the ones CoLLM trained on.
EMPTY_HISTORY = "unkow"


def prompt(ds, i, collab, template="paper"):
    """Row i's prompt: the last 10 liked titles, each in double quotes and joined by ", ", and the
    target title. collab picks the SASRecLLM form, whose markers encode_prompt turns into slots."""
    if template not in TEMPLATES:
        raise DataError(f"unknown prompt template {template!r}; expected one of {', '.join(TEMPLATES)}")
    liked = [f'"{_title(ds.titles[j])}"' for j in ds.history[i][-PROMPT_TITLES:]]
    text = TEMPLATES[template]["collab" if collab else "text"].format(**NOUNS[ds.domain])
    return (text.replace("<HisItemTitleList>", ", ".join(liked) or EMPTY_HISTORY)
                .replace("<TargetItemTitle>", '"' + _title(ds.titles[ds.item[i]].strip(" ")) + '"'))


def _title(title):
    """A title never makes, moves or fills a slot: a marker inside it loses its angle brackets, again
    until none is left ("<<UserID>>" would leave "<UserID>" after one pass)."""
    marker = re.compile("<(UserID|TargetItemID|HisItemTitleList|TargetItemTitle)>")
    while marker.search(title):
        title = marker.sub(r"\1", title)
    return title


# ----------------------------------------------------------------------------------------------
# Tensors

def pad_left(histories, maxlen=25):
    """Last maxlen ids of each history, left-padded with 0.  -> (B, maxlen) long"""
    out = torch.zeros(len(histories), maxlen, dtype=torch.long)
    for b, h in enumerate(histories):
        h = h[-maxlen:]
        out[b, maxlen - len(h):] = torch.tensor(h, dtype=torch.long)
    return out


@dataclass
class Batch:
    """What one training or scoring step reads: the model's keyword arguments, the labels, and the
    size of the global batch (under torchrun each rank holds a share of it)."""
    inputs: dict                 # name -> tensor, passed as model(**inputs)
    label: torch.Tensor          # (B,) float
    n_global: int
    positions: np.ndarray = None  # scoring: where these rows' scores go in the split's order
    tokens: int = 0               # prompts: the real (unpadded) tokens of these rows, for tokens/s

    def to(self, device):
        move = lambda t: t.to(device, non_blocking=True)
        return replace(self, inputs={k: move(v) for k, v in self.inputs.items()}, label=move(self.label))


def cf_batch(ds, rows, maxlen=25):
    """The collaborative models' view of rows (SASRec, MF, GRU4Rec...): who, what they liked
    before, which item. -> dict of user (B,), hist (B, maxlen), item (B,), label (B,)"""
    rows = np.asarray(rows, dtype=np.int64)
    return dict(user=torch.from_numpy(ds.user[rows]), hist=ds.history.padded(rows, maxlen),
                item=torch.from_numpy(ds.item[rows]), label=torch.from_numpy(ds.label[rows]).float())


def cf_tensors(ds, rows, maxlen, next_item=False):
    """cf_batch of all rows at once (ML-1M is small), plus `group`: rows of one user with the same
    number of earlier likes share one history, and get one group id. For SASRec's original
    next-item objective, seq = (hist + [item])[-(maxlen+1):], left-padded."""
    t, h = cf_batch(ds, rows, maxlen), ds.history
    key = ds.user[rows] * (ds.n_items + 1) + (h.end[rows] - h.start[rows])    # (user, history length)
    t["group"] = torch.from_numpy(np.unique(key, return_inverse=True)[1].ravel())
    if next_item:
        t["seq"] = torch.cat([t["hist"], t["item"][:, None]], 1)  # (B, maxlen + 1): no list per row (quadratic)
    return t


def cf_batches(t, batch_size, seed, epoch, inputs=("user", "hist", "item")):
    """One epoch of Batches over cf_tensors t, in an order that depends only on (seed, epoch).
    Rows that share a history stay next to each other, so a sequence model encodes that history
    once per batch (SASRec.user_embedding); the groups themselves are shuffled."""
    group = t["group"]                                               # (N,) shared-history id
    rank = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(int(group.max()) + 1))
    order = torch.argsort(rank[group], stable=True)                  # the shuffled groups' rows
    return [Batch({k: t[k][b] for k in inputs}, t["label"][b], len(b))
            for b in (order[i:i + batch_size] for i in range(0, len(group), batch_size))]


@dataclass
class Prompt:
    ids: list          # token ids, BOS first
    user_pos: list     # k positions of the <UserID> slots (empty for text-only prompts)
    item_pos: list     # k positions of the <TargetItemID> slots


def encode_prompt(text, tok, proj_token_num=1):
    """Tokenizes the text between markers piece by piece, BOS once, first; each marker becomes
    proj_token_num placeholder ids (tok.unk_id) whose positions are recorded."""
    ids, pos = [tok.bos_id], {m: [] for m in MARKERS}
    for piece in re.split("(<UserID>|<TargetItemID>)", text):
        if piece in MARKERS:
            pos[piece] += range(len(ids), len(ids) + proj_token_num)
            ids += [tok.unk_id] * proj_token_num
        elif piece:
            ids += tok.encode(piece, bos=False, special=False)  # a title's "<|im_end|>" stays text
    return Prompt(ids=ids, user_pos=pos["<UserID>"], item_pos=pos["<TargetItemID>"])


def encode_prompts(ds, rows, tok, collab, proj_token_num=1, template="paper"):
    return [encode_prompt(prompt(ds, int(r), collab, template), tok, proj_token_num) for r in rows]


def prompt_batch(ds, prompts, rows, maxlen=25, cf_rows=None, pad_multiple=1, n_global=None):
    """The LLM's Batch for rows: their prompts (prompts[r], from encode_prompt) as tensors and, for collaborative
    prompts, the CF encoder's inputs, from cf_rows when given (the --shuffle-cf ablation: other rows' users and
    items, each prompt its own text). Left padding (to the longest prompt, rounded up to a multiple of pad_multiple)
    makes the last position every row's answer slot and shifts the marker slots right by the row's padding."""
    rows = np.asarray(rows, dtype=np.int64)
    batch = [prompts[r] for r in rows]
    T = -(-max(len(p.ids) for p in batch) // pad_multiple) * pad_multiple
    input_ids = torch.zeros(len(batch), T, dtype=torch.long)        # pad id 0: masked out anyway
    for b, p in enumerate(batch):
        input_ids[b, T - len(p.ids):] = torch.tensor(p.ids, dtype=torch.long)
    pad = T - torch.tensor([len(p.ids) for p in batch])[:, None]    # (B, 1)
    inputs = dict(input_ids=input_ids, attention_mask=(torch.arange(T) >= pad).long())  # (B, T), (B, T)
    if batch[0].user_pos:  # collaborative prompts: the slots and what the CF encoder reads
        c = cf_batch(ds, rows if cf_rows is None else cf_rows, maxlen)
        inputs.update(user_pos=torch.tensor([p.user_pos for p in batch]) + pad,   # (B, k)
                      item_pos=torch.tensor([p.item_pos for p in batch]) + pad,   # (B, k)
                      user=c["user"], hist=c["hist"], item=c["item"])    # (B,), (B, maxlen), (B,)
    return Batch(inputs, torch.from_numpy(ds.label[rows]).float(), n_global or len(rows),
                 tokens=sum(len(p.ids) for p in batch))


def bucket_batches(lengths, batch_size, shuffle, seed=0):
    """Batches of indices with similar lengths, so left padding stays small: sort by length (ties
    shuffled if shuffle), cut into batch_size, then shuffle the batches. Each index appears once."""
    lengths, rng = np.asarray(lengths), np.random.default_rng(seed)
    idx = rng.permutation(len(lengths)) if shuffle else np.arange(len(lengths))
    idx = idx[np.argsort(lengths[idx], kind="stable")]
    batches = [idx[s:s + batch_size].tolist() for s in range(0, len(idx), batch_size)]
    return [batches[j] for j in rng.permutation(len(batches))] if shuffle else batches


def epoch_groups(lengths, batch_size, seed, epoch, iters_per_epoch=0):
    """The batches (index lists into lengths) of one training epoch, depending only on
    (seed, epoch) so that runs and resumes repeat. iters_per_epoch=0: one shuffled, bucketed pass;
    N > 0: epochs of N iterations as CoLLM counts them, cut from an endless stream of such passes."""
    if not iters_per_epoch:
        return bucket_batches(lengths, batch_size, shuffle=True, seed=[seed, epoch])
    n_pass = -(-len(lengths) // batch_size)
    steps = range((epoch - 1) * iters_per_epoch, epoch * iters_per_epoch)
    passes = {p: bucket_batches(lengths, batch_size, True, [seed, p]) for p in {s // n_pass for s in steps}}
    return [passes[s // n_pass][s % n_pass] for s in steps]


class PromptBatches:
    """Batches of prompt rows, collated lazily (a list of token ids costs less than its tensors).
    Under torchrun each global batch is split across ranks, so ranks see disjoint rows (the
    DistributedSampler's job) while every global batch stays one length bucket. A batch of fewer rows
    than ranks (a bucket's last few) is left out of that epoch: a rank with no row would have no step."""

    def __init__(self, ds, prompts, rows, groups, maxlen, rank=0, world=1, cf_rows=None, pad_multiple=1):
        groups = [g for g in groups if len(g) >= world]
        self.ds, self.prompts, self.rows, self.groups, self.maxlen = ds, prompts, rows, groups, maxlen
        self.rank, self.world, self.cf_rows, self.pad_multiple = rank, world, cf_rows, pad_multiple

    def __len__(self):
        return len(self.groups)

    def __iter__(self):
        for g in self.groups:
            mine = np.asarray(g[self.rank::self.world], dtype=np.int64)  # positions into rows
            cf = None if self.cf_rows is None else self.cf_rows[mine]
            b = prompt_batch(self.ds, self.prompts, self.rows[mine], self.maxlen, cf, self.pad_multiple, len(g))
            yield replace(b, positions=mine)


def data_slice(ds, limit=0, valid_rows=0):
    """The first `limit` rows of each split (row order), for smoke tests; and/or a fixed random `valid_rows` of the
    valid split (early stopping on a subset, to save a real LLM's time). Histories are the full data's, so a row
    reads the same prompt as in the whole data set; seen and warm count the train rows kept."""
    parts = {s: ds.idx(s)[:limit] if limit else ds.idx(s) for s in SPLITS}
    if valid_rows:  # the same subset whatever the run's --seed
        parts["valid"] = np.random.default_rng(0).permutation(parts["valid"])[:valid_rows]
    keep = np.sort(np.concatenate(list(parts.values())))
    arrays = {f.name: getattr(ds, f.name)[keep] for f in fields(ds) if isinstance(getattr(ds, f.name), np.ndarray)}
    a = arrays  # seen and warm of the train rows kept, which the run learns from (not the whole data's)
    arrays["seen"], arrays["warm"] = seen_warm(a["user"], a["item"], a["split"], ds.n_users, ds.n_items)
    h = ds.history
    whole = ds if ds.whole is None else ds.whole  # (a slice of a slice: the same whole data set)
    return replace(ds, history=Histories(h.liked, h.start[keep], h.end[keep]), whole=whole, **arrays)
