"""The baselines: shared interface, toy overfitting, and the closed-form fits of Pop and MC."""
import numpy as np
import pytest
import torch

import metrics as M
from baselines import MC, MF, NCF, GRU4Rec, Pop

torch.set_num_threads(1)


def learned_models():
    torch.manual_seed(0)
    return {"mf": MF(10, 30, dim=16), "ncf": NCF(10, 30, dim=16, dropout=0.0),
            "gru4rec": GRU4Rec(30, dim=16, dropout=0.0)}


@pytest.mark.parametrize("name", ["mf", "ncf", "gru4rec"])
def test_learned_models_overfit_a_toy_set(name, toy_rows, overfit_auc):
    assert overfit_auc(learned_models()[name], toy_rows()) > 0.95


@pytest.mark.parametrize("name", ["mf", "ncf", "gru4rec"])
def test_interface(name, toy_rows):
    model = learned_models()[name].eval()
    rows = toy_rows(n=5)
    assert model(rows["user"], rows["hist"], rows["item"]).shape == (5,)
    assert model.user_embedding(rows["user"], rows["hist"]).shape == (5, model.dim)
    assert model.item_embedding(rows["item"]).shape == (5, model.dim)


def test_gru4rec_ignores_padding():
    model = learned_models()["gru4rec"].eval()
    user = torch.tensor([1, 2, 3])
    a = model.user_embedding(user, torch.tensor([[0, 0, 0, 4, 5], [0, 0, 0, 0, 7], [0, 0, 0, 0, 0]]))
    b = model.user_embedding(user, torch.tensor([[4, 5], [0, 7], [0, 0]]))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[2], model.h0.detach())  # an empty history is the learned start state


def test_pop_fits_like_rates_and_overfits_an_additive_toy_set():
    rng = np.random.default_rng(0)
    user, item = torch.from_numpy(rng.integers(1, 11, 64)), torch.from_numpy(rng.integers(1, 31, 64))
    label = (item % 2 == 0).long()  # the item alone decides
    model = Pop(10, 30)
    model.fit(user, item, label)
    scores = model(user, None, item).detach().numpy()
    assert M.auc(label.numpy(), scores) > 0.95
    # a user with no train row sits exactly at the item's rate; global logit is logit(mean label)
    r = label.double().mean()
    assert torch.isclose(model.global_logit.double(), torch.log(r / (1 - r)).float().double(), atol=1e-6)
    assert model.user_logit[0] == model.global_logit[0]


def test_mc_overfits_distinct_transitions():
    rng = np.random.default_rng(0)
    last = torch.arange(64) % 30 + 1
    item = torch.arange(64) // 30 + 1  # 64 distinct (last, item) pairs
    label = torch.from_numpy(rng.permutation(np.arange(64) % 2))
    model = MC(30, item_strength=1e6)  # item rates pinned to the global rate: only transitions inform
    model.fit(None, item, label, last)
    scores = model(None, last[:, None], item).detach().numpy()
    assert M.auc(label.numpy(), scores) == 1.0
    unseen = model(None, torch.tensor([[0]]), torch.tensor([5]))
    assert torch.isclose(unseen, model.item_logit[5])  # an unseen transition falls back to the item
