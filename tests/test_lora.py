"""lora.py: invariants (zero init is the identity, merged == unmerged, only LoRA trains) and
parity with peft in both directions (an adapter saved here loads in peft, and the reverse)."""
import json

import pytest
import torch

import llama
import lora

torch.set_num_threads(2)


def batch(vocab):
    ids = torch.randint(3, vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    return ids, mask


def randomize_b(model, seed=1):
    """A trained-looking adapter: B is zero after init, so give it random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def test_zero_init_is_identity_and_only_lora_trains(tiny_dir):
    model = llama.load_model(tiny_dir)
    ids, mask = batch(model.cfg.vocab_size)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask)
    lora.inject(model, r=4, alpha=8, dropout=0.05)
    assert not model.model.layers[0].self_attn.q_proj.training  # injected into an eval() model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * 2 * model.cfg.num_hidden_layers  # (A, B) x (q, v) x layers
    assert "model.layers.0.self_attn.q_proj.weight" in model.state_dict()  # base names survive
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask), before, atol=0, rtol=0)


def test_training_step_moves_only_lora(tiny_dir):
    model = lora.inject(llama.load_model(tiny_dir), r=4, alpha=8, dropout=0.05)
    base = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    ids, mask = batch(model.cfg.vocab_size)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    h = model(input_ids=ids, attention_mask=mask)[:, -1]
    model.token_logits(h, [3, 4]).sum().backward()
    opt.step()
    for k, v in model.state_dict().items():
        if "lora_" not in k:
            assert torch.equal(v, base[k]), k
    assert any(lora.lora_state_dict(model)[k].abs().sum() > 0 for k in lora.lora_state_dict(model)
               if "lora_B" in k)


def test_merged_equals_unmerged(tiny_dir):
    model = lora.inject(llama.load_model(tiny_dir), r=4, alpha=8, dropout=0.05).eval()
    randomize_b(model)
    ids, mask = batch(model.cfg.vocab_size)
    w = model.model.layers[1].self_attn.v_proj.weight.clone()
    with torch.no_grad():
        unmerged = model(input_ids=ids, attention_mask=mask)
        lora.merge(model)
        assert not torch.equal(model.model.layers[1].self_attn.v_proj.weight, w)
        merged = model(input_ids=ids, attention_mask=mask)
        lora.unmerge(model)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.model.layers[1].self_attn.v_proj.weight, w, atol=1e-6, rtol=0)
    assert not model.model.layers[1].self_attn.v_proj.merged  # eval() did not merge anything


def test_save_load_roundtrip_and_errors(tiny_dir, tmp_path):
    a = lora.inject(llama.load_model(tiny_dir), r=4, alpha=8, dropout=0.0).eval()
    randomize_b(a)
    lora.save_adapter(a, tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["target_modules"]) == (4, 8, ["q_proj", "v_proj"])
    b = lora.load_adapter(llama.load_model(tiny_dir), tmp_path / "ad").eval()  # injects from config
    ids, mask = batch(a.cfg.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(b(input_ids=ids, attention_mask=mask), a(input_ids=ids, attention_mask=mask))
    wrong_rank = lora.inject(llama.load_model(tiny_dir), r=2, alpha=8)
    with pytest.raises(ValueError, match="r 4, lora_alpha 8, but the model's LoRA has others"):
        lora.load_adapter(wrong_rank, tmp_path / "ad")


# ----------------------------------------------------------------------------------------------
# Parity with peft


def hf_and_ours(tmp_path):
    """The same tiny random weights as an HF LlamaForCausalLM and as llama.Llama."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   rms_norm_eps=1e-5)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "base")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base").eval()
    return hf, llama.load_model(tmp_path / "base").eval()


def compare(hf, ours, ids, mask):
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
        got = ours.logits(ours(input_ids=ids, attention_mask=mask))
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=1e-5, rtol=1e-5)


def test_peft_adapter_loads_here(tmp_path):
    peft = pytest.importorskip("peft")
    hf, ours = hf_and_ours(tmp_path)
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                             task_type="CAUSAL_LM")
    hf = peft.get_peft_model(hf, config).eval()
    randomize_b(hf)
    hf.save_pretrained(tmp_path / "peft_adapter")
    lora.load_adapter(ours, tmp_path / "peft_adapter")
    assert ours.model.layers[0].self_attn.q_proj.scaling == 2.0
    compare(hf, ours, *batch(64))


def test_adapter_saved_here_loads_in_peft(tmp_path):
    peft = pytest.importorskip("peft")
    hf, ours = hf_and_ours(tmp_path)
    lora.inject(ours, r=4, alpha=16, dropout=0.05).eval()
    randomize_b(ours)
    lora.save_adapter(ours, tmp_path / "ours_adapter")
    hf = peft.PeftModel.from_pretrained(hf, tmp_path / "ours_adapter").eval()
    assert hf.peft_config["default"].r == 4 and hf.peft_config["default"].lora_alpha == 16
    compare(hf, ours, *batch(64))
