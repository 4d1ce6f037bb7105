"""Byte-level BPE from an HF tokenizer.json (GPT-2 style; SmolLM2), written out by hand, and
AnswerIds, the answer-token lookup that both tokenizers (this one and llama.Tokenizer) share.

Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2, sec. 2.2):
text -> UTF-8 bytes -> printable stand-in characters, split into words by GPT-2's pre-tokenizer
(a hand-written scanner here, as Python's re has no \\p{L}) -> merges by rank inside each word.
No string is unknown: every byte is a token. tests/test_tokenizer.py checks the ids against HF.
"""
import heapq
import json
import re
import unicodedata
from pathlib import Path

from tools.sources import read_json


class AnswerIds:
    """yes_id and no_id, the two tokens the score reads, for a tokenizer with encode(text, bos), pieces(ids) and
    path: ANSWERS as the tokenizer sees them after "#Answer:", looked up in its own files, never a constant."""
    ANSWERS = ("Yes", "No")

    def word_id(self, word: str) -> int:
        """The id of a string that must be a single token, e.g. "Yes" -> 3869 ("▁Yes") for Llama 2."""
        ids = self.encode(word, bos=False)
        if len(ids) != 1 or ids[0] == self.unk_id:  # (unknown: "Yes" and "No" would be one token, every score 0)
            raise ValueError(f"{word!r} is not a single token in {self.path}: {self.pieces(ids)}")
        return ids[0]

    yes_id = property(lambda self: self.word_id(self.ANSWERS[0]))

    @property
    def no_id(self) -> int:
        if (no := self.word_id(self.ANSWERS[1])) == self.yes_id:  # (a normalizer that writes "Yes" as "No")
            raise ValueError(f"'Yes' and 'No' are the same token in {self.path} ({self.pieces([no])}): every score "
                             "z_Yes - z_No would be 0")
        return no


# GPT-2's reversible byte -> character map (its bytes_to_unicode): printable Latin-1 bytes stand for
# themselves; the other 68 (space, controls...) move to chr(256 + k) in byte order, so " " is "Ġ"
# and "\n" is "Ċ". Vocabulary entries and merges are written in these characters.
PRINTABLE = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
MOVED = [b for b in range(256) if b not in PRINTABLE]
BYTE_TO_CHAR = {b: chr(b) for b in PRINTABLE} | {b: chr(256 + k) for k, b in enumerate(MOVED)}
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


class CharClasses(dict):
    r"""ord(c) -> "L" letter (\p{L}), "N" number (\p{N}), "S" white space (\s) or "P" anything else:
    the classes GPT-2's split pattern tests. A str.translate table that fills itself in. Code points
    newer than Python's Unicode database (unicodedata.unidata_version) count as "P"."""

    def __missing__(self, o):
        c = chr(o)
        cat = unicodedata.category(c)[0]
        # \s is Unicode's White_Space in the regex engine HF uses; str.isspace also counts the
        # four ASCII separators 0x1c-0x1f, which are not white space there.
        space = c.isspace() and not "\x1c" <= c <= "\x1f"
        self[o] = cat if cat in "LN" else "S" if space else "P"
        return self[o]


CHAR_CLASSES = CharClasses()
RUN = re.compile("L+|N+|S+|P+")  # a run of one class, matched on the string of classes


def gpt2_split(text: str, kinds: str) -> list:
    r"""GPT-2's pre-tokenization, which HF tokenizers' ByteLevel runs as the regex
        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    Python's re has no \p{L} or \p{N}, so this scans by hand: kinds[i] is the class of text[i]
    (CharClasses), and each word is the first alternative that matches where the last one ended."""
    words, i, n = [], 0, len(text)
    while i < n:
        if text[i] == "'" and text[i + 1:i + 2] in ("s", "t", "m", "d"):   # 's 't 'm 'd (lower case only)
            j = i + 2
        elif text[i] == "'" and text[i + 1:i + 3] in ("re", "ve", "ll"):  # 're 've 'll
            j = i + 3
        elif kinds[i] != "S":                                               # a run of L, N or P
            j = RUN.match(kinds, i).end()
        elif text[i] == " " and i + 1 < n and kinds[i + 1] != "S":        # one space leads the run after it
            j = RUN.match(kinds, i + 1).end()
        else:                                                               # \s+(?!\S)|\s+
            j = RUN.match(kinds, i).end()
            if j < n and j - i > 1:
                j -= 1  # the last white space char stays behind to lead the word that follows
        words.append(text[i:j])
        i = j
    return words


class BPETokenizer(AnswerIds):
    """Byte-level BPE with llama.Tokenizer's interface. From tokenizer.json: model.vocab, model.merges (highest priority
    first), added_tokens (matched whole in the raw text before anything else, as HF does), pre_tokenizer (ByteLevel,
    alone or after Digits: the hub's SmolLM2 file has both); options not implemented here are refused, not ignored.
    tokenizer_config.json names bos/eos/unk. SmolLM2's post_processor adds no special token, so encode(text, bos=False)
    is HF's ids; bos=True prepends bos_id, as Tokenizer does (SmolLM2's <|im_start|>, which opens every turn it saw)."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._read(read_json(self.path, "an HF tokenizer.json"))
        except (KeyError, TypeError, AttributeError, IndexError) as e:  # a field missing, or of another JSON type
            raise ValueError(f"{self.path}: expected an HF tokenizer.json ({type(e).__name__}: {e})") from None
        # Longest first: of two added tokens that start at the same place the longer wins, as in HF.
        names = sorted(self.added, key=len, reverse=True)
        self.added_re = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None
        self.cache = {}  # word -> ids; prompts repeat a few thousand words over and over

        cfg_path = self.path.with_name("tokenizer_config.json")
        cfg = read_json(cfg_path, "an HF tokenizer_config.json", obj=True) if cfg_path.exists() else {}

        def token_id(key):
            name = cfg.get(key)
            name = name.get("content") if isinstance(name, dict) else name  # older files nest it
            if name is not None and type(name) is not str:
                raise ValueError(f"{cfg_path}: {key} is {name!r:.40}; expected the text of a token")
            return self.added.get(name, self.vocab.get(name))

        self.bos_id, self.eos_id = token_id("bos_token"), token_id("eos_token")
        if self.bos_id is None or self.eos_id is None:
            raise ValueError(f"{cfg_path}: needs bos_token and eos_token, naming tokens of {self.path.name}")
        # Byte-level BPE never needs an unknown token. unk_id only fills data.encode_prompt's
        # slots, whose embeddings SASRecLLM overwrites, so any real id is safe: the named
        # unk_token (SmolLM2: <|endoftext|>, 0), else eos.
        unk = token_id("unk_token")
        self.unk_id = self.eos_id if unk is None else unk

    def _read(self, spec):
        """The vocabulary, merges and options of tokenizer.json's spec; what is not implemented is refused."""
        model, pre = spec["model"], spec.get("pre_tokenizer") or {}
        steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]  # (a list elsewhere: ignored)
        types = [s.get("type") for s in steps]
        added = spec.get("added_tokens", [])
        norm = spec.get("normalizer") or {}  # none, one Unicode form, or a Sequence of them
        norms = [n.get("type") for n in (norm.get("normalizers", []) if norm.get("type") == "Sequence" else
                                         [norm] if norm else [])]
        post = spec.get("post_processor") or {}
        posts = post.get("processors", []) if post.get("type") == "Sequence" else [post] if post else []
        refused = {
            "model.type other than BPE": model.get("type") != "BPE",
            "BPE dropout": bool(model.get("dropout")),
            "a subword prefix/suffix": bool(model.get("continuing_subword_prefix")
                                            or model.get("end_of_word_suffix")),
            "unk_token or byte_fallback with bytes missing from model.vocab (HF drops a missing byte only "
            "without them)": bool(model.get("unk_token") is not None or model.get("byte_fallback"))
                             and not set(BYTE_TO_CHAR.values()) <= model["vocab"].keys(),
            f"normalizer {norms}": any(n not in ("NFC", "NFD", "NFKC", "NFKD") for n in norms),
            f"pre_tokenizer {types}": types not in (["ByteLevel"], ["Digits", "ByteLevel"]),
            "ByteLevel without use_regex or with add_prefix_space":
                not steps[-1].get("use_regex", True) or steps[-1].get("add_prefix_space", False),
            "Digits without individual_digits":
                types[0] == "Digits" and not steps[0].get("individual_digits"),
            "an added token with empty content": any(t.get("content") == "" for t in added),
            f"{len(added)} added tokens (at most 4096)": len(added) > 4096,
            "added tokens with lstrip/rstrip/single_word":
                any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added),
            "added tokens that are not special (HF matches them in data text too)":  # (encode(special=False))
                any(t.get("special") is not True for t in added),
            "added tokens with normalized true under a normalizer (HF matches them in the normalized text)":
                bool(norms) and any(t.get("normalized") is not False for t in added),
            "a post_processor that adds special tokens (HF's prompts would start with them, not the configured BOS)":
                any(p.get("type") not in ("ByteLevel", "TemplateProcessing") or "SpecialToken" in json.dumps(
                    [p.get("single"), p.get("pair")]) for p in posts),
            "ignore_merges other than true or false": type(model.get("ignore_merges", False)) is not bool,
            "a merge other than 'a b' or [a, b]": any(not (isinstance(m, str) or isinstance(m, list) and len(m) == 2
                                                         and all(isinstance(x, str) for x in m))
                                                      for m in model.get("merges", [])),
        }
        for what, bad in refused.items():
            if bad:
                raise ValueError(f"{self.path}: {what} is not implemented")
        self.unicode_forms = norms  # applied to the text between added tokens, in order, as HF does
        self.split_digits = types[0] == "Digits"
        self.ignore_merges = model.get("ignore_merges", False)  # a word that is a token stays whole

        self.vocab = model["vocab"]
        merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]  # "a b" or ["a", "b"]
        self.ranks = {tuple(m): rank for rank, m in enumerate(merges)}
        for m in merges:  # each merge's two parts and its result are tokens (HF refuses the file too)
            if lost := [t for t in [*m, "".join(m)] if t not in self.vocab] if len(m) == 2 else ["(not a pair)"]:
                raise ValueError(f"{self.path}: merge {' '.join(m)!r} needs {lost[0]!r}, not in model.vocab")
        self.added = {t["content"]: t["id"] for t in added}
        if clash := next((t for t, i in self.added.items() if self.vocab.get(t, i) != i), None):  # (HF: the vocab's)
            raise ValueError(f"{self.path}: added token {clash!r:.40} is in model.vocab at another id")
        bad = [(t, i) for t, i in [*self.vocab.items(), *self.added.items()]
               if type(t) is not str or type(i) is not int or i < 0]  # an id indexes the embedding table
        if bad:
            raise ValueError(f"{self.path}: token {bad[0][0]!r:.40} has id {bad[0][1]!r:.40}; expected a string "
                             "with an id that is an int >= 0")
        self.tokens = {}  # id -> token; an added token may repeat a vocab entry (the same text at the same id)
        for t, i in [*self.vocab.items(), *self.added.items()]:
            if self.tokens.setdefault(i, t) != t:
                raise ValueError(f"{self.path}: tokens {self.tokens[i]!r:.40} and {t!r:.40} share id {i}")
        self.added_ids = set(self.added.values())
        self.vocab_size = max(self.tokens, default=-1) + 1  # (no token: no bos_token, refused below)
        if self.vocab_size > len(self.tokens):  # ids are 0..n-1: the embedding table's rows
            raise ValueError(f"{self.path}: {len(self.tokens)} tokens with ids up to {self.vocab_size - 1}; "
                             "expected the ids 0..n-1, each once")
        for t, i in self.vocab.items():  # decode turns a token's characters back into bytes
            if i not in self.added_ids and not set(t) <= CHAR_TO_BYTE.keys():
                raise ValueError(f"{self.path}: token {t!r:.40} is not in the byte-level alphabet")

    def pre_tokenize(self, text: str) -> list:
        kinds = text.translate(CHAR_CLASSES)  # one class letter per char
        # Digits(individual_digits), when it runs first, makes each number char a word of its own,
        # and GPT-2's split runs inside the stretches between them (so " 1" is " ", "1", never " 1").
        spans = [m.span() for m in re.finditer("N|[^N]+", kinds)] if self.split_digits else [(0, len(text))]
        return [w for i, j in spans for w in gpt2_split(text[i:j], kinds[i:j])]

    def bpe(self, word: str) -> list:
        """Ids of one word: start from its bytes and merge the adjacent pair of lowest rank (the
        leftmost on a tie) until no pair has a rank, as HF's BPE does. The pairs wait in a heap keyed
        by (rank, position of the left part), so a long word costs n log n, not n^2 (8,000 letters: 5 s)."""
        ids = self.cache.get(word)
        if ids is None:
            chars = "".join(BYTE_TO_CHAR[b] for b in word.encode("utf-8"))
            # a byte with no token is dropped before any merge, as HF drops it (then its neighbours may merge)
            parts = [chars] if self.ignore_merges and chars in self.vocab else [c for c in chars if c in self.vocab]
            n, heap = len(parts), []
            left, right = list(range(-1, n - 1)), list(range(1, n + 1))  # the live neighbours (-1, n: none)

            def push(k):  # the pair that part k starts, if it is a merge
                if 0 <= k < n and right[k] < n and (rank := self.ranks.get((parts[k], parts[right[k]]))) is not None:
                    heapq.heappush(heap, (rank, k, parts[k], parts[right[k]]))
            for k in range(n - 1):
                push(k)
            while heap:
                rank, k, a, b = heapq.heappop(heap)
                j = right[k]
                if parts[k] != a or j == n or parts[j] != b:
                    continue  # a part of it has merged since: parts only grow, so it never matches again
                parts[k], parts[j], right[k] = a + b, None, right[j]
                if right[k] < n:
                    left[right[k]] = k
                push(left[k])
                push(k)
            ids = self.cache[word] = [self.vocab[p] for p in parts if p is not None]  # (None: merged away)
        return ids

    def encode(self, text: str, bos: bool = True, special: bool = True) -> list:
        """special=False: an added token's text ("<|im_end|>" in a title) is plain text, as for HF's
        split_special_tokens; data text is encoded so, never becoming an end of turn or an UNK slot."""
        ids = [self.bos_id] if bos else []
        pieces = self.added_re.split(text) if self.added_re and special else [text]
        for k, piece in enumerate(pieces):
            if k % 2:  # re.split puts the matched added tokens at the odd places
                ids.append(self.added[piece])
            else:
                for form in self.unicode_forms:
                    piece = unicodedata.normalize(form, piece)
                for word in self.pre_tokenize(piece):
                    ids += self.bpe(word)
        return ids

    def decode(self, ids) -> str:
        """Added tokens come out as their text. The other tokens go back to bytes, decoded as UTF-8
        a stretch at a time (one character's bytes may span tokens); bad bytes become U+FFFD."""
        out, buf = [], bytearray()
        for i in map(int, ids):
            if i in self.added_ids:
                out += [buf.decode("utf-8", "replace"), self.tokens[i]]
                buf = bytearray()
            else:
                buf += bytes(CHAR_TO_BYTE[c] for c in self.tokens[i])
        return "".join(out) + buf.decode("utf-8", "replace")

    def pieces(self, ids) -> list:
        return [self.tokens[i] for i in ids]

    # The answer follows "#Answer:" after a space, which byte-level BPE keeps in the token
    # ("ĠYes"), as sentencepiece does with "▁Yes": the scored tokens are " Yes" and " No" (9230
    # and 2838 for SmolLM2); "Yes" alone is another token (after a quote, or at a line start).
    ANSWERS = (" Yes", " No")
