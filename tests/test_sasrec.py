"""SASRec's invariants: causal masking, padding invariance, and that it can fit a toy set."""
import torch

from data import pad_left
from sasrecllm import SASRec

torch.set_num_threads(1)


def toy_model(**kw):
    torch.manual_seed(0)
    return SASRec(n_items=30, n_users=10, dim=16, n_heads=2, maxlen=8, dropout=0.0, **kw).eval()


def test_causal_mask_later_items_never_change_earlier_positions():
    model = toy_model()
    hist = torch.tensor([[0, 0, 3, 7, 5, 9, 2, 4]])
    h0 = model.encode(hist)
    for t in range(2, 7):
        changed = hist.clone()
        changed[0, t + 1:] = torch.tensor([11, 12, 13, 14, 15, 16, 17])[: 7 - t]
        h1 = model.encode(changed)
        torch.testing.assert_close(h1[:, : t + 1], h0[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(h1[:, -1], h0[:, -1])  # the last position does see them


def test_padding_does_not_change_the_user_state():
    model = toy_model()
    histories = [[3, 7, 5], [1], [], [2, 4, 6, 8, 10, 12]]
    user = torch.arange(1, 5)
    full = model.user_embedding(user, pad_left(histories, 8))  # (4, d)
    short = model.user_embedding(user, pad_left(histories, 6))
    torch.testing.assert_close(short, full, rtol=0, atol=1e-5)
    for b, h in enumerate(histories):  # alone in a batch, at its own minimal padding
        alone = model.user_embedding(user[b:b + 1], pad_left([h], max(1, len(h))))
        torch.testing.assert_close(alone, full[b:b + 1], rtol=0, atol=1e-5)
    assert torch.isfinite(full).all()


def test_padding_outputs_are_zeroed_before_the_final_norm():
    model = toy_model()
    hist = torch.tensor([[0, 0, 0, 0, 0, 1, 2, 3]])
    outs = []  # every block's output, as SASRec.encode runs them
    for block in model.blocks:
        block.register_forward_hook(lambda module, inputs, out: outs.append(out))
    model.encode(hist)
    assert len(outs) == len(model.blocks)
    for x in outs:
        assert (x[0, :5] == 0).all() and (x[0, 5:] != 0).any()


def test_interface_shapes():
    model = toy_model()
    user, hist, item = torch.tensor([1, 2]), torch.tensor([[0] * 6 + [1, 2], [0] * 7 + [5]]), torch.tensor([3, 4])
    assert model.user_embedding(user, hist).shape == (2, model.dim)
    assert model.item_embedding(item).shape == (2, model.dim)
    assert model(user, hist, item).shape == (2,)
    assert model.seq_logits(hist, hist).shape == hist.shape


def test_sasrec_overfits_a_toy_set(toy_rows, overfit_auc):
    torch.manual_seed(0)
    model = SASRec(n_items=30, n_users=10, dim=16, n_heads=2, maxlen=8, dropout=0.0, bias=False)
    assert overfit_auc(model, toy_rows()) > 0.95
