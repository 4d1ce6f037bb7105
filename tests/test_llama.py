"""llama.py: parity with HF transformers, invariants, loader errors, tokenizers.

All models here are toy-sized (hidden 64, 2 layers) and run in well under a second each.
"""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import llama
import test_tokenizer
from drivers import decode
from tools import backbones

torch.set_num_threads(2)


def copy_ckpt(src, dst):
    shutil.copytree(src, dst)
    return Path(dst)


def left_padded_batch(vocab, lengths, seed=0):
    """Random ids, LEFT-padded with id 0 to the longest length; attention_mask 1 on real tokens."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, T - n:] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, T - n:] = 1
    return ids, mask


# ----------------------------------------------------------------------------------------------
# Parity with HF transformers


def save_hf_tiny(out_dir, style, tie):
    """A tiny random LlamaForCausalLM (GQA: 4 query heads over 2 kv heads) in HF's own layout.
    style "new" keeps transformers' spelling (rope_parameters, dtype, head_dim); "old" rewrites
    config.json in TinyLlama's (rope_theta, torch_dtype at the top level, no head_dim)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   rms_norm_eps=1e-5, max_position_embeddings=256,
                                   tie_word_embeddings=tie,
                                   rope_parameters={"rope_type": "default", "rope_theta": 5000.0})
    hf = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # HF inits norms to 1; perturb them so a dropped norm weight would show
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(out_dir)
    if style == "old":
        path = Path(out_dir) / "config.json"
        d = json.loads(path.read_text())
        d["rope_theta"] = d.pop("rope_parameters")["rope_theta"]
        d["torch_dtype"] = d.pop("dtype")
        d.pop("head_dim")
        path.write_text(json.dumps(d))
    return hf.eval()


@pytest.mark.parametrize("style,tie", [("new", False), ("old", False), ("old", True)])
def test_logits_match_hf_on_left_padded_batch(tmp_path, style, tie):
    hf = save_hf_tiny(tmp_path, style, tie)
    cfg = llama.LlamaConfig.from_json(tmp_path / "config.json")
    assert (cfg.rope_theta, cfg.head_dim, cfg.num_key_value_heads) == (5000.0, 16, 2)
    model = llama.load_model(tmp_path)
    ids, mask = left_padded_batch(96, [7, 12, 3])
    # With only attention_mask, HF numbers positions 0..T-1 including the padding (RoPE is relative,
    # so real tokens differ only by rounding); give it the padding-aware positions llama.py uses.
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
        got = model.logits(model(input_ids=ids, attention_mask=mask))
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
    # Only the two chosen lm_head rows, at the last position.
    last = model(input_ids=ids, attention_mask=mask)[:, -1]
    torch.testing.assert_close(model.token_logits(last, [5, 9]), want[:, -1, [5, 9]], atol=1e-5, rtol=1e-5)


def test_random_checkpoints_are_written_in_hf_layout_as_llama_reads_it():
    """tools/backbones.py writes names and shapes from HF's layout, without llama.py: the same names,
    shapes and order as Llama's own state dict (a tied lm_head left out), and TINYLLAMA is its defaults."""
    assert llama.LlamaConfig.from_dict(backbones.TINYLLAMA) == llama.LlamaConfig()
    for tied, head_dim in ((False, 0), (True, 16)):
        cfg = llama.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, tie_word_embeddings=tied)
        with torch.device("meta"):
            want = {k: tuple(v.shape) for k, v in llama.Llama(cfg).state_dict().items()}
        if tied:
            want.pop("lm_head.weight")
        assert list(backbones.shapes(backbones.config_json(cfg)).items()) == list(want.items())


def test_tools_import_no_lesson_file():
    """The import graph is one-way: tools/ (machinery) imports no top-level lesson file; drivers/ may."""
    import ast
    root = Path(__file__).resolve().parent.parent
    lesson = {p.stem for p in root.glob("*.py")} | {"drivers"}
    for path in (root / "tools").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not {n.split(".")[0] for n in names} & lesson, f"{path.name} imports {names}"


def test_refuses_what_is_not_implemented():
    base = {k: v for k, v in backbones.TINYLLAMA.items()}
    for change, words in [({"model_type": "mistral"}, "model_type"),
                          ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope scaling"),
                          ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "rope scaling"),
                          ({"rope_parameters": {"type": "linear", "factor": 4.0}}, "rope scaling"),  # (the older key)
                          ({"attention_bias": True}, "bias"), ({"attention_dropout": 0.5}, "attention_dropout=0.5")]:
        with pytest.raises(ValueError, match=words):
            llama.LlamaConfig.from_dict({**base, **change})
    assert llama.LlamaConfig.from_dict({**base, "attention_dropout": 0.0}).hidden_size == base["hidden_size"]


# ----------------------------------------------------------------------------------------------
# Invariants


def test_causality(tiny_dir):
    model = llama.load_model(tiny_dir)
    ids, _ = left_padded_batch(model.cfg.vocab_size, [10, 10])
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % model.cfg.vocab_size
    with torch.no_grad():
        a, b = model(input_ids=ids), model(input_ids=changed)
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=0, rtol=0)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_left_padding_does_not_change_last_token(tiny_dir):
    model = llama.load_model(tiny_dir)
    ids, mask = left_padded_batch(model.cfg.vocab_size, [5, 11, 8], seed=1)
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask)
        assert not torch.isnan(batched).any()  # padding query rows stay finite
        for i, n in enumerate([5, 11, 8]):
            alone = model(input_ids=ids[i:i + 1, -n:])
            torch.testing.assert_close(batched[i, -1], alone[0, -1], atol=1e-5, rtol=1e-5)


def test_inputs_embeds_equal_input_ids_and_grads_are_finite(tiny_dir):
    model = llama.load_model(tiny_dir)
    ids, mask = left_padded_batch(model.cfg.vocab_size, [4, 9], seed=2)
    emb = model.model.embed_tokens(ids).detach().requires_grad_(True)
    h = model(inputs_embeds=emb, attention_mask=mask)
    torch.testing.assert_close(h, model(input_ids=ids, attention_mask=mask))
    model.token_logits(h[:, -1], [3, 4]).sum().backward()
    assert torch.isfinite(emb.grad).all()
    assert emb.grad[0, :5].abs().sum() == 0  # padding positions feed nothing forward


@pytest.mark.parametrize("padded", [True, False])
def test_attention_written_out_equals_sdpa(padded):
    """The CPU bf16 training path (matmuls and a softmax) computes what SDPA does, values and
    gradients: exactly up to fp32 rounding, and within bf16's rounding in bf16."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 7, 8, generator=g) for _ in range(3))
    mask = None
    if padded:
        _, pad = left_padded_batch(50, [7, 3, 5])
        mask = (torch.ones(7, 7, dtype=torch.bool).tril() & pad.bool()[:, None, :]) | torch.eye(7, dtype=torch.bool)
        mask = mask[:, None]
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 4e-2)):
        outs = []
        for fn in (llama.attention_written_out, lambda *a: torch.nn.functional.scaled_dot_product_attention(
                *a[:3], attn_mask=a[3], is_causal=a[3] is None)):
            leaves = [t.to(dtype).clone().requires_grad_(True) for t in (q, k, v)]
            y = fn(*leaves, mask)
            y.float().pow(2).sum().backward()
            outs.append([y.float()] + [t.grad.float() for t in leaves])
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def test_bf16_training_path_is_taken_and_agrees(tiny_dir, monkeypatch):
    """In bf16 on the CPU, a forward with gradients goes through attention_written_out and one
    without through SDPA; the two agree within bf16's rounding."""
    model = llama.load_model(tiny_dir, torch.bfloat16)
    ids, mask = left_padded_batch(model.cfg.vocab_size, [6, 9], seed=3)
    calls, real = [], llama.attention_written_out
    monkeypatch.setattr(llama, "attention_written_out", lambda *a: calls.append(1) or real(*a))
    with_grad = model(input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        without = model(input_ids=ids, attention_mask=mask)
    assert len(calls) == model.cfg.num_hidden_layers
    torch.testing.assert_close(with_grad[:, -1].float(), without[:, -1].float(), atol=5e-2, rtol=5e-2)


# ----------------------------------------------------------------------------------------------
# Loader errors and layouts


def test_a_tied_config_beside_an_lm_head_of_its_own_is_refused(tiny_dir, tmp_path):
    """tie_word_embeddings true and an lm_head.weight unlike the embedding: we scored with the embedding,
    transformers 5 keeps the file's lm_head (4 ties them): refused; one equal to the embedding loads."""
    d = copy_ckpt(tiny_dir, tmp_path / "t")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    with pytest.raises(llama.CheckpointError, match="lm_head.weight differs from the embedding"):
        llama.load_model(d)
    state = load_file(d / "model.safetensors")
    save_file({**state, "lm_head.weight": state["model.embed_tokens.weight"].clone()}, d / "model.safetensors")
    model = llama.load_model(d)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_truncated_file(tiny_dir, tmp_path):
    d = copy_ckpt(tiny_dir, tmp_path / "ckpt")
    path = d / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="truncated"):
        llama.load_model(d)


def test_corrupt_header(tiny_dir, tmp_path):
    d = copy_ckpt(tiny_dir, tmp_path / "ckpt")
    path = d / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:20] = b"not json!!!!"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        llama.load_model(d)


def test_wrong_shape_names_the_key(tiny_dir, tmp_path):
    d = copy_ckpt(tiny_dir, tmp_path / "ckpt")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] += 4
    (d / "config.json").write_text(json.dumps(cfg))
    words = r"key .model\.layers\.0\.mlp\.gate_proj\.weight. has shape \(172, 64\)"
    with pytest.raises(ValueError, match=words):
        llama.load_model(d)


@pytest.mark.parametrize("edit,words", [("drop", "missing key 'model.norm.weight'"),
                                        ("add", "unexpected key 'extra.weight'")])
def test_missing_or_unexpected_key(tiny_dir, tmp_path, edit, words):
    d = copy_ckpt(tiny_dir, tmp_path / "ckpt")
    state = load_file(d / "model.safetensors")
    if edit == "drop":
        del state["model.norm.weight"]
    else:
        state["extra.weight"] = torch.zeros(2)
    save_file(state, d / "model.safetensors")
    with pytest.raises(ValueError, match=words):
        llama.load_model(d)


def test_sharded_checkpoint_and_dtype(tiny_dir, tmp_path):
    d = copy_ckpt(tiny_dir, tmp_path / "ckpt")
    state = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[:len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, d / name)
        weight_map.update({k: name for k in ks})
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    a, b = llama.load_model(tiny_dir), llama.load_model(d, dtype=torch.bfloat16)
    assert b.lm_head.weight.dtype == torch.bfloat16
    for k, v in a.state_dict().items():
        assert torch.equal(v.to(torch.bfloat16), b.state_dict()[k]), k


# ----------------------------------------------------------------------------------------------
# Tokenizers


def test_tiny_tokenizer(tiny_dir):
    tok = llama.Tokenizer(tiny_dir / "tokenizer.model")
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.encode("Yes", bos=False) == [tok.yes_id] and tok.encode("No", bos=False) == [tok.no_id]
    ids = tok.encode("Toy Story (1995) Ω", bos=True)  # Ω is unseen: byte fallback, not unk
    assert ids[0] == tok.bos_id and tok.unk_id not in ids
    assert tok.decode(ids[1:]) == "Toy Story (1995) Ω"


def test_real_tokenizer_yes_no(tokenizer_path):
    tok = llama.Tokenizer(tokenizer_path)
    assert (tok.yes_id, tok.no_id) == (3869, 1939)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.unk_id) == (32000, 1, 2, 0)
    assert tok.encode("Answer: Yes", bos=True) == [1, 673, 29901, 3869]


def test_make_tiny_with_real_tokenizer_and_cli(tokenizer_path, tmp_path, capsys, monkeypatch):
    d = backbones.make_tiny(tmp_path / "tiny", tokenizer_model=tokenizer_path)
    model, tok = llama.load(d)
    assert model.cfg.vocab_size == 32000 and tok.yes_id == 3869
    assert decode.main([str(d), "--prompt", "Yes or No?", "--max-new-tokens", "3"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"prompt_tokens", "new_ids", "text", "yes_minus_no"}
    assert out["prompt_tokens"] == len(tok.encode("Yes or No?", bos=True))


def test_real_ml1m_prompt_length(tokenizer_path, data_dir):
    """A real ML-1M prompt through the real tokenizer. 181 is what data.py's text template gave for
    the first test row when this test was written: a change in the template, the titles or the
    split moves it, and should be a conscious one. SASRecLLM prompts average ~195 tokens."""
    data = pytest.importorskip("data")
    ds = data.load("ml1m", data_dir)
    tok = llama.Tokenizer(tokenizer_path)
    rows = ds.idx("test")
    ids = tok.encode(data.prompt(ds, int(rows[0]), False), bos=True)
    assert ids[0] == tok.bos_id and tok.unk_id not in ids
    assert len(ids) == 181
    lengths = [len(tok.encode(data.prompt(ds, int(i), False), bos=True)) for i in rows[:300]]
    assert 120 < sum(lengths) / len(lengths) < 230 and max(lengths) < 2048


def test_checkpoint_folders_hf_would_read_otherwise_are_refused(tmp_path, capsys):
    """An adapter beside the weights (from_pretrained applies it), added tokens matched in normalized text, a
    post_processor starting HF's prompts with another token than the configured BOS, and
    tokenizer.json values HF refuses (ignore_merges "no", a merge as an object) loaded here as something else;
    decode.py's greedy step picked an id past the tokenizer's (a padded embedding table), then crashed, and its
    prompt's "</s>" was spelt out by sentencepiece, where HF reads the token."""
    tiny = backbones.make_tiny(tmp_path / "tiny", texts=["Toy Story (1995)"])
    (tiny / "adapter_config.json").write_text("{}")
    with pytest.raises(llama.CheckpointError, match="holds adapter_config.json, a LoRA adapter HF would apply"):
        llama.load_model(tiny)
    (tiny / "adapter_config.json").unlink()
    for change, why in (({"normalizer": {"type": "NFKC"}}, "added tokens with normalized true under a normalizer"),
                        ({"model": {"ignore_merges": "no"}}, "ignore_merges other than true or false"),
                        ({"model": {"merges": [{"a": "b", "c": "d"}]}}, "a merge other than 'a b' or"),
                        ({"post_processor": {"type": "TemplateProcessing", "single": [
                            {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A"}}]}},
                         "a post_processor that adds special tokens")):
        spec = json.loads((test_tokenizer.write_tiny_bpe(tmp_path / "bpe") / "tokenizer.json").read_text())
        for k, v in change.items():
            spec[k] = {**spec[k], **v} if k == "model" else v
        for t in spec["added_tokens"]:
            t["normalized"] = True
        (tmp_path / "bpe" / "tokenizer.json").write_text(json.dumps(spec))
        with pytest.raises(ValueError, match=re.escape(why)):
            llama.load_tokenizer(tmp_path / "bpe")
    sp = llama.load_tokenizer(tiny).vocab_size
    cfg = dict(json.loads((tiny / "config.json").read_text()), vocab_size=20 * sp)  # padded, as tables often are
    backbones.write_random(tmp_path / "padded", cfg, tiny / "tokenizer.model")
    assert decode.main([str(tmp_path / "padded")]) in (0, None)
    assert all(i < sp for i in json.loads(capsys.readouterr().out)["new_ids"])
    assert decode.main([str(tiny), "--prompt", "Q: is it?</s>A:"]) == 2  # HF: id 2; sentencepiece: text
    assert "holds the special token '</s>', which HF would read as that token" in capsys.readouterr().err
