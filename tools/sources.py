"""Reading the data files, every line checked, into the columns that data.make_dataset takes:
CoLLM's processed ML-1M split (TSV), and CoLLM's recipe on raw ratings (the GroupLens ML-1M files,
Amazon's 2018 reviews). Machinery beside data.py, which holds what the columns become.

Every problem with a file is a DataError naming the file, the line and what was expected.

CoLLM's recipe (zyang1580/CoLLM, dataset/ml-1m/processing_ood.ipynb): join ratings with titles,
label = rating >= 4; number calendar months (UTC) from the first month: months 14-23 train,
24-28 valid, 29-33 test (other months are dropped); sort by (user, timestamp) with a stable sort
and renumber users and items 1..N by first appearance (0 is padding). Or the paper's chronological
8:1:1 split (`ratio`, Amazon's default).
"""
import gzip
import json
import os
import sys

import numpy as np

SPLITS = ("train", "valid", "test")
MONTH_WINDOWS = {"train": range(14, 24), "valid": range(24, 29), "test": range(29, 34)}
RATIO = (0.8, 0.1, 0.1)        # the paper's chronological 8:1:1 split
LIKE_THRESHOLD = 4             # rating >= 4 is a like (label 1)
RATINGS = (1, 5)               # both sources rate 1..5 stars; anything else is refused
AMAZON_MAX_ID = 4000           # the paper keeps Amazon Book user and item ids <= 4000
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
AMAZON_URL = "https://nijianmo.github.io/amazon/index.html"
COLLM_URL = "https://github.com/zyang1580/CoLLM (collm-datasets/ml-1m.zip)"
MAX_ID_RATIO = 2               # ids given as they are (ml1m) may run to twice their count, no more


class DataError(ValueError):
    """Bad or missing input. The message names the file, the line and what was expected."""


def load_ml1m(data_dir):
    """ml1m/interactions.tsv (user_id item_id label timestamp split) + ml1m/items.tsv, every line
    checked, -> data.make_dataset's arguments."""
    inter_path = os.path.join(data_dir, "ml1m", "interactions.tsv")
    items_path = os.path.join(data_dir, "ml1m", "items.tsv")
    what = ("CoLLM's ML-1M split as interactions.tsv and items.tsv; get collm-datasets/ml-1m.zip "
            f"from {COLLM_URL}, or the raw GroupLens files ({GROUPLENS_URL}) and load 'movielens'")

    titles, title_line = {}, {}
    for n, (i, title) in read_table(items_path, ["item_id", "title"], what, ints=["item_id"]):
        if i in titles:
            raise DataError(f"{items_path}:{n}: item_id {i} repeats line {title_line[i]}; expected "
                            "each item once")
        if i < 1:
            raise DataError(f"{items_path}:{n}: expected item_id >= 1 (0 is padding), got {i}")
        titles[i], title_line[i] = title, n
    if not titles:
        raise DataError(f"{items_path}: no items; expected item_id and title lines after the header")

    # A repeated (user, item) row would put its item into a later row's history and leak that
    # row's answer, so every pair must be unique (pair -> the line it first appeared on).
    rows, pair_line = [], {}
    for n, (u, i, y, t, s) in read_table(inter_path, ["user_id", "item_id", "label", "timestamp", "split"],
                                         what, ints=["user_id", "item_id", "timestamp"]):
        if y not in ("0", "1"):
            raise DataError(f"{inter_path}:{n}: expected label 0 or 1, got {y!r}")
        if s not in SPLITS:
            raise DataError(f"{inter_path}:{n}: expected split train, valid or test, got {s!r}")
        if u < 1 or i < 1:
            raise DataError(f"{inter_path}:{n}: expected ids >= 1 (0 is padding)")
        if i not in titles:
            raise DataError(f"{inter_path}:{n}: item_id {i} has no title in {items_path}")
        if pair_line.setdefault((u, i), n) != n:
            raise DataError(f"{inter_path}:{n}: user_id {u} and item_id {i} repeat line "
                            f"{pair_line[u, i]}; expected each (user, item) pair once")
        rows.append((u, i, int(y), t, s, n))
    if not rows:
        raise DataError(f"{inter_path}: no rows; expected interactions after the header")
    user, item, label, timestamp = (np.array(c, dtype=np.int64) for c in list(zip(*rows))[:4])
    lines = [r[5] for r in rows]

    # Embedding tables get a row for every id up to the largest, so one stray huge id (a user_id
    # of 999999999) would ask for gigabytes. Ids must be numbered about 1..N, as CoLLM numbers
    # them: the largest at most MAX_ID_RATIO times the number of distinct ids.
    for ids, at, path, name in ((list(title_line), list(title_line.values()), items_path, "item_id"),
                                (user, lines, inter_path, "user_id"), (item, lines, inter_path, "item_id")):
        top, n = int(np.max(ids)), len(np.unique(ids))
        if top > MAX_ID_RATIO * n:
            raise DataError(f"{path}:{at[int(np.argmax(ids))]}: {name} {top}, but there are only {n} "
                            f"distinct {name}s; expected ids numbered 1..N (renumber them, e.g. by first "
                            "appearance as CoLLM does)")
    split = np.array([r[4] for r in rows])
    title_list = [""] + [titles.get(i, "") for i in range(1, max(titles) + 1)]
    return dict(name="ml1m", domain="movie", user=user, item=item, label=label, timestamp=timestamp, split=split,
                titles=title_list, source=inter_path)



def read_table(path, names, what, sep="\t", header=True, ints=(), encoding="utf-8"):
    """Yields (line number, fields) of a text file of `sep`-separated fields, the ones named in
    ints parsed as integers. With header=True the first line must be the names themselves. Any
    problem is a DataError naming the file and the line; `what` tells a missing file's reader
    what was expected there and where to get it."""
    lines, kind = _lines(path, what, encoding), "tab" if sep == "\t" else repr(sep)
    if header:
        n, first = next(lines, (1, ""))
        if first.split(sep) != names:
            raise DataError(f"{path}:1: expected the header {sep.join(names)!r} ({kind}-separated), "
                            f"got {first!r}")
    for n, line in lines:
        fields = line.split(sep)
        if len(fields) != len(names):
            raise DataError(f"{path}:{n}: expected {len(names)} {kind}-separated fields "
                            f"({', '.join(names)}), got {len(fields)}")
        for j, name in enumerate(names):
            if name in ints:
                try:
                    fields[j] = int(fields[j])
                except ValueError:
                    raise DataError(f"{path}:{n}: expected an integer {name}, got {fields[j]!r}") from None
        yield n, fields



def _lines(path, what, encoding="utf-8"):
    """Yields (line number, line without its newline); .gz files are decompressed. Each line is
    decoded on its own, so a bad byte is reported on its own line."""
    if not os.path.exists(path):
        raise DataError(f"{path} not found (the data root is --data-dir, else $SASRECLLM_DATA, else "
                        f"data/); expected {what}")
    opener = gzip.open if path.endswith(".gz") else open
    n = 0
    try:
        with opener(path, "rb") as f:
            for n, raw in enumerate(f, start=1):
                yield n, raw.decode(encoding).rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{n}: expected {encoding} text (byte {e.object[e.start]:#04x} at column "
                        f"{e.start + 1})") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}:{n + 1}: expected readable text{' (gzip)' if path.endswith('.gz') else ''} "
                        f"({e})") from None


# ----------------------------------------------------------------------------------------------
# Loaders 2 and 3: raw ratings -> CoLLM's recipe

def months_since_start(timestamp):
    """Calendar month index in UTC, 0 = the first month in the data.  (N,) int64"""
    month = timestamp.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)
    return month - month.min()


def from_ratings(name, domain, user_raw, item_raw, rating, timestamp, titles_raw, split,
                 source, first_review_only=False, max_id=None):
    """CoLLM's recipe on raw ratings -> data.make_dataset's arguments, rows in train, valid, test blocks.

    user_raw, item_raw: (N,) raw ids (ints or strings) in file order; titles_raw: raw item id ->
    title. Ratings of items without a title are dropped (CoLLM joins with an inner merge).
    pandas' merge groups the rows by item, in order of the item's first appearance, so rows with
    the same (user, timestamp) keep that order here too; within an item, file order.
    """
    if split not in ("months", "ratio"):
        raise DataError(f"unknown split option {split!r}; expected 'months' or 'ratio'")
    has_title = np.array([i in titles_raw for i in item_raw.tolist()], dtype=bool)
    if not has_title.any():
        raise DataError(f"{source}: no ratings of items that have a title; expected the rated "
                        "items to appear in the metadata / movies file")
    rows = dict(user=user_raw, item=item_raw, label=(rating >= LIKE_THRESHOLD).astype(np.int64),
                timestamp=timestamp, split=np.full(len(rating), "", dtype=object))
    rows = _take(rows, has_title)
    rows = _take(rows, np.argsort(renumber(rows["item"]), kind="stable"))   # the merge's order

    if split == "months":
        month = months_since_start(rows["timestamp"])
        for s, window in MONTH_WINDOWS.items():
            rows["split"][np.isin(month, list(window))] = s
        rows = _take(rows, rows["split"] != "")

    # Stable sort by (user, timestamp); raw user ids sort as numbers (GroupLens) or strings.
    user_code = np.unique(rows["user"], return_inverse=True)[1]
    rows = _take(rows, np.lexsort((rows["timestamp"], user_code)))
    pairs = np.stack([np.unique(rows[k], return_inverse=True)[1] for k in ("user", "item")], 1)
    first = np.unique(pairs, axis=0, return_index=True)[1]
    notes, repeated = [], len(rows["user"]) - len(first)
    if first_review_only and repeated:
        # A repeated (user, item) review is not a new event: keep the user's first review, so
        # a target never sits in its own history.
        rows = _take(rows, np.sort(first))
        notes.append(f"{source}: dropped {repeated} repeated (user, item) reviews, keeping each "
                     "pair's first")
    elif repeated:
        notes.append(f"{source}: kept {repeated} repeated (user, item) ratings (re-ratings); each "
                     "later one has its item in its own history")
    for note in notes:  # stderr: stdout may be --stats' JSON
        print(f"note: {note}", file=sys.stderr)

    rows["raw_item"] = rows["item"]
    rows["user"], rows["item"] = renumber(rows["user"]), renumber(rows["item"])
    if max_id is not None:
        rows = _take(rows, (rows["user"] <= max_id) & (rows["item"] <= max_id))
        # close the gaps; the first-appearance order of the survivors is unchanged
        rows["user"], rows["item"] = renumber(rows["user"]), renumber(rows["item"])
    if split == "ratio":
        rows["split"] = ratio_split(rows["timestamp"])

    rows = _take(rows, np.concatenate([np.flatnonzero(rows["split"] == s) for s in SPLITS]))
    titles = [""] * (int(rows["item"].max(initial=0)) + 1)
    for i, raw in zip(rows["item"].tolist(), rows["raw_item"].tolist()):
        titles[i] = titles_raw[raw]
    return dict(name=name, domain=domain, user=rows["user"], item=rows["item"], label=rows["label"],
                timestamp=rows["timestamp"], split=rows["split"].astype(str), titles=titles, source=source,
                notes=notes)


def _take(rows, index):
    """Selects (mask) or reorders (indices) every column of a dict of (N,) arrays."""
    return {k: v[index] for k, v in rows.items()}


def renumber(raw):
    """Ids 1..N in order of first appearance.  (N,) -> (N,) int64"""
    _, first, code = np.unique(raw, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(1, len(first) + 1)
    return rank[code]


def ratio_split(timestamp):
    """The paper's 8:1:1 chronological split over all rows (stable on ties)."""
    order = np.argsort(timestamp, kind="stable")
    n = len(order)
    n_train, n_valid = int(round(n * RATIO[0])), int(round(n * RATIO[1]))
    part = np.empty(n, dtype=object)
    part[order[:n_train]] = "train"
    part[order[n_train:n_train + n_valid]] = "valid"
    part[order[n_train + n_valid:]] = "test"
    return part


def load_movielens(data_dir, split="months"):
    """Raw GroupLens ml-1m/ratings.dat (UserID::MovieID::Rating::Timestamp) + movies.dat."""
    ratings_path = os.path.join(data_dir, "ml-1m", "ratings.dat")
    movies_path = os.path.join(data_dir, "ml-1m", "movies.dat")
    what = (f"the GroupLens MovieLens-1M files; download {GROUPLENS_URL} and unzip it in "
            f"{data_dir} (it unpacks to ml-1m/)")

    titles = {mid: title for _, (mid, title, _genres) in
              read_table(movies_path, ["MovieID", "Title", "Genres"], what, "::", False, ["MovieID"], "latin-1")}
    names = ["UserID", "MovieID", "Rating", "Timestamp"]
    rows = []
    for n, fields in read_table(ratings_path, names, what, "::", False, names, "latin-1"):
        check_rating(fields[2], ratings_path, n)
        rows.append(fields)
    if not rows:
        raise DataError(f"{ratings_path}: no ratings; expected UserID::MovieID::Rating::Timestamp")
    user, item, rating, timestamp = np.array(rows, dtype=np.int64).T
    return from_ratings("movielens", "movie", user, item, rating, timestamp, titles, split,
                        ratings_path)


def check_rating(r, path, n):
    if not RATINGS[0] <= r <= RATINGS[1]:
        raise DataError(f"{path}:{n}: rating {r:g} is outside {RATINGS[0]}..{RATINGS[1]}; expected star ratings")


def _json_lines(path, what):
    """Yields (line number, object) from a JSON-lines file, plain or .gz."""
    for n, line in _lines(path, what):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: expected one JSON object per line ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        yield n, obj


def load_amazon(data_dir, split="ratio", reviews=None, meta=None):
    """2018 Amazon Review Data: reviews (reviewerID, asin, overall, unixReviewTime) + metadata
    (asin, title), JSON lines, plain or .gz. Default files: amazon-book/Books_5.json.gz and
    amazon-book/meta_Books.json.gz. Items without a title are dropped, a later metadata line
    for the same asin wins (CoLLM: drop_duplicates(keep='last')). A repeated (user, item) review
    keeps only the first one. split="ratio" (the default) is the paper's chronological 8:1:1;
    split="months" applies ML-1M's month windows counted from the first month of the data, which
    for Amazon Book (from 1996) hold no rows."""
    reviews = reviews or os.path.join(data_dir, "amazon-book", "Books_5.json.gz")
    meta = meta or os.path.join(data_dir, "amazon-book", "meta_Books.json.gz")
    what = (f"Amazon Review Data (2018), {AMAZON_URL}: the 5-core reviews (Books_5.json.gz) and "
            "the metadata (meta_Books.json.gz); or pass --reviews FILE --meta FILE")

    titles = {}
    for n, obj in _json_lines(meta, what):
        if not isinstance(obj.get("asin"), str):
            raise DataError(f"{meta}:{n}: expected a string field 'asin'")
        title = obj.get("title")
        if isinstance(title, str) and title.strip():
            titles[obj["asin"]] = title.strip()

    users, items, ratings, times = [], [], [], []
    for n, obj in _json_lines(reviews, what):
        try:
            u, i = obj["reviewerID"], obj["asin"]
            r, t = float(obj["overall"]), int(obj["unixReviewTime"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{reviews}:{n}: expected fields reviewerID, asin, overall (number) "
                            "and unixReviewTime (integer)") from None
        check_rating(r, reviews, n)
        users.append(str(u))
        items.append(str(i))
        ratings.append(r)
        times.append(t)
    if not users:
        raise DataError(f"{reviews}: no reviews; expected JSON lines with reviewerID, asin, "
                        "overall, unixReviewTime")
    domain = "book" if "book" in os.path.basename(reviews).lower() else "item"  # the prompt's noun
    return from_ratings("amazon", domain, np.array(users), np.array(items), np.array(ratings),
                        np.array(times, dtype=np.int64), titles, split, reviews,
                        first_review_only=True, max_id=AMAZON_MAX_ID)


# prediction files (eval.py --preds)

FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def read_preds(path):
    """The columns of a prediction TSV (header first), each value checked: labels 0 or 1, finite
    scores, seen/warm flags spelled 1/0, true/false or yes/no."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        need = ["user_id", "item_id", "label", "score"]
        if [c for c in need if c not in header]:
            raise ValueError(f"{path}:1: missing column(s) {[c for c in need if c not in header]}; expected at least {need}")
        cols = {c: [] for c in header}
        for n, line in enumerate(f, start=2):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(header):
                raise ValueError(f"{path}:{n}: expected {len(header)} tab-separated fields, got {len(parts)}")
            for c, v in zip(header, parts):
                cols[c].append(v)
    bad = lambda col, ok: next((i + 2 for i, v in enumerate(cols[col]) if not ok(v)), None)
    for col, ok, what in (("user_id", str.isdigit, "an integer user_id"), ("label", lambda v: v in ("0", "1"), "label 0 or 1"),
                          ("score", lambda v: _finite(v), "a finite number as score"),
                          *((c, lambda v: v.lower() in FLAGS, f"{c} as 1/0, true/false or yes/no")
                            for c in ("seen", "warm") if c in cols)):
        line = bad(col, ok)
        if line:
            raise ValueError(f"{path}:{line}: expected {what}, got {cols[col][line - 2]!r}")
    out = dict(user=np.array(cols["user_id"], dtype=np.int64), label=np.array(cols["label"], dtype=np.int64),
               score=np.array(cols["score"], dtype=np.float64))
    out.update({c: np.array([FLAGS[v.lower()] for v in cols[c]]) for c in ("seen", "warm") if c in cols})
    if "split" in cols:
        out["split"] = np.array(cols["split"])
    return out


def _finite(text):
    try:
        return np.isfinite(float(text))
    except ValueError:
        return False
