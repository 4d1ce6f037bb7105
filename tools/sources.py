"""Reading the data files into the columns that data.make_dataset takes, every line checked (a
problem is a DataError naming the file, the line and what was expected): CoLLM's processed ML-1M
split (TSV), and CoLLM's recipe on raw ratings (GroupLens' ML-1M files, Amazon's 2018 reviews).

CoLLM's recipe (zyang1580/CoLLM, dataset/ml-1m/processing_ood.ipynb): join ratings with titles, label = rating >= 4;
number calendar months (UTC) from the first month: months 14-23 train, 24-28 valid, 29-33 test (other months are
dropped); sort by (user, timestamp) with a stable sort and renumber users and items 1..N by first appearance (0 is
padding). Or the paper's chronological 8:1:1 split (`ratio`, Amazon's default).
"""
import gzip
import json
import math
import os
import re
import stat
import sys
import zlib
from collections import Counter

import numpy as np

SPLITS = ("train", "valid", "test")
AMAZON_MAX_ID = 4000  # the paper keeps Amazon Book user and item ids <= 4000
ID_MAX, TIME_MAX = 2**31 - 1, 10**11 - 1  # TIME_MAX: Unix seconds before the year 5138 (1e20 overflowed months)
DIGITS = re.compile("0|[1-9][0-9]*")  # int() would also take " 1", "1_0", "+1", "١" and "01": one spelling each
LINE_MAX = 64 << 20  # bytes in one line: no line fills memory
JSON_LINE_MAX = 8 << 20  # bytes in one JSON line (Amazon's longest: ~10 KB); Python's objects take ~25x a line's bytes
GZ_RATIO = 100  # a .gz that decompresses to more is a bomb (Amazon's JSON lines: about 5 to 10 times)
LONE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # (a pair, an emoji's, is checked too, and passes)
# float() also takes "nan" and "1_0"; one way to match each text ("[0-9]+\.?[0-9]*" tried every split of a digit run)
DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


class DataError(ValueError):
    """Bad or missing input. The message names the file, the line and what was expected."""


def integer(text, low=1, high=ID_MAX):
    """The int that text, ASCII digits alone, spells, in low..high (ids 1..ID_MAX by default); else ValueError."""
    if not (DIGITS.fullmatch(text) and low <= int(text) <= high):
        raise ValueError(text)
    return int(text)


def real(text):
    """The finite float that text, a decimal literal alone of at most 400 characters, spells; else ValueError."""
    if not (len(text) <= 400 and DECIMAL.fullmatch(text) and math.isfinite(float(text))):
        raise ValueError(text)
    return float(text)


def _is(ok, what, then=None):
    """A parser (function, what it expects) that passes the values ok(value) accepts (as then(value))."""
    def parse(v):
        if not ok(v):
            raise ValueError(v)
        return then(v) if then else v
    return parse, what


# Parsers, (function, what it expects), of read_table's fields and _fields' JSON values
LABEL = ({"0": 0, "1": 1}.__getitem__, "label 0 or 1")
SPLIT = (dict(zip(SPLITS, SPLITS)).__getitem__, "split train, valid or test")
RATING = (lambda s: integer(s, 0), "an integer Rating")  # from_ratings says 1..5 stars
TIME = (lambda s: integer(s, 0, TIME_MAX), f"an integer timestamp 0..{TIME_MAX} (Unix seconds)")
visible = lambda s: any(c.isprintable() and not c.isspace() for c in s)  # noqa: E731 (not NUL, U+200B, U+FEFF)
TITLE_MAX = 2000  # characters (ML-1M's longest title: 80, Amazon Gift Cards': 233)
TITLE = _is(lambda s: visible(s) and len(s) <= TITLE_MAX, f"a title that is not blank, of at most {TITLE_MAX} "
            "characters", str.strip)  # (" Heat " and "Heat": one spelling in a prompt)
NAME = _is(lambda v: isinstance(v, str) and v.strip() == v != "" and len(v) <= 200 and v.isprintable(),
           "a non-empty string of at most 200 printable characters, no space at either end")  # ("A " is "A"?)
TEXT = _is(lambda v: v is None or isinstance(v, str) and len(v) <= TITLE_MAX, f"a string of at most {TITLE_MAX} "
           "characters or null")
NUMBER = _is(lambda v: type(v) in (int, float), "a number")  # not a bool
# The value's JSON text: 300 passes; "300", 300.0, 3e2 and true do not.
JSON_TIME = (lambda v: integer(json.dumps(v), 0, TIME_MAX), f"an integer 0..{TIME_MAX} (Unix seconds)")


def _open(path, what):
    """path opened to read bytes, if it is a regular file: a FIFO would wait forever, /dev/zero never end
    (O_NONBLOCK: opening a FIFO waits for no writer; the type is checked on what was opened)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(f"{path} is not a regular file (a directory, FIFO or device); expected {what}")
    return open(fd, "rb")


def _lines(path, what, encoding="utf-8", line_max=None):
    """Yields (line number, line), each of at most line_max (LINE_MAX) bytes; .gz is decompressed. A bad byte is
    reported on its own line."""
    line_max = line_max or LINE_MAX
    if not os.path.lexists(path):
        raise DataError(f"{path} not found (data root: --data-dir, $SASRECLLM_DATA or data/); expected {what}")
    n = 0
    try:
        with _open(path, what) as file, (gzip.open(file) if str(path).endswith(".gz") else file) as f:
            most, read = GZ_RATIO * os.fstat(file.fileno()).st_size + line_max, 0
            for n, raw in enumerate(iter(lambda: f.readline(line_max + 1), b""), start=1):
                if len(raw) > line_max:
                    raise DataError(f"{path}:{n}: a line longer than {line_max} bytes; expected {what}")
                if (read := read + len(raw)) > most:  # (a plain file never gets here)
                    raise DataError(f"{path}:{n}: decompresses to over {GZ_RATIO} times its size; expected {what}")
                line = raw.decode(encoding).rstrip("\r\n").removeprefix("\ufeff" if n == 1 else "")  # (a BOM)
                if "\r" in line:  # (a file of CR line ends reads as one line: its errors would name line 1)
                    raise DataError(f"{path}:{n}: a carriage return inside a line; expected {what} with LF or CRLF "
                                    "line ends")
                yield n, line
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{n}: expected {encoding} text (byte {e.object[e.start]:#04x} at column "
                        f"{e.start + 1})") from None
    except (OSError, EOFError, zlib.error) as e:  # a missing, truncated or damaged file (a link loop: OSError)
        why = (e.strerror if isinstance(e, OSError) else None) or e
        raise DataError(f"{path}:{n + 1}: expected readable text ({why})") from None


# A file that is not UTF-8 but holds UTF-8's multi-byte sequences, or cp1252's C1 bytes, is no latin-1 text either.
NOT_LATIN1 = re.compile(rb"[\x80-\x9f]|[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")


def utf8_or_latin1(path, what, max_bytes=LINE_MAX):
    """The encoding of a file (at most max_bytes) that is UTF-8 or latin-1 throughout; else a DataError: a file of
    both, read as latin-1, would turn every UTF-8 title into mojibake ("CafÃ©")."""
    raw = read_bytes(path, what, max_bytes)
    try:
        raw.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as e:
        if hit := NOT_LATIN1.search(raw):
            raise DataError(f"{path}: byte {e.object[e.start]:#04x} at offset {e.start} is not UTF-8, and bytes "
                            f"{hit.group()!r} at offset {hit.start()} are not latin-1 text; expected {what} in one "
                            "of them throughout") from None
    return "latin-1"


def read_table(path, names, what, sep="\t", header=True, ints=(), encoding="utf-8", parse=None, free=None):
    """Yields (line number, fields) of a file of `sep`-separated fields, parsed: those named in ints as ids
    (1..ID_MAX), those in parse {name: (function, what it expects)}; with header=True the first line is names.
    free: the one field that may hold sep itself (a title "Star Trek:"), split off from both ends."""
    parse = {**{name: (integer, f"an integer {name} 1..{ID_MAX}") for name in ints}, **(parse or {})}
    lines, kind = _lines(path, what, encoding), "tab" if sep == "\t" else repr(sep)
    first = next(lines, (1, ""))[1] if header else None
    if header and first.split(sep) != names:
        raise DataError(f"{path}:1: expected the header {sep.join(names)!r} ({kind}-separated), got {first!r}")
    for n, line in filter(lambda nl: nl[1].strip(), lines):  # blank lines hold no row
        fields = line.split(sep)
        if free is not None and len(fields) >= len(names):
            *fields, rest = line.split(sep, free)
            fields += rest.rsplit(sep, len(names) - free - 1)
        if len(fields) != len(names):
            raise DataError(f"{path}:{n}: expected {len(names)} {kind}-separated fields "
                            f"({', '.join(names)}), got {len(fields)}")
        for j, name in enumerate(names):
            if name in parse:
                fn, expected = parse[name]
                try:
                    fields[j] = fn(fields[j])
                except (KeyError, ValueError):
                    raise DataError(f"{path}:{n}: expected {expected}, got {fields[j]!r}") from None
        yield n, fields


def _int(s):
    try:
        float(v := int(s))  # a number past 1e308 would overflow wherever it is used
    except OverflowError:
        raise ValueError(f"integer {s[:20]}... ({len(s)} digits) out of range") from None
    return v


def _object(pairs):
    """A JSON object whose keys are each given once (json.loads lets the last of two win, silently)."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        raise ValueError(f"key {next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)!r:.60} repeats")
    return obj


def loads(text):
    """json.loads, refusing (ValueError) an integer too large for a float, a repeated key, or nesting too deep."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")  # (json.loads would take UTF-16 and -32 too)
    try:
        value = json.loads(text, parse_int=_int, object_pairs_hook=_object)
    except RecursionError:
        raise ValueError("nested too deep") from None
    if LONE_SURROGATE.search(text):  # "\ud800" alone is no character: UTF-8 cannot hold it, a later write fails
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds a lone surrogate (\\ud800-\\udfff), which is no character") from None
    return value


def _parse_json(text, where, what):
    """json.loads(text); a failure is a DataError naming where (file or file:line) and what was expected."""
    try:
        return loads(text)
    except json.JSONDecodeError as e:
        why = f"{e.msg} at line {e.lineno} column {e.colno}"
    except ValueError as e:  # an integer out of range, a repeated key, nesting too deep
        why = str(e).split(";")[0]
    raise DataError(f"{where}: expected {what} ({why})")


def regular_file(path, what="it"):
    """path, if it is a regular file (a FIFO would block a reader forever, /dev/zero never end); else one line.
    For a library that opens the file itself (safetensors, torch.load); read_bytes opens and checks at once."""
    try:
        if stat.S_ISREG(os.stat(path).st_mode):
            return path
    except FileNotFoundError:
        raise DataError(f"{path} not found; expected {what}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    raise DataError(f"{path} is not a regular file (a directory, FIFO or device); expected {what}")


def read_bytes(path, what, max_bytes=64 << 20):
    """A regular file's bytes, at most max_bytes; else a DataError naming it and what it should hold."""
    try:
        with _open(path, what) as f:
            raw = f.read(max_bytes + 1)  # one byte over the cap at most, even from a file still growing
            if (size := max(os.fstat(f.fileno()).st_size, len(raw))) > max_bytes:
                raise DataError(f"{path}: expected {what} in at most {max_bytes} bytes, got {size}")
            return raw
    except OSError as e:
        raise DataError(f"{path}: expected {what} ({e.strerror or e})") from None


def read_text(path, what, max_bytes=64 << 20):
    """A regular file's text in UTF-8 (read_bytes' checks); a bad byte is a DataError naming it and its offset."""
    try:
        return read_bytes(path, what, max_bytes).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: expected {what} in UTF-8 (byte {e.object[e.start]:#04x} at offset "
                        f"{e.start})") from None


def read_json(path, what, max_bytes=64 << 20, obj=False):
    """The value in a JSON file (UTF-8, at most max_bytes; with obj, a JSON object). A file that is missing, too
    big, not UTF-8, not JSON or not an object is a DataError naming it and what it should hold."""
    value = _parse_json(read_text(path, what, max_bytes), path, what)
    if obj and not isinstance(value, dict):
        raise DataError(f"{path}: expected {what} (a JSON object), got {type(value).__name__}")
    return value


def json_lines(path, what):
    """Yields (line number, object) from a JSON-lines file, plain or .gz."""
    for n, line in filter(lambda nl: nl[1].strip(), _lines(path, what, line_max=JSON_LINE_MAX)):
        obj = _parse_json(line, f"{path}:{n}", "one JSON object per line")
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        yield n, obj


def _fields(path, n, obj, **parse):
    """The values of obj's fields named in parse {name: (function, what it expects)}, each parsed."""
    values = []
    for name, (fn, expected) in parse.items():
        try:
            values.append(fn(obj.get(name)))
        except ValueError:
            got = f"got {json.dumps(obj[name])[:60]}" if name in obj else "it is missing"
            raise DataError(f"{path}:{n}: expected {name} to be {expected}; {got}") from None
    return values


def _once(seen, key, n, path, said, expected):
    """seen[key] = n, the line where key first appears; a repeat is a DataError naming both lines."""
    if seen.setdefault(key, n) != n:
        raise DataError(f"{path}:{n}: {said} line {seen[key]}; expected {expected} once")


def input_dirs(name, data_dir, reviews=None, meta=None):
    """The folders (Amazon: the files) a data set is read from: no run or export writes into them."""
    if name == "amazon":
        return [reviews or os.path.join(data_dir, "amazon-book", "Books_5.json.gz"),
                meta or os.path.join(data_dir, "amazon-book", "meta_Books.json.gz")]
    folder = {"ml1m": "ml1m", "movielens": "ml-1m"}.get(name)  # (another name: data.load says so)
    return [os.path.join(data_dir, folder)] if folder else []


def load_ml1m(data_dir):
    """ml1m/interactions.tsv and items.tsv, ids and splits as CoLLM made them -> make_dataset's arguments."""
    inter_path, items_path = (os.path.join(data_dir, "ml1m", name) for name in ("interactions.tsv", "items.tsv"))
    what = "CoLLM's ML-1M split: collm-datasets/ml-1m.zip from https://github.com/zyang1580/CoLLM"
    titles, title_line = {}, {}
    for n, (i, title) in read_table(items_path, ["item_id", "title"], what, ints=["item_id"], parse={"title": TITLE}):
        _once(title_line, i, n, items_path, f"item_id {i} repeats", "each item")
        titles[i] = title
    # A repeated (user, item) row would leak its answer into a later row's history: pairs are unique.
    rows, splits, pair_line = [], [], {}
    names, parse = ["user_id", "item_id", "label", "timestamp", "split"], dict(label=LABEL, timestamp=TIME, split=SPLIT)
    for n, (u, i, y, t, s) in read_table(inter_path, names, what, ints=names[:2], parse=parse):
        if i not in titles:
            raise DataError(f"{inter_path}:{n}: item_id {i} has no title in {items_path}")
        _once(pair_line, (u, i), n, inter_path, f"user_id {u} and item_id {i} repeat", "each (user, item) pair")
        rows.append((u, i, y, t))
        splits.append(s)
    if not rows:
        raise DataError(f"{inter_path}: no rows; expected interactions after the header")
    user, item, label, timestamp = np.array(list(zip(*rows)), dtype=np.int64)  # (4, N): rows contiguous
    lines = list(pair_line.values())  # the line of each row, in row order
    # An embedding table has a row per id up to the largest: ids must run about 1..N, not to 999999999.
    for ids, at, path, name in ((list(title_line), list(title_line.values()), items_path, "item_id"),
                                (user, lines, inter_path, "user_id"), (item, lines, inter_path, "item_id")):
        top, n = int(np.max(ids)), len(np.unique(ids))
        if top > 2 * n:
            raise DataError(f"{path}:{at[int(np.argmax(ids))]}: {name} {top}, but there are only {n} distinct "
                            f"{name}s; expected ids numbered 1..N (renumbered by first appearance, as CoLLM does)")
    return dict(name="ml1m", domain="movie", user=user, item=item, label=label, timestamp=timestamp,
                split=np.array(splits), titles=[""] + [titles.get(i, "") for i in range(1, max(titles) + 1)],
                source=inter_path)


def _take(rows, index):
    """Selects (mask) or reorders (indices) every column of a dict of (N,) arrays."""
    return {k: v[index] for k, v in rows.items()}


def renumber(raw):
    """Ids 1..N in order of first appearance.  (N,) -> (N,) int64"""
    _, first, code = np.unique(raw, return_index=True, return_inverse=True)
    return (np.argsort(np.argsort(first)) + 1)[code]  # each distinct id's rank by first appearance, from 1


def from_ratings(name, domain, ratings, titles_raw, split, source, first_review_only=False, max_id=None):
    """CoLLM's recipe on (raw user, raw item, rating, timestamp, line) in file order -> make_dataset's
    arguments, in train, valid, test blocks. Ratings of untitled items are dropped, as CoLLM's inner
    merge drops them; the merge groups rows by item (by first appearance), the order that ties keep."""
    if not any(item in titles_raw for _, item, *_ in ratings):  # no ratings, or none of a titled item
        raise DataError(f"{source}: no ratings of items with a title; expected them in the metadata / movies file")
    users, items, rating, timestamp, line = zip(*ratings)
    # Raw ids as their rank among the distinct ids, which sort as the ids do (numbers or strings): a string column
    # would take its longest id's width in every row (one 200-character id, 800 bytes a row).
    user_ids, item_ids = sorted(set(users)), sorted(set(items))
    user_raw, item_raw = (np.fromiter(map({v: k for k, v in enumerate(ids)}.__getitem__, col), np.int64, len(col))
                          for ids, col in ((user_ids, users), (item_ids, items)))
    rating, timestamp, line = np.array(rating), np.array(timestamp), np.array(line)
    if (bad := np.flatnonzero(~((rating >= 1) & (rating <= 5)))).size:  # NaN too
        raise DataError(f"{source}:{line[bad[0]]}: rating {float(rating[bad[0]]):g} is outside 1..5 stars")
    rows = dict(user=user_raw, item=item_raw, label=(rating >= 4).astype(np.int64), timestamp=timestamp,
                split=np.full(len(rating), "", dtype=object))
    titled, notes = np.array([i in titles_raw for i in items], dtype=bool), []
    if not titled.all():  # stderr below: stdout may be --stats' JSON
        notes.append(f"{source}: dropped {(~titled).sum()} ratings of {len(set(item_raw[~titled].tolist()))} "
                     "items without a title, as CoLLM's merge with the titles does")
    rows = _take(rows, titled)
    rows = _take(rows, np.argsort(renumber(rows["item"]), kind="stable"))   # the merge's order
    if split == "months":  # calendar months in UTC, 0 = the first month in the data
        month = rows["timestamp"].astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)
        for s, window in zip(SPLITS, (range(14, 24), range(24, 29), range(29, 34))):
            rows["split"][np.isin(month - month.min(), list(window))] = s
        rows = _take(rows, rows["split"] != "")

    # Stable sort by (user, timestamp); raw user ids sort as numbers (GroupLens) or strings.
    rows = _take(rows, np.lexsort((rows["timestamp"], np.unique(rows["user"], return_inverse=True)[1])))
    pairs = np.stack([np.unique(rows[k], return_inverse=True)[1] for k in ("user", "item")], 1)
    first = np.unique(pairs, axis=0, return_index=True)[1]
    repeated = len(rows["user"]) - len(first)
    if repeated and first_review_only:  # a repeated review is no new event (and its target is in its history)
        rows = _take(rows, np.sort(first))
        notes.append(f"{source}: dropped {repeated} repeated (user, item) reviews, keeping each pair's first")
    elif repeated:
        notes.append(f"{source}: kept {repeated} repeated (user, item) ratings (re-ratings); each later one "
                     "has its item in its own history")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

    rows["raw_item"] = rows["item"]
    rows["user"], rows["item"] = renumber(rows["user"]), renumber(rows["item"])
    if max_id is not None:
        rows = _take(rows, (rows["user"] <= max_id) & (rows["item"] <= max_id))
        # close the gaps; the first-appearance order of the survivors is unchanged
        rows["user"], rows["item"] = renumber(rows["user"]), renumber(rows["item"])
    if split == "ratio":  # the paper's 8:1:1 by time over all rows (stable on ties)
        order = np.argsort(rows["timestamp"], kind="stable")
        n_train, n_valid = round(len(order) * 0.8), round(len(order) * 0.1)
        rows["split"][order] = ["train"] * n_train + ["valid"] * n_valid + ["test"] * (len(order) - n_train - n_valid)
    rows = _take(rows, np.concatenate([np.flatnonzero(rows["split"] == s) for s in SPLITS]))
    at = np.unique(rows["item"], return_index=True)[1]  # a row of each item id, 1..N in turn
    titles = [""] + [titles_raw[item_ids[k]] for k in rows.pop("raw_item")[at].tolist()]
    return dict(rows, split=rows["split"].astype(str), name=name, domain=domain, titles=titles, source=source,
                notes=notes)


def load_movielens(data_dir, split="months"):
    """Raw GroupLens ml-1m/ratings.dat (UserID::MovieID::Rating::Timestamp) + movies.dat."""
    ratings_path = os.path.join(data_dir, "ml-1m", "ratings.dat")
    what = f"GroupLens' ml-1m/ in {data_dir}: unzip https://files.grouplens.org/datasets/movielens/ml-1m.zip there"
    path = os.path.join(data_dir, "ml-1m", "movies.dat")  # GroupLens' is latin-1; one saved again, UTF-8
    movies = read_table(path, ["MovieID", "Title", "Genres"], what, "::", False, ["MovieID"],
                        utf8_or_latin1(path, what) if os.path.lexists(path) else "utf-8", dict(Title=TITLE), 1)
    titles, title_line = {}, {}
    for n, (mid, title, _genres) in movies:
        _once(title_line, mid, n, path, f"MovieID {mid} repeats", "each movie")
        titles[mid] = title
    names, parse = ["UserID", "MovieID", "Rating", "Timestamp"], dict(Rating=RATING, Timestamp=TIME)
    rows = read_table(ratings_path, names, what, "::", False, names[:2], "latin-1", parse)
    ratings = [(*fields, n) for n, fields in rows]
    return from_ratings("movielens", "movie", ratings, titles, split, ratings_path)


def load_amazon(data_dir, split="ratio", reviews=None, meta=None):
    """2018 Amazon Review Data (JSON lines, plain or .gz): reviews with reviewerID, asin, overall and
    unixReviewTime; metadata with asin and title, a later line winning (CoLLM's drop_duplicates(keep=
    'last')). Month windows from Amazon Book's first month (1996) hold no rows, so split="ratio"."""
    reviews = reviews or os.path.join(data_dir, "amazon-book", "Books_5.json.gz")
    meta = meta or os.path.join(data_dir, "amazon-book", "meta_Books.json.gz")
    what = ("Amazon Review Data (2018), https://nijianmo.github.io/amazon/index.html: the 5-core reviews "
            "(Books_5.json.gz) and the metadata (meta_Books.json.gz); or pass --reviews FILE --meta FILE")
    titles = {}  # an untitled item (no title, null or blank) is left out, and so are its ratings
    for n, obj in json_lines(meta, what):
        asin, title = _fields(meta, n, obj, asin=NAME, title=TEXT)
        if title and visible(title):
            titles[asin] = title.strip()
    fields = dict(reviewerID=NAME, asin=NAME, overall=NUMBER, unixReviewTime=JSON_TIME)
    ratings = [(*_fields(reviews, n, obj, **fields), n) for n, obj in json_lines(reviews, what)]
    domain = "book" if re.match(r"books[_.]", os.path.basename(reviews).lower()) else "item"  # (not Notebook_*)
    return from_ratings("amazon", domain, ratings, titles, split, reviews, first_review_only=True, max_id=AMAZON_MAX_ID)


FLAG = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
PREDS = {**{c: (integer, f"an integer {c} 1..{ID_MAX}") for c in ("user_id", "item_id")}, "label": LABEL,
         "score": (real, "a finite number as score"), "split": SPLIT,
         **{c: (lambda v: FLAG[v.lower()], f"{c} as 1/0, true/false or yes/no") for c in ("seen", "warm")}}


def read_preds(path):
    """{user, label, score [, split, seen, warm]} from a prediction TSV (eval.py --preds), all checked."""
    what = "a prediction TSV: user_id, item_id, label, score [, split, seen, warm], header first"
    header = next(_lines(path, what), (1, ""))[1].split("\t")
    if twice := [c for c, k in Counter(header).items() if k > 1]:
        raise DataError(f"{path}:1: column {twice[0]!r:.60} repeats; expected each column once")
    need = ["user_id", "item_id", "label", "score"]
    if other := [c for c in header if c not in PREDS]:  # ("Split" was left out, and valid rows scored as test)
        raise DataError(f"{path}:1: column {other[0]!r:.60} is none of {', '.join(PREDS)}; name them so")
    if not set(need) <= set(header):
        raise DataError(f"{path}:1: missing column(s) {sorted(set(need) - set(header))}; expected at least {need}")
    rows, pair_line, u, i = [], {}, header.index("user_id"), header.index("item_id")
    for n, fields in read_table(path, header, what, parse=PREDS):
        _once(pair_line, (fields[u], fields[i]), n, path, f"user_id {fields[u]} and item_id {fields[i]} repeat",
              "each (user, item) pair")
        rows.append(fields)
    return {c.removesuffix("_id"): np.array([r[j] for r in rows]) for j, c in enumerate(header) if c in PREDS}
