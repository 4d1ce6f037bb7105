"""data.py: loaders on self-written fixtures and on the real files, histories, prompts, tensors,
the CLI and its error messages."""
import csv
import gzip
import json
import os
import re
from collections import Counter
import subprocess
import sys
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

import bpe
import data
import llama
import train
from conftest import fake_best
from data import DataError
from drivers import datainfo, report
from tools import limits, runs, sources


ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# The real ML-1M benchmark split

def test_ml1m_counts(ml1m):
    assert [len(ml1m.idx(s)) for s in data.SPLITS] == [33891, 10401, 7331]
    assert (ml1m.n_users, ml1m.n_items) == (838, 3255)
    assert len(np.unique(ml1m.user)) == 838 and len(np.unique(ml1m.item)) == 3255
    assert len(ml1m.titles) == 3256 and ml1m.titles[0] == ""
    assert ml1m.titles[1] == "Shawshank Redemption, The (1994)"
    assert ml1m.domain == "movie"
    for s, rate in zip(data.SPLITS, (0.537, 0.528, 0.545)):
        assert ml1m.label[ml1m.idx(s)].mean() == pytest.approx(rate, abs=5e-4)


def test_ml1m_seen_warm_and_uauc_users(ml1m):
    valid, test = ml1m.idx("valid"), ml1m.idx("test")
    assert ml1m.seen[valid].mean() == pytest.approx(0.635, abs=5e-4)
    assert ml1m.seen[test].mean() == pytest.approx(0.566, abs=5e-4)
    assert ml1m.seen[ml1m.idx("train")].all()
    assert not (ml1m.warm & ~ml1m.seen).any()          # the paper's warm is stricter
    # the paper's rule, recounted: user and item each with more than 3 train rows
    train = ml1m.idx("train")
    n_user, n_item = Counter(ml1m.user[train].tolist()), Counter(ml1m.item[train].tolist())
    warm = [n_user[u] > 3 and n_item[i] > 3 for u, i in zip(ml1m.user.tolist(), ml1m.item.tolist())]
    assert ml1m.warm.tolist() == warm and 0 < ml1m.warm[test].mean() < 1
    # users with both classes, counted here without data.py's helper
    def both(rows):
        return sum(len(set(ml1m.label[rows][ml1m.user[rows] == u])) == 2
                   for u in np.unique(ml1m.user[rows]))
    assert both(test) == 224
    assert both(valid) == 282


def test_ml1m_time_order(ml1m):
    t = ml1m.timestamp
    assert t[ml1m.idx("train")].max() < t[ml1m.idx("valid")].min()
    assert t[ml1m.idx("valid")].max() < t[ml1m.idx("test")].min()


def test_ml1m_loads_fast(data_dir):
    start = time.perf_counter()
    data.load("ml1m", data_dir)
    assert time.perf_counter() - start < 10      # about 0.5 s on one core


def test_history_by_hand(ml1m):
    """Rows copied out of interactions.tsv; expected histories worked out by hand."""
    # user 274: a disliked train row, then four test rows with the same timestamp (file order
    # decides), then one more.  user 683: two dislikes do not enter the history.
    expected = {
        14104: [],                     # 274  2146 0 1008687727 train
        47051: [],                     # 274   606 1 1033878378 test
        47052: [606],                  # 274   349 1 1033878378 test
        47053: [606, 349],             # 274   370 1 1033878378 test
        47054: [606, 349, 370],        # 274   534 1 1033878378 test
        47055: [606, 349, 370, 534],   # 274   608 1 1033878412 test
        28813: [],                     # 683   321 0 train
        28814: [],                     # 683   191 1 train
        28815: [191],                  # 683    81 1 train
        28816: [191, 81],              # 683   843 0 train
        42270: [191, 81],              # 683  3105 0 valid
        50139: [191, 81],              # 683  1292 0 test
        0: [], 1: [1],                 # user 1 liked items 1 then 2
    }
    for row, hist in expected.items():
        assert ml1m.history[row] == hist, row


def test_history_recomputed_from_raw_tsv(ml1m, data_dir):
    """Independent recomputation for a few users straight from the TSV with Python's sort."""
    with open(data_dir / "ml1m" / "interactions.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for user in ("4", "211", "274", "683"):
        mine = [(int(r["timestamp"]), n, int(r["item_id"]), r["label"])
                for n, r in enumerate(rows) if r["user_id"] == user]
        mine.sort(key=lambda x: (x[0], x[1]))            # time, then file order
        liked = []
        for _, n, item, label in mine:
            assert ml1m.history[n] == liked, (user, n)
            if label == "1":
                liked = liked + [item]


def test_history_invariants(ml1m):
    rng = np.random.default_rng(0)
    for r in rng.choice(len(ml1m), 300, replace=False):
        u, t = ml1m.user[r], ml1m.timestamp[r]
        earlier = (ml1m.user == u) & (ml1m.timestamp <= t) & (ml1m.label == 1)
        assert set(ml1m.history[r]) <= set(ml1m.item[earlier].tolist())
    assert max(len(h) for h in ml1m.history) > 25     # full, not truncated


# ---------------------------------------------------------------------------------------------
# Prompts

def test_prompt_one_real_row(ml1m):
    row = 44292          # first test row: user 4, item 96, with more than 10 liked titles
    assert (ml1m.user[row], ml1m.item[row]) == (4, 96)
    history = ('"When We Were Kings (1996)", "Celluloid Closet, The (1995)", '
               '"War Room, The (1993)", "U2: Rattle and Hum (1988)", '
               '"Madonna: Truth or Dare (1991)", "Breaking Away (1979)", "Tombstone (1993)", '
               '"High Noon (1952)", "Space Cowboys (2000)", "Better Than Chocolate (1999)"')
    assert data.prompt(ml1m, row, True, "collm") == (
        '#Question: A user has given high ratings to the following movies: ' + history + '. '
        "Additionally, we have information about the user's preferences encoded in the feature "
        '<UserID>. Using all available information, make a prediction about whether the user '
        'would enjoy the movie titled "Deconstructing Harry (1997)" with the feature '
        '<TargetItemID>? Answer with "Yes" or "No". \\n#Answer:')
    assert data.prompt(ml1m, row, False, "collm") == (
        '#Question: A user has given high ratings to the following movies: ' + history + '. '
        'Leverage the information to predict whether the user would enjoy the movie titled '
        '"Deconstructing Harry (1997)"? Answer with "Yes" or "No". \\n#Answer:')
    assert "\n" not in data.prompt(ml1m, row, False)           # a literal backslash-n
    # the paper's wording (Section 3.1.3.1), the default
    assert data.prompt(ml1m, row, True) == (
        '#Question: A user has given high ratings to the following movies: ' + history + '. '
        'Additionally, user preferences are encoded in the feature <UserID>. Using all available '
        'information, predict whether the user would enjoy the movie titled "Deconstructing Harry (1997)" '
        'with the feature <TargetItemID>? Answer with "Yes" or "No". \\n#Answer:')
    assert data.prompt(ml1m, row, False) == (
        '#Question: A user has given high ratings to the following movies: ' + history + '. '
        'Using all available information, predict whether the user would enjoy the movie titled '
        '"Deconstructing Harry (1997)"? Answer with "Yes" or "No". \\n#Answer:')
    with pytest.raises(data.DataError, match="unknown prompt template 'tallrec'"):
        data.prompt(ml1m, row, False, "tallrec")


def test_prompt_empty_history(ml1m):
    assert data.prompt(ml1m, 0, False, "collm") == (
        '#Question: A user has given high ratings to the following movies: unkow. Leverage the '
        'information to predict whether the user would enjoy the movie titled '
        '"Shawshank Redemption, The (1994)"? Answer with "Yes" or "No". \\n#Answer:')


# ---------------------------------------------------------------------------------------------
# Raw GroupLens files

def _ts(year, month, day=15):
    return int(datetime(year, month, day, 12, tzinfo=timezone.utc).timestamp())


def _write_grouplens(root, ratings):
    d = root / "ml-1m"
    d.mkdir(parents=True)
    movies = ["10::Toy Story (1995)::Animation", "20::Café au lait (1993)::Comedy",
              "30::Heat (1995)::Action", "40::Alien³ (1992)::Horror"]
    (d / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))
    (d / "ratings.dat").write_text("\n".join("::".join(map(str, r)) for r in ratings) + "\n")


# first month 2000-04 = month 0; month 14 = 2001-06, 24 = 2002-04, 29 = 2002-09, 34 = 2003-02
GROUPLENS = [
    (1, 10, 5, _ts(2000, 4)),        # month 0: dropped, but it anchors month 0
    (7, 30, 5, _ts(2001, 7)),        # train
    (7, 20, 4, _ts(2001, 6)),        # train, earlier than the row above
    (3, 40, 4, _ts(2001, 8)),        # train
    (3, 30, 5, _ts(2001, 8)),        # train, same second as the row above
    (7, 40, 3, _ts(2002, 5)),        # valid
    (3, 20, 5, _ts(2002, 6)),        # valid
    (7, 30, 1, _ts(2002, 10)),       # test
    (3, 10, 4, _ts(2003, 1)),        # test (month 33)
    (3, 30, 5, _ts(2003, 2)),        # month 34: dropped
]


def test_movielens_months(tmp_path):
    _write_grouplens(tmp_path, GROUPLENS)
    ds = data.load("movielens", tmp_path)
    assert ds.domain == "movie"
    assert [len(ds.idx(s)) for s in data.SPLITS] == [4, 2, 2]
    # Users sorted by raw id (3 before 7); items renumbered by first appearance in that order.
    # User 3's two rows at the same second follow CoLLM's merge order, not file order: movie 30
    # appears in ratings.dat before movie 40, so 30 comes first (item 1) and is in 40's history.
    assert ds.titles == ["", "Heat (1995)", "Alien³ (1992)", "Café au lait (1993)",
                         "Toy Story (1995)"]
    assert (ds.n_users, ds.n_items) == (2, 4)
    rows = sorted(zip(ds.user.tolist(), ds.timestamp.tolist(), ds.item.tolist(),
                      ds.label.tolist(), ds.split.tolist(), ds.history))
    assert [(u, i, y, s, h) for u, _, i, y, s, h in rows] == [
        (1, 1, 1, "train", []), (1, 2, 1, "train", [1]),
        (1, 3, 1, "valid", [1, 2]), (1, 4, 1, "test", [1, 2, 3]),
        (2, 3, 1, "train", []), (2, 1, 1, "train", [3]),
        (2, 2, 0, "valid", [3, 1]), (2, 1, 0, "test", [3, 1]),
    ]
    assert ds.seen.sum() == 7                       # Toy Story (item 4) is only in test
    assert not ds.warm.any()                        # nobody has 3 train rows


def test_warm_means_more_than_3_train_rows_on_both_sides(tmp_path):
    """Known answers at the boundary: a user or an item with exactly 3 train rows is cold."""
    items = "item_id\ttitle\n" + "".join(f"{i}\tM{i} (2000)\n" for i in range(1, 8))
    train = [(u, i) for u in (1, 2, 3, 4, 5) for i in (1, 2)]   # items 1, 2: 5 train rows each
    train += [(1, 3), (2, 3), (5, 3), (2, 4)]                    # item 3: exactly 3
    train += [(1, 5), (3, 5), (4, 5)]                            # item 5: exactly 3; user 3: exactly 3
    train += [(u, 6) for u in (1, 2, 4, 5)] + [(u, 7) for u in (2, 4, 5, 6)]  # items 6, 7: 4 each
    lines = [f"{u}\t{i}\t1\t{t}\ttrain" for t, (u, i) in enumerate(train)]
    want = {(1, 7): True, (2, 5): False, (3, 6): False, (3, 7): False, (6, 1): False}
    lines += ["1\t4\t0\t99\tvalid"] + [f"{u}\t{i}\t1\t{100 + k}\ttest" for k, (u, i) in enumerate(want)]
    _ml1m_dir(tmp_path, lines, items)
    ds = data.load("ml1m", tmp_path)
    n_user, n_item = Counter(u for u, _ in train), Counter(i for _, i in train)
    assert (n_user[1], n_user[3], n_item[5], n_item[6], n_item[7]) == (5, 3, 3, 4, 4)
    got = {(int(ds.user[r]), int(ds.item[r])): bool(ds.warm[r]) for r in ds.idx("test")}
    assert got == want == {(u, i): n_user[u] > 3 and n_item[i] > 3 for u, i in want}


def test_movielens_ratio(tmp_path):
    ratings = [(u, 10 * (1 + k % 4), 1 + (u * k) % 5, 1_000_000_000 + 1000 * (u * 7 + k))
               for u in range(1, 5) for k in range(5)]
    _write_grouplens(tmp_path, ratings)
    ds = data.load("movielens", tmp_path, split="ratio")
    assert [len(ds.idx(s)) for s in data.SPLITS] == [16, 2, 2]
    t = ds.timestamp
    assert t[ds.idx("train")].max() <= t[ds.idx("valid")].min()
    assert t[ds.idx("valid")].max() <= t[ds.idx("test")].min()
    assert ds.label.sum() == sum(r[2] >= 4 for r in ratings)


# ---------------------------------------------------------------------------------------------
# Amazon 2018 format

REVIEWS = [
    {"reviewerID": "B", "asin": "i1", "overall": 5.0, "unixReviewTime": 300},
    {"reviewerID": "A", "asin": "i2", "overall": 3.0, "unixReviewTime": 200},
    {"reviewerID": "A", "asin": "i1", "overall": 4.0, "unixReviewTime": 100},
    {"reviewerID": "A", "asin": "i1", "overall": 1.0, "unixReviewTime": 400},   # duplicate pair
    {"reviewerID": "B", "asin": "i9", "overall": 5.0, "unixReviewTime": 350},   # no title
    {"reviewerID": "C", "asin": "i3", "overall": 5.0, "unixReviewTime": 500},
    {"reviewerID": "B", "asin": "i3", "overall": 2.0, "unixReviewTime": 600},
    {"reviewerID": "C", "asin": "i2", "overall": 4.0, "unixReviewTime": 700},
    {"reviewerID": "A", "asin": "i3", "overall": 5.0, "unixReviewTime": 800},
    {"reviewerID": "B", "asin": "i2", "overall": 5.0, "unixReviewTime": 900},
    {"reviewerID": "C", "asin": "i1", "overall": 5.0, "unixReviewTime": 1000},
]
META = [{"asin": "i1", "title": "Old Title"}, {"asin": "i2", "title": "Dune"},
        {"asin": "i3", "title": "Emma"}, {"asin": "i1", "title": "Les Misérables"},
        {"asin": "i9"}]


def _write_jsonl(path, objs):
    text = "".join(json.dumps(o) + "\n" for o in objs)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_amazon_fixture(tmp_path, suffix):
    reviews, meta = tmp_path / f"Books_5.json{suffix}", tmp_path / f"meta_Books.json{suffix}"
    _write_jsonl(reviews, REVIEWS)
    _write_jsonl(meta, META)
    ds = data.load("amazon", tmp_path, split="ratio", reviews=str(reviews), meta=str(meta))
    assert ds.domain == "book"                                      # the Books files: "books", "book"
    # 11 reviews - 1 repeated (A, i1) - 1 without a title = 9 rows, 8:1:1 by time
    assert len(ds) == 9 and [len(ds.idx(s)) for s in data.SPLITS] == [7, 1, 1]
    # users A, B, C (string order); items by first appearance: i1 (A@100), i2, i3
    assert ds.titles == ["", "Les Misérables", "Dune", "Emma"]
    a = ds.user == 1
    assert sorted(zip(ds.timestamp[a].tolist(), ds.item[a].tolist(), ds.label[a].tolist())) == [
        (100, 1, 1), (200, 2, 0), (800, 3, 1)]                    # first (A, i1) review kept
    last_c = int(np.flatnonzero(ds.user == 3)[-1])
    assert ds.history[last_c] == [3, 2]
    text = data.prompt(ds, last_c, True)
    assert text.startswith('#Question: A user has given high ratings to the following books: '
                           '"Emma", "Dune". Additionally')
    assert 'enjoy the book titled "Les Misérables" with the feature <TargetItemID>?' in text


def test_amazon_max_id(tmp_path, monkeypatch):
    # 6 users x 6 items, every pair reviewed once; keeping ids <= 4 leaves a 4 x 4 block
    reviews = [{"reviewerID": f"u{u}", "asin": f"i{i}", "overall": 5.0 if (u + i) % 3 else 2.0,
                "unixReviewTime": 1000 + 10 * (6 * u + i)} for u in range(6) for i in range(6)]
    _write_jsonl(tmp_path / "r.json", reviews)
    _write_jsonl(tmp_path / "m.json", [{"asin": f"i{i}", "title": f"Book {i}"} for i in range(6)])
    monkeypatch.setattr(sources, "AMAZON_MAX_ID", 4)
    ds = data.load("amazon", tmp_path, split="ratio", reviews=str(tmp_path / "r.json"),
                   meta=str(tmp_path / "m.json"))
    assert len(ds) == 16 and (ds.n_users, ds.n_items) == (4, 4)
    assert ds.titles == ["", "Book 0", "Book 1", "Book 2", "Book 3"]


@pytest.mark.parametrize("edit,words", [
    (lambda r, m: r[0].update(reviewerID="A\u0000"), "reviewerID"),  # numpy's str arrays dropped the NUL: A's twin
    (lambda r, m: r[0].update(asin="U" * 10 ** 5), "asin"),  # a fixed-width array of 10^5 characters a row
    (lambda r, m: m[0].update(title="Book \ud800"), "lone surrogate"),  # no character; a later write failed
])
def test_amazon_ids_are_short_printable_strings_and_text_is_unicode(tmp_path, edit, words):
    reviews, meta = [dict(r) for r in REVIEWS], [dict(m) for m in META]
    edit(reviews, meta)
    _write_jsonl(tmp_path / "r.json", reviews)
    _write_jsonl(tmp_path / "m.json", meta)
    with pytest.raises(DataError, match=words):
        data.load("amazon", tmp_path, split="ratio", reviews=str(tmp_path / "r.json"), meta=str(tmp_path / "m.json"))


def test_json_surrogate_pairs_load_and_lone_ones_are_refused():
    assert sources.loads('["\\ud83d\\ude00", "\\u00e9"]') == ["\U0001F600", "é"]
    for text in ('"\\ud800"', '{"a": ["x\\udc00"]}', '"\\ude00\\ud83d"'):
        with pytest.raises(ValueError, match="lone surrogate"):
            sources.loads(text)


def test_amazon_giftcards(data_dir):
    d = data_dir / "amazon-giftcards"
    reviews, meta = str(d / "Gift_Cards_5.json.gz"), str(d / "meta_Gift_Cards.json.gz")
    with gzip.open(reviews, "rt") as f:
        pairs = {(r["reviewerID"], r["asin"]) for r in map(json.loads, f)}
    ds = data.load("amazon", data_dir, split="ratio", reviews=reviews, meta=meta)
    assert len(ds) == len(pairs) == 2972 - 7
    assert (ds.n_users, ds.n_items) == (458, 148)
    assert all(ds.titles[1:]) and "Fandango Gift Card" in ds.titles
    assert (ds.label == 0).sum() == 66 - 1     # one dislike (rating 3) was a repeated pair
    months = data.load("amazon", data_dir, reviews=reviews, meta=meta)   # CoLLM month windows
    assert all(len(months.idx(s)) > 0 for s in data.SPLITS)


# ---------------------------------------------------------------------------------------------
# Tensors

class CharTokenizer:
    """One id per character (ord + 3); enough to check positions and padding."""
    bos_id, eos_id, unk_id, vocab_size = 1, 2, 0, 70000

    def encode(self, text, bos=True, special=True):
        return ([self.bos_id] if bos else []) + [ord(c) + 3 for c in text]

    def decode(self, ids):
        return "".join(chr(i - 3) for i in ids if i > 2)


def test_pad_left_and_cf_batch(ml1m):
    out = data.pad_left([[], [5], list(range(1, 31))], maxlen=4)
    assert out.tolist() == [[0, 0, 0, 0], [0, 0, 0, 5], [27, 28, 29, 30]]
    assert out.dtype == torch.long
    rows = ml1m.idx("test")[:8]
    b = data.cf_batch(ml1m, rows, maxlen=25)
    assert b["user"].shape == b["item"].shape == b["label"].shape == (8,)
    assert b["hist"].shape == (8, 25) and b["label"].dtype == torch.float32
    assert b["hist"][0, -3:].tolist() == ml1m.history[rows[0]][-3:]


@pytest.mark.parametrize("k", [1, 3])
def test_encode_and_collate(ml1m, k):
    tok = CharTokenizer()
    rows = [0, 1, 44292]
    prompts = data.encode_prompts(ml1m, rows, tok, collab=True, proj_token_num=k)
    for r, p in zip(rows, prompts):
        assert p.ids[0] == tok.bos_id and p.ids.count(tok.bos_id) == 1
        assert len(p.user_pos) == len(p.item_pos) == k
        assert all(p.ids[j] == tok.unk_id for j in p.user_pos + p.item_pos)
        assert p.ids.count(tok.unk_id) == 2 * k
        text = data.prompt(ml1m, r, True)
        assert tok.decode(p.ids) == text.replace("<UserID>", "").replace("<TargetItemID>", "")
    batch = data.prompt_batch(ml1m, dict(zip(rows, prompts)), rows).inputs
    T = max(len(p.ids) for p in prompts)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, T)
    assert batch["user_pos"].shape == batch["item_pos"].shape == (3, k)
    assert batch["attention_mask"].sum(1).tolist() == [len(p.ids) for p in prompts]
    assert batch["attention_mask"][:, -1].all()                     # left padded
    for b, p in enumerate(prompts):
        assert batch["input_ids"][b, T - len(p.ids):].tolist() == p.ids
        for pos in (batch["user_pos"][b], batch["item_pos"][b]):
            assert (batch["input_ids"][b, pos] == tok.unk_id).all()
            assert batch["attention_mask"][b, pos].all()
    text_only = data.encode_prompts(ml1m, rows, tok, collab=False)
    assert all(p.user_pos == [] and p.item_pos == [] for p in text_only)
    assert set(data.prompt_batch(ml1m, dict(zip(rows, text_only)), rows).inputs) == {"input_ids", "attention_mask"}


def test_bucket_batches():
    lengths = np.random.default_rng(1).integers(100, 300, size=1003)
    for shuffle in (False, True):
        batches = data.bucket_batches(lengths, 16, shuffle=shuffle, seed=3)
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(1003))                           # each index exactly once
        assert sorted(map(len, batches)) == [1003 % 16] + [16] * (1003 // 16)
        spread = np.mean([np.ptp(lengths[b]) for b in batches])
        assert spread < 10                                         # random batches: ~180
    assert data.bucket_batches(lengths, 16, True, 3) == data.bucket_batches(lengths, 16, True, 3)
    assert data.bucket_batches(lengths, 16, True, 3) != data.bucket_batches(lengths, 16, True, 4)


def test_real_tokenizer_prompt_lengths(ml1m, tokenizer_path):
    tok = llama.load_tokenizer(str(tokenizer_path))
    rows = np.arange(0, len(ml1m), 10)                     # every 10th row keeps this quick
    for template, low, high in (("collm", 185, 205), ("paper", 175, 190)):  # full split: 192.7, 183.7
        prompts = data.encode_prompts(ml1m, rows, tok, True, 1, template)
        n = np.array([len(p.ids) for p in prompts])
        assert low < n.mean() < high and n.max() <= 300    # full split's longest: 288, 279
    p = prompts[0]
    assert p.ids[0] == tok.bos_id and p.ids[p.user_pos[0]] == tok.unk_id
    assert tok.encode("Yes", bos=False) == [3869] and tok.encode("No", bos=False) == [1939]


# ---------------------------------------------------------------------------------------------
# CLI and bad input

def test_cli_stats_and_export(data_dir, tmp_path, capsys):
    out = tmp_path / "ml1m.jsonl"
    assert datainfo.main(["ml1m", "--data-dir", str(data_dir), "--stats", "--export", str(out)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows"] == {"train": 33891, "valid": 10401, "test": 7331}
    assert (stats["users"], stats["items"]) == (838, 3255)
    assert stats["seen"]["valid"] == 0.635 and stats["seen"]["test"] == 0.566
    assert stats["uauc_users"]["test"] == 224 and stats["uauc_users"]["valid"] == 282
    with open(out, encoding="utf-8") as f:
        lines = f.readlines()
    assert len(lines) == 51623
    row = json.loads(lines[44292])
    assert set(row) == {"user_id", "item_id", "label", "timestamp", "split", "history", "seen",
                        "warm", "prompt_text", "prompt_collab"}
    assert (row["user_id"], row["item_id"], row["split"]) == (4, 96, "test")
    assert len(row["history"]) > 10 and "<UserID>" in row["prompt_collab"]


def _ml1m_dir(root, lines, items="item_id\ttitle\n1\tA (2000)\n2\tB (2001)\n"):
    d = root / "ml1m"
    d.mkdir(parents=True)
    (d / "items.tsv").write_text(items)
    (d / "interactions.tsv").write_text(
        "user_id\titem_id\tlabel\ttimestamp\tsplit\n" + "".join(l + "\n" for l in lines))
    return str(d / "interactions.tsv")


GOOD = ["1\t1\t1\t10\ttrain", "1\t2\t0\t20\tvalid", "1\t1\t1\t30\ttest"]


@pytest.mark.parametrize("bad_line, line_no, expect", [
    ("1\t2\t2\t15\ttrain", 3, "expected label 0 or 1, got '2'"),
    ("1\t2\t1\t15\tdev", 3, "expected split train, valid or test, got 'dev'"),
    ("1\t2\t1\t15", 3, "expected 5 tab-separated fields"),
    ("1\tx\t1\t15\ttrain", 3, "expected an integer item_id 1..2147483647, got 'x'"),
    ("1\t9\t1\t15\ttrain", 3, "item_id 9 has no title"),
])
def test_bad_tsv_lines(tmp_path, capsys, bad_line, line_no, expect):
    path = _ml1m_dir(tmp_path, GOOD[:1] + [bad_line] + GOOD[1:])
    assert datainfo.main(["ml1m", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}:{line_no}: ")
    assert expect in err


def test_empty_split(tmp_path, capsys):
    path = _ml1m_dir(tmp_path, GOOD[:2])
    assert datainfo.main(["ml1m", "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: {path}: split 'test' is empty; expected rows in "
                                       "each of train, valid, test\n")


def test_missing_datasets_say_where_to_get_them(tmp_path, capsys):
    for name, hint in (("ml1m", "ml-1m.zip"), ("movielens", "files.grouplens.org/datasets/"
                                                            "movielens/ml-1m.zip"),
                       ("amazon", "Amazon Review Data (2018)")):
        assert datainfo.main([name, "--data-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and hint in err
        assert str(tmp_path) in err


def test_bad_raw_lines(tmp_path):
    _write_grouplens(tmp_path, [(1, 10, 5, 100), (1, 20, "five", 200)])
    with pytest.raises(DataError, match=r"ratings.dat:2: expected an integer Rating, got 'five'"):
        data.load("movielens", tmp_path)
    reviews, meta = tmp_path / "r.json", tmp_path / "m.json"
    _write_jsonl(meta, META)
    reviews.write_text(json.dumps(REVIEWS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"r.json:2: expected one JSON object per line"):
        data.load("amazon", tmp_path, reviews=str(reviews), meta=str(meta))
    reviews.write_text(json.dumps({"reviewerID": "A", "asin": "i1"}) + "\n")
    with pytest.raises(DataError, match=r"r.json:1: expected overall to be a number; it is missing"):
        data.load("amazon", tmp_path, reviews=str(reviews), meta=str(meta))
    with pytest.raises(DataError, match="ml1m is CoLLM's fixed month split"):
        data.load("ml1m", tmp_path, split="ratio")


def test_cli_error_exit_code_no_traceback(tmp_path):
    path = _ml1m_dir(tmp_path, GOOD[:1] + ["1\t2\t7\t15\ttrain"] + GOOD[1:])
    res = subprocess.run([sys.executable, "-m", "drivers.datainfo", "ml1m", "--stats",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == f"error: {path}:3: expected label 0 or 1, got '7'\n"
    assert "Traceback" not in res.stderr


def test_valid_rows_is_a_fixed_subset_of_valid_only(ml1m):
    """--valid-rows N: every train and test row kept, N of the valid rows, the same N for any
    --seed (the subset is seeded apart); with --limit, N of the limited valid rows."""
    cut = data.data_slice(ml1m, valid_rows=500)
    assert [len(cut.idx(s)) for s in ("train", "valid", "test")] == [len(ml1m.idx("train")), 500, len(ml1m.idx("test"))]
    keys = lambda d, s: set(zip(d.user[d.idx(s)].tolist(), d.item[d.idx(s)].tolist(), d.timestamp[d.idx(s)].tolist()))
    assert keys(cut, "valid") < keys(ml1m, "valid") and keys(cut, "test") == keys(ml1m, "test")
    for seed in (0, 7):
        again = train.load_data(train.parse_args(["--stage", "text", "--valid-rows", "500", "--seed", str(seed)]), ml1m)
        assert keys(again, "valid") == keys(cut, "valid")
    both = data.data_slice(ml1m, 300, valid_rows=100)
    assert [len(both.idx(s)) for s in ("train", "valid", "test")] == [300, 100, 300]


# ---------------------------------------------------------------------------------------------
# strict readers: one integer parser (ASCII digits, in range), one float parser, no blank titles,
# JSON fields of the JSON type their meaning needs, unique prediction pairs, every error names its file

BAD_INTS = ["1_0", " 1", "1 ", "1.0", "+1", "-1", "0", "01", "00", "1e3", "0x10", "１", "١٢", "99999999999999999999", ""]
PREDS_HEAD = "user_id\titem_id\tlabel\tscore\n"


@pytest.mark.parametrize("bad", BAD_INTS)
def test_an_id_is_ascii_digits_in_range_in_every_file(tmp_path, bad):
    ints = r"expected an integer {} 1\.\.2147483647, got "
    _ml1m_dir(tmp_path / "a", GOOD, f"item_id\ttitle\n1\tA (2000)\n{bad}\tB (2001)\n")
    items = re.escape(str(tmp_path / "a" / "ml1m" / "items.tsv"))
    with pytest.raises(DataError, match=items + ":3: " + ints.format("item_id")):
        data.load("ml1m", tmp_path / "a")
    inter = _ml1m_dir(tmp_path / "b", GOOD[:2] + [f"{bad}\t1\t1\t30\ttest"])
    with pytest.raises(DataError, match=re.escape(inter) + ":4: " + ints.format("user_id")):
        data.load("ml1m", tmp_path / "b")
    _write_grouplens(tmp_path / "c", [(1, 10, 5, 100), (1, bad, 5, 200)])
    with pytest.raises(DataError, match="ratings.dat:2: " + ints.format("MovieID")):
        data.load("movielens", tmp_path / "c")
    (tmp_path / "p.tsv").write_text(PREDS_HEAD + f"1\t1\t1\t0.5\n1\t{bad}\t0\t0.5\n")
    with pytest.raises(DataError, match=r"p.tsv:3: " + ints.format("item_id")):
        sources.read_preds(str(tmp_path / "p.tsv"))


@pytest.mark.parametrize("bad", [b for b in BAD_INTS if b != "0"] + ["-5", "100000000000", "100000000000000000000"])
def test_a_timestamp_is_ascii_digits_before_the_year_5138(tmp_path, bad):
    inter = _ml1m_dir(tmp_path / "a", GOOD[:2] + [f"1\t1\t1\t{bad}\ttest"])
    with pytest.raises(DataError, match=re.escape(inter) + r":4: expected an integer timestamp 0\.\.99999999999 "):
        data.load("ml1m", tmp_path / "a")
    _write_grouplens(tmp_path / "b", [(1, 10, 5, 100), (1, 20, 5, bad)])
    with pytest.raises(DataError, match="ratings.dat:2: expected an integer timestamp 0"):
        data.load("movielens", tmp_path / "b")


def test_the_largest_timestamp_still_counts_months(tmp_path):
    _write_grouplens(tmp_path, GROUPLENS + [(5, 10, 5, sources.TIME_MAX)])  # month 37000 or so: dropped
    assert len(data.load("movielens", tmp_path)) == 8


@pytest.mark.parametrize("bad", ["1_0", " 0.5", "0.5 ", "nan", "-inf", "1e999", "0x1p0", "", ".", "1e", "½"])
def test_a_score_is_a_finite_decimal_literal(tmp_path, bad):
    path = tmp_path / "p.tsv"
    path.write_text(PREDS_HEAD + f"1\t1\t1\t-1.5e-3\n1\t2\t0\t.5\n2\t1\t1\t3.\n2\t2\t0\t{bad}\n")
    with pytest.raises(DataError, match=rf"p.tsv:5: expected a finite number as score, got {re.escape(repr(bad))}"):
        sources.read_preds(str(path))
    path.write_text(PREDS_HEAD + "1\t1\t1\t-1.5e-3\n1\t2\t0\t.5\n2\t1\t1\t3.\n2\t2\t0\t+4E+2\n")
    assert sources.read_preds(str(path))["score"].tolist() == [-0.0015, 0.5, 3.0, 400.0]


def test_a_prediction_pair_is_there_once(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text(PREDS_HEAD + "1\t1\t1\t0.9\n1\t2\t0\t0.1\n2\t1\t0\t0.3\n1\t1\t0\t0.3\n")
    with pytest.raises(DataError, match=r"p.tsv:5: user_id 1 and item_id 1 repeat line 2; expected each \(user, "):
        sources.read_preds(str(path))


@pytest.mark.parametrize("title", ["", " ", "  \xa0", "\x00", "\u200b\ufeff", "x" * 2001])  # nothing visible, or
# a title of a megabyte (each of its prompts would be 590,000 tokens, encoded before any length check)
def test_a_blank_title_is_an_error_on_its_line(tmp_path, title):
    _ml1m_dir(tmp_path / "a", GOOD, f"item_id\ttitle\n1\tA (2000)\n2\t{title}\n")
    with pytest.raises(DataError, match=r"items.tsv:3: expected a title that is not blank, of at most 2000 "):
        data.load("ml1m", tmp_path / "a")
    if not title.isascii() and "\xa0" not in title:
        return  # movies.dat is Latin-1
    _write_grouplens(tmp_path / "b", GROUPLENS)
    movies = tmp_path / "b" / "ml-1m" / "movies.dat"
    movies.write_text(movies.read_text(encoding="latin-1") + f"50::{title}::Drama\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"movies.dat:5: expected a title that is not blank, of at most 2000 "):
        data.load("movielens", tmp_path / "b")


@pytest.mark.parametrize("field, value, expected", [
    ("reviewerID", None, "either end; got null"), ("reviewerID", 7, "either end; got 7"),
    ("reviewerID", "", "a non-empty string"), ("reviewerID", " ", "a non-empty string"),
    ("reviewerID", "A ", 'no space at either end; got "A "'),  # ("A" is another user)
    ("reviewerID", ..., "either end; it is missing"), ("asin", None, "either end; got null"),
    ("asin", ["i1"], "a non-empty string"), ("overall", True, "a number; got true"),
    ("overall", "5.0", "a number"), ("overall", None, "a number"),
    ("unixReviewTime", 1e20, "an integer 0..99999999999"), ("unixReviewTime", 10**20, "an integer 0"),
    ("unixReviewTime", "300", "an integer 0"), ("unixReviewTime", 300.0, "an integer 0"),
    ("unixReviewTime", True, "an integer 0"), ("unixReviewTime", -1, "an integer 0"),
])
def test_a_review_field_has_the_json_type_its_meaning_needs(tmp_path, field, value, expected):
    """str(None) would be the user "None", merging every review without a reviewer into one user."""
    bad = {k: v for k, v in {**REVIEWS[1], field: value}.items() if v is not ...}
    _write_jsonl(tmp_path / "r.json", [REVIEWS[0], bad] + REVIEWS[2:])
    _write_jsonl(tmp_path / "m.json", META)
    with pytest.raises(DataError, match=rf"r.json:2: expected {field} to be .*{re.escape(expected)}"):
        data.load("amazon", tmp_path, reviews=str(tmp_path / "r.json"), meta=str(tmp_path / "m.json"))


def test_a_gz_that_decompresses_far_past_its_size_is_refused(tmp_path):
    """Valid review lines padded with a megabyte of spaces each: 80 MB from a 100 KB .gz. Each line is
    bounded (LINE_MAX) but their number was not: the rows would fill memory from a small file."""
    reviews = tmp_path / "r.json.gz"
    with gzip.open(reviews, "wt", encoding="utf-8") as f:
        for _ in range(80):
            f.write(json.dumps(REVIEWS[0]) + " " * (1 << 20) + "\n")
    _write_jsonl(tmp_path / "m.json", META)
    with pytest.raises(DataError, match=r"r.json.gz:[0-9]+: decompresses to over 100 times its size"):
        data.load("amazon", tmp_path, reviews=str(reviews), meta=str(tmp_path / "m.json"))


def test_a_movie_id_is_in_movies_dat_once(tmp_path):
    """items.tsv refuses a repeated item_id; movies.dat kept the last title of a repeated MovieID."""
    _write_grouplens(tmp_path, GROUPLENS)
    movies = tmp_path / "ml-1m" / "movies.dat"
    movies.write_text(movies.read_text(encoding="latin-1") + "30::Heat II (1996)::Action\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"movies.dat:5: MovieID 30 repeats line 3; expected each movie once"):
        data.load("movielens", tmp_path)


def test_metadata_fields_and_untitled_items(tmp_path, capsys):
    reviews, meta = tmp_path / "r.json", tmp_path / "m.json"
    _write_jsonl(reviews, REVIEWS)
    for line, words in (({"asin": None, "title": "X"}, "asin to be a non-empty string of at most 200 printable characters.*; got null"),
                        ({"asin": 3, "title": "X"}, "asin to be a non-empty string of at most 200 printable characters"),
                        ({"asin": " i4", "title": "X"}, "asin to be .* no space at either end; got \" i4\""),  # i4 too?
                        ({"asin": "i4", "title": 3}, "title to be a string of at most 2000 characters or null; got 3"),
                        ({"asin": "i4", "title": "x" * 2001}, "title to be a string of at most 2000 characters")):
        _write_jsonl(meta, META + [line])
        with pytest.raises(DataError, match=rf"m.json:6: expected {words}"):
            data.load("amazon", tmp_path, reviews=str(reviews), meta=str(meta))
    # i9 has no title, i3 a blank one, i2 a null one: their 7 ratings are dropped, as CoLLM's merge does, and said
    _write_jsonl(meta, [{"asin": "i1", "title": "Emma"}, {"asin": "i2", "title": None}, {"asin": "i3", "title": " \u200b"}])
    got = sources.load_amazon(tmp_path, "ratio", str(reviews), str(meta))
    assert len(got["user"]) == 3 and set(got["titles"]) == {"", "Emma"}
    assert got["notes"][0] == (f"{reviews}: dropped 7 ratings of 3 items without a title, as CoLLM's merge "
                               "with the titles does")
    assert "note: " + got["notes"][0] in capsys.readouterr().err


def test_a_broken_metrics_json_is_one_line_naming_it(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for text, why in (("", "Expecting value at line 1 column 1"), ('{"test": {"auc": 0.7,\n', "at line 2 column 1"),
                      ("[" * 100_000, "nested too deep"), ("[" + "1" * 5000 + "]", "4300 digits")):
        (run / "metrics.json").write_text(text)
        assert report.main(["--collect", str(run), "--into", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {run / 'metrics.json'}: expected a run's metrics (") and why in err, err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_read_json_refuses_what_is_not_json_naming_the_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(DataError, match=r"x.json: expected a thing in UTF-8 \(byte 0xff at offset 7\)"):
        sources.read_json(path, "a thing")
    path.write_text('{"a": [1, 2, 3]}')
    assert sources.read_json(path, "a thing") == {"a": [1, 2, 3]}
    with pytest.raises(DataError, match=r"x.json: expected a thing in at most 10 bytes, got 16"):
        sources.read_json(path, "a thing", max_bytes=10)
    with pytest.raises(DataError, match=r"y.json: expected a thing \(No such file or directory\)"):
        sources.read_json(tmp_path / "y.json", "a thing")
    (tmp_path / "r.json").write_text(json.dumps(REVIEWS[0]) + "\n" + "[" * 100_000 + "\n")
    with pytest.raises(DataError, match=r"r.json:2: expected one JSON object per line \(nested too deep\)"):
        data.load("amazon", tmp_path, reviews=str(tmp_path / "r.json"), meta=str(tmp_path / "r.json"))


def _bpe_files(d, merges, spec=None, config="{}"):
    """A byte-level tokenizer.json: the 256 bytes, "ab" and the merges; or spec, as text."""
    vocab = {c: b for b, c in bpe.BYTE_TO_CHAR.items()} | {"ab": 256}
    model = {"type": "BPE", "vocab": vocab, "merges": merges}
    d.mkdir(exist_ok=True)
    (d / "tokenizer.json").write_text(spec or json.dumps({"pre_tokenizer": {"type": "ByteLevel"}, "model": model}))
    (d / "tokenizer_config.json").write_text(config)
    return d / "tokenizer.json"


def test_a_broken_tokenizer_is_an_error_naming_its_file(tmp_path):
    for merges, words in ((["a b", "Ġ movie"], "merge 'Ġ movie' needs 'movie', not in model.vocab"),
                          (["a b", "a b c"], "merge 'a b c' needs '(not a pair)'"),
                          (["a b", "b c"], "merge 'b c' needs 'bc', not in model.vocab")):
        path = _bpe_files(tmp_path, merges)
        with pytest.raises(ValueError, match=re.escape(f"{path}: {words}")):
            bpe.BPETokenizer(path)
    for spec, words in (("{", "expected an HF tokenizer.json (Expecting property name"),
                        ("{}", "expected an HF tokenizer.json (KeyError: 'model')"),
                        ('{"model": []}', "expected an HF tokenizer.json (AttributeError")):
        path = _bpe_files(tmp_path, [], spec)
        with pytest.raises(ValueError, match=re.escape(f"{path}: {words}")):
            bpe.BPETokenizer(path)
    path = _bpe_files(tmp_path, ["a b"], config="{bos")
    with pytest.raises(ValueError, match=re.escape(f"{path.with_name('tokenizer_config.json')}: expected an HF ")):
        bpe.BPETokenizer(path)
    path = _bpe_files(tmp_path, ["a b"], config='{"bos_token": "ab", "eos_token": "a"}')
    assert bpe.BPETokenizer(path).encode("abc", bos=False) == [256, ord("c")]


# review round: readers and tools

def test_tokenizer_ids_are_ints_and_a_sequence_is_not_empty(tmp_path):
    vocab = {c: b for b, c in bpe.BYTE_TO_CHAR.items()}
    for pre, i, words in (({"type": "Sequence", "pretokenizers": []}, 101, "expected an HF tokenizer.json (IndexError"),
                          ({"type": "ByteLevel"}, -5, "token 'e' has id -5; expected"),
                          ({"type": "ByteLevel"}, 1.5, "token 'e' has id 1.5; expected")):
        spec = {"pre_tokenizer": pre, "model": {"type": "BPE", "vocab": vocab | {"e": i}, "merges": []}}
        path = _bpe_files(tmp_path, [], json.dumps(spec))
        with pytest.raises(ValueError, match=re.escape(f"{path}: {words}")):
            bpe.BPETokenizer(path)


def test_an_adapter_bin_of_odd_keys_or_values_is_one_error_naming_the_bin(tmp_path):
    from tools import limits
    cfg = dict(r=2, lora_alpha=4, target_modules=["q_proj"])
    for state in ({5: torch.zeros(2, 3)}, [torch.zeros(2, 3)], {"m.q_proj.lora_A.weight": [[0.0] * 3] * 2}):
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'adapter_model.bin'}: cannot read it")):
            limits.check_adapter(tmp_path, cfg, state)
    limits.check_adapter(tmp_path, cfg, {"m.q_proj.lora_A.weight": torch.zeros(2, 3)})


def _hung(*_):
    raise TimeoutError("hung: an opened FIFO waits for a writer forever")


def test_inputs_that_are_no_regular_file_or_hold_a_huge_line_are_one_error(tmp_path, monkeypatch):
    import os
    import signal
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "null").symlink_to(os.devnull)  # /dev/zero would fill memory: st_size 0 passed the size cap
    old = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(30)
    try:
        for name in ("fifo", "null"):
            for read in (lambda p: sources.read_json(p, "a thing"), sources.read_preds):
                with pytest.raises(DataError, match=f"{tmp_path / name} is not a regular file"):
                    read(tmp_path / name)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    monkeypatch.setattr(sources, "LINE_MAX", 50)
    monkeypatch.setattr(sources, "JSON_LINE_MAX", 50)
    path = tmp_path / "p.tsv"
    path.write_text("user_id\titem_id\tlabel\tscore\n1\t2\t1\t0.5\n" + "1" * 60 + "\n")
    with pytest.raises(DataError, match=r"p.tsv:3: a line longer than 50 bytes"):
        sources.read_preds(path)
    with gzip.open(tmp_path / "r.json.gz", "wt") as f:
        f.write('{"a": 1}\n' + " " * 60 + "\n")
    lines = sources.json_lines(tmp_path / "r.json.gz", "x")
    assert next(lines) == (1, {"a": 1})
    with pytest.raises(DataError, match=r"r.json.gz:2: a line longer than 50 bytes"):
        next(lines)
    for header, name in (("user_id\titem_id\tlabel\tscore\tscore", "score"),
                         ("user_id\titem_id\tuser_id\tlabel\tscore", "user_id")):
        path.write_text(header + "\n1\t2\t1\t0.5\t3\n")
        with pytest.raises(DataError, match=rf"p.tsv:1: column '{name}' repeats"):
            sources.read_preds(path)


METRICS = dict(logloss=0.6, precision=0.5, recall=0.5, f1=0.5, accuracy=0.5, auc=0.6, uauc=0.6)  # a part's all


def test_report_inputs_are_typed_and_its_writes_atomic(tmp_path, capsys):
    root, victim = tmp_path / "t", tmp_path / "victim.md"
    run = root / "seed0" / "sasrec"
    run.mkdir(parents=True)
    fake_best(run)
    good = '{"epoch": 1, "valid": {"auc": 0.6, "uauc": null}, "samples_per_s": 10.0}'
    cases = [("log.jsonl", '{"epoch": "1", "valid": {}}', 'log.jsonl:1: expected epoch to be an integer >= 1; got "1"'),
             ("log.jsonl", good + '\n{"epoch": 2}', "log.jsonl:2: expected valid to be an object of metrics; it is"),
             ("log.jsonl", '{"epoch": 1, "valid": {}, "samples_per_s": "fast"}',
              'log.jsonl:1: expected samples_per_s to be a number, got "fast"'),
             ("log.jsonl", '{"epoch": 1, "valid": {"auc": "x"}}', "log.jsonl:1: valid: expected auc to be a number or"),
             ("metrics.json", "[1]", "metrics.json: expected a run's metrics (a JSON object), got list"),
             ("times.tsv", "seed0/sasrec\tinf", "times.tsv:1: expected seed<N>/<row> TAB seconds"),
             ("times.tsv", "\nabc", "times.tsv:2: expected seed<N>/<row> TAB seconds"),
             ("times.tsv", "seed0/sasrec\t5\tpaused", "times.tsv:1: expected seed<N>/<row> TAB seconds"),
             # names table.sh never writes (they added a day to the table's total)
             ("times.tsv", "seed9/zzz\t99999\tstarted", "times.tsv:1: expected seed<N>/<row> TAB seconds"),
             ("times.tsv", "./seed0/sasrec\t5", "times.tsv:1: expected seed<N>/<row> TAB seconds"),
             ("times.tsv", "seed01/sasrec\t5", "times.tsv:1: expected seed<N>/<row> TAB seconds")]
    for name, text, words in cases:
        (run / "log.jsonl").write_text(good + "\n")
        (run / "metrics.json").write_text(json.dumps({"test": {**METRICS, "uauc": None}, "best_epoch": 1}))
        (root / "times.tsv").write_text("seed0/sasrec\t12\tstarted\n")
        (root / name if name == "times.tsv" else run / name).write_text(text + "\n")
        assert report.main(["--table", str(root)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and err.count("\n") == 1, err
    (root / "times.tsv").write_text("seed0/sasrec\t12\tstarted\nseed1/mf\t86400\tstarted\n")  # (a row not finished)
    assert report.main(["--table", str(root)]) == 0
    out = capsys.readouterr().out
    assert "add up to 0:00:12" in out and "| SASRec | 0:00:12 | 1 (1) | 10.0 | - |" in out  # this table's rows alone
    victim.write_text("keep me")
    (tmp_path / "t.md").unlink()
    (tmp_path / "t.md").symlink_to(victim)
    assert report.main(["--table", str(root)]) == 2 and "t.md is a symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "keep me"


def test_an_export_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    _write_grouplens(tmp_path, GROUPLENS)
    ds, out = data.load("movielens", tmp_path), tmp_path / "out.jsonl"
    out.write_text("old\n")

    def full(*_):
        raise OSError(28, "No space left on device")
    with monkeypatch.context() as m:
        m.setattr(runs.os, "replace", full)
        with pytest.raises(runs.RunError, match=f"{out}: could not write it"):
            datainfo.export(ds, out)
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["ml-1m", "out.jsonl"]
    (tmp_path / "link.jsonl").symlink_to(out)
    with pytest.raises(runs.RunError, match="link.jsonl is a symbolic link"):
        datainfo.export(ds, tmp_path / "link.jsonl")
    datainfo.export(ds, out)
    assert len(out.read_text().splitlines()) == len(ds) and out.read_text() != "old\n"


def test_walk_reads_the_run_s_own_split(tmp_path):
    """walk.py loaded the default split whatever the run's: a ratio-split run's rows were other rows."""
    import walk
    _write_grouplens(tmp_path, GROUPLENS)
    a = train.Run(stage="joint", data="movielens", split="ratio", data_dir=str(tmp_path))
    sizes = lambda ds: [len(ds.idx(s)) for s in data.SPLITS]
    assert sizes(walk.full_data(a)) == sizes(data.load("movielens", tmp_path, "ratio")) != \
        sizes(data.load("movielens", tmp_path))


@pytest.mark.parametrize("lines", [
    ["1\t1\t1\t10\ttest", "1\t2\t0\t20\ttrain", "1\t3\t0\t30\tvalid"],  # a train row after a test row: [1] in its history
    ["1\t1\t1\t10\ttest", "1\t2\t0\t10\ttrain", "1\t3\t0\t30\tvalid"]])  # tied, the test row first in the file
def test_a_users_splits_out_of_time_order_are_refused(tmp_path, lines):
    """The split column was trusted while histories follow time: a train row's history held a test row's like."""
    _ml1m_dir(tmp_path, lines, "item_id\ttitle\n1\tA (2000)\n2\tB (2001)\n3\tC (2002)\n")
    with pytest.raises(DataError, match=r"user 1's train row \(item 2, time (20|10)\) comes at or after its test row "
                                        r"\(item 1, time 10\): a history would hold a later split's like"):
        data.load("ml1m", tmp_path)


def test_a_titles_spelling_is_the_files_one_whatever_its_encoding_or_colons(tmp_path):
    """movies.dat saved as UTF-8 was read as Latin-1 ('Alien³' became 'AlienÂ³'); 'Star Trek:::Sci-Fi' lost
    its colon to the genres; a title with spaces around it was spelt two ways in one prompt."""
    for encoding in ("latin-1", "utf-8"):
        _write_grouplens(tmp_path / encoding, GROUPLENS)
        movies = tmp_path / encoding / "ml-1m" / "movies.dat"
        movies.write_bytes(movies.read_bytes().decode("latin-1").replace("Heat (1995)", " Star Trek: ")
                           .encode(encoding))
        titles = set(data.load("movielens", tmp_path / encoding).titles)
        assert {"Star Trek:", "Café au lait (1993)", "Alien³ (1992)"} <= titles, (encoding, titles)
    _ml1m_dir(tmp_path / "t", ["1\t1\t1\t10\ttrain", "1\t2\t0\t20\tvalid", "2\t1\t1\t30\ttest"],
              "item_id\ttitle\n1\t  A (2000) \n2\tB (2001)\n")
    assert data.load("ml1m", tmp_path / "t").titles == ["", "A (2000)", "B (2001)"]


def test_a_prediction_column_of_another_name_is_refused(tmp_path):
    """'Split' (not 'split') was left out, and the valid rows scored as test."""
    path = tmp_path / "p.tsv"
    path.write_text("user_id\titem_id\tlabel\tscore\tSplit\n1\t1\t1\t0.9\ttest\n1\t2\t0\t0.1\tvalid\n")
    with pytest.raises(DataError, match=r"p.tsv:1: column 'Split' is none of user_id, item_id, label, score, split"):
        sources.read_preds(str(path))


def test_the_amazon_noun_is_book_for_the_books_files_alone(tmp_path):
    for name, noun in (("Books_5.json", "book"), ("Facebook_reviews.json", "item"), ("Notebook_5.json", "item")):
        _write_jsonl(tmp_path / name, REVIEWS)
        _write_jsonl(tmp_path / "meta.json", META)
        assert data.load("amazon", tmp_path, reviews=str(tmp_path / name), meta=str(tmp_path / "meta.json")).domain == noun


def test_the_mc_memory_check_counts_the_fits_float64_temporaries(ml1m, monkeypatch):
    """MC's fit holds several float64 copies of its (n_items+1)^2 table; the check counted one fp32 one (13x less)."""
    a = train.parse_args(["--stage", "mc"])
    cells = (ml1m.n_items + 1) ** 2
    monkeypatch.setattr(limits, "available", lambda device: 20 * cells)  # room for 5 fp32 tables, not 3 float64 ones
    with pytest.raises(limits.SizeError, match="--stage mc"):
        limits.check_cf(a, ml1m)


def test_a_movies_dat_of_two_encodings_and_other_hostile_data_files(tmp_path, capsys):
    """One non-UTF-8 byte made the whole movies.dat latin-1 (every UTF-8 title mojibake, exit 0), and a sparse 2 GB
    movies.dat was read to its end first; a score of 40,000 digits took a minute (the decimal pattern backtracked over
    every split of the digits); a damaged .gz body was a zlib traceback; a directory in a data file's place leaked
    its descriptor, a link loop was 'not found'; one 200-character Amazon id made every row 800 bytes wide."""
    _write_grouplens(tmp_path / "mixed", GROUPLENS)
    movies = tmp_path / "mixed" / "ml-1m" / "movies.dat"
    movies.write_bytes(movies.read_bytes() + "50::Café (1990)::Comedy\n".encode("utf-8"))  # latin-1 with a UTF-8 line
    with pytest.raises(DataError, match=r"movies.dat: byte 0xe9 at offset .* is not UTF-8, and bytes b'\\xc3\\xa9' at"):
        data.load("movielens", tmp_path / "mixed")
    movies.write_bytes(movies.read_bytes().replace("Café (1990)".encode("utf-8"), b"Caf\x92s (1990)"))  # cp1252
    with pytest.raises(DataError, match=r"bytes b'\\x92' at offset [0-9]+ are not latin-1 text"):
        data.load("movielens", tmp_path / "mixed")
    os.truncate(movies, 2 << 30)  # sparse: no disk, and no time to read
    with pytest.raises(DataError, match=r"movies.dat: expected GroupLens' .* in at most [0-9]+ bytes, got 2147483648"):
        data.load("movielens", tmp_path / "mixed")
    preds = tmp_path / "p.tsv"
    preds.write_text("user_id\titem_id\tlabel\tscore\n1\t1\t1\t0.5\n1\t2\t0\t" + "1" * 40000 + "x\n")
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"p.tsv:3: expected a finite number as score"):
        sources.read_preds(preds)
    assert time.perf_counter() - t0 < 5  # (was 66 s: a hang, not a speed figure)
    assert [sources.real(x) for x in ("1", "1.", ".5", "-2.5e3", "+3")] == [1.0, 1.0, 0.5, -2500.0, 3.0]
    raw = bytearray(gzip.compress("".join(json.dumps(dict(REVIEWS[0], unixReviewTime=k)) + "\n"
                                          for k in range(2000)).encode(), mtime=0))
    raw[200:240] = bytes(x ^ 255 for x in raw[200:240])
    (bad := tmp_path / "bad.json.gz").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"bad.json.gz:1: expected readable text \(Error -3 while decompressing"):
        list(sources.json_lines(bad, "x"))
    (tmp_path / "dir.tsv").mkdir()
    (tmp_path / "loop.tsv").symlink_to(tmp_path / "loop.tsv")
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(DataError, match=r"dir.tsv is not a regular file"):
            list(sources._lines(tmp_path / "dir.tsv", "x"))
    assert len(os.listdir("/proc/self/fd")) == fds
    with pytest.raises(DataError, match=r"loop.tsv:1: expected readable text \(Too many levels of symbolic links\)"):
        list(sources._lines(tmp_path / "loop.tsv", "x"))
    _write_jsonl(tmp_path / "m.json", META)
    peaks = []
    for long_id in ("Z", "Z" * 200):  # the same 5,000 reviews but for one user's id
        _write_jsonl(tmp_path / "r.json", [dict(REVIEWS[0], reviewerID=long_id if k == 0 else f"u{k % 500}",
                                                unixReviewTime=k) for k in range(5000)])
        tracemalloc.start()
        sources.load_amazon(tmp_path, reviews=str(tmp_path / "r.json"), meta=str(tmp_path / "m.json"))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.2 * peaks[0], peaks  # (numpy's string columns: 3x)
