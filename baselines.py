"""The conventional recommenders of the paper's Table 1 (CRM rows), besides SASRec.

Every model scores a (user, liked-item history, target item) triple with one logit, forward(user, hist, item) -> (B,),
hist (B, T) left-padded with item id 0. MF, NCF and GRU4Rec share the rest of SASRec's interface (what the joint stage's
CF encoder needs): user_embedding(user, hist) -> (B, d), item_embedding(item) -> (B, d), attribute `dim`.
- Pop: smoothed like-rates of the user and of the item, fitted from train counts.
- MF: matrix factorization with biases (Koren et al. 2009).
- NCF: NeuMF, GMF plus an MLP (He et al. 2017).
- GRU4Rec: a GRU over the liked-item history (Hidasi et al. 2016), the paper's "RNN" row.
- MC: a first-order Markov chain from the last liked item to the target (Rendle et al. 2010).
Pop and MC have no gradient training: `fit(user, item, label, last)` sets their tables
(nn.Parameters, so that checkpoints hold them) in closed form from the train rows.
"""
import torch
import torch.nn as nn


def _logit(p):
    return torch.log(p) - torch.log1p(-p)


def _smoothed_rate(index, label, size, prior, strength):
    """(positives + strength * prior) / (count + strength) per id in [0, size), prior a scalar or one per id."""
    pos = torch.zeros(size, dtype=torch.float64).index_add_(0, index, label.double())
    cnt = torch.zeros(size, dtype=torch.float64).index_add_(0, index, torch.ones_like(index, dtype=torch.float64))
    return (pos + strength * prior) / (cnt + strength)


class Pop(nn.Module):
    """Popularity: logit p = logit r_u + logit r_i - logit r, with r_u, r_i the user's and the
    item's like-rates smoothed toward the global like-rate r (a naive-Bayes combination): the
    non-personalized floor of the benchmark, with no paper of its own."""

    def __init__(self, n_users, n_items, strength=5.0):
        super().__init__()
        self.strength = strength
        self.user_logit = nn.Parameter(torch.zeros(n_users + 1))
        self.item_logit = nn.Parameter(torch.zeros(n_items + 1))
        self.global_logit = nn.Parameter(torch.zeros(1))

    @torch.no_grad()
    def fit(self, user, item, label, last=None):
        r = label.double().mean()
        self.global_logit.copy_(_logit(r))
        self.user_logit.copy_(_logit(_smoothed_rate(user, label, len(self.user_logit), r, self.strength)))
        self.item_logit.copy_(_logit(_smoothed_rate(item, label, len(self.item_logit), r, self.strength)))

    def forward(self, user, hist, item):
        return self.user_logit[user] + self.item_logit[item] - self.global_logit


class MC(nn.Module):
    """First-order Markov chain (Rendle, Freudenthaler & Schmidt-Thieme, "Factorizing Personalized Markov Chains for
    Next-Basket Recommendation", WWW 2010, the MC part). The state is the user's last liked item j; target i scores
    the log-odds of a like for the transition j -> i, from the train rows with that (last liked, target) pair,
    smoothed toward the target's own like-rate, itself smoothed toward the global rate r:
        r_i    = (pos_i + a r) / (n_i + a)
        r_{ji} = (pos_{ji} + b r_i) / (n_{ji} + b)
    in a dense (n_items+1)^2 table (fine for ML-1M's 3.3k items). The textbook chain, log P(i | j),
    ranks worse than chance on this split (test AUC 0.470; the paper's MC row: 0.467)."""

    def __init__(self, n_items, item_strength=5.0, pair_strength=2.0):
        super().__init__()
        self.n_items, self.item_strength, self.pair_strength = n_items, item_strength, pair_strength
        self.item_logit = nn.Parameter(torch.zeros(n_items + 1))
        self.trans_logit = nn.Parameter(torch.zeros((n_items + 1) ** 2))  # flat [j * (n+1) + i]

    @torch.no_grad()
    def fit(self, user, item, label, last):
        n = self.n_items
        r_i = _smoothed_rate(item, label, n + 1, label.double().mean(), self.item_strength)  # (n+1,)
        pair = last * (n + 1) + item  # smoothed toward the target's r_i: prior[j*(n+1)+i] = r_i
        r_ji = _smoothed_rate(pair, label, (n + 1) ** 2, r_i.repeat(n + 1), self.pair_strength)
        self.item_logit.copy_(_logit(r_i))
        self.trans_logit.copy_(_logit(r_ji))

    def forward(self, user, hist, item):
        return self.trans_logit[hist[:, -1] * (self.n_items + 1) + item]  # state: the last like (0 = none)


class MF(nn.Module):
    """Matrix factorization with biases, trained pointwise with BCE on the like label:
        logit = <p_u, q_i> + b_u + b_i + b
    (Koren, Bell & Volinsky, "Matrix Factorization Techniques for Recommender Systems", IEEE Computer 2009)."""

    def __init__(self, n_users, n_items, dim=64):
        super().__init__()
        self.dim = dim
        self.user_emb, self.item_emb = nn.Embedding(n_users + 1, dim), nn.Embedding(n_items + 1, dim)
        self.user_bias, self.item_bias = nn.Embedding(n_users + 1, 1), nn.Embedding(n_items + 1, 1)
        self.global_bias = nn.Parameter(torch.zeros(1))
        for e in (self.user_emb, self.item_emb):
            nn.init.normal_(e.weight, std=0.1)
        for e in (self.user_bias, self.item_bias):
            nn.init.zeros_(e.weight)

    def user_embedding(self, user, hist):
        return self.user_emb(user)

    def item_embedding(self, item):
        return self.item_emb(item)

    def biases(self, user, item):
        """(B,), (B,) -> the score's bias split by side: (b_u + b, b_i), each (B,)."""
        return self.user_bias(user).squeeze(-1) + self.global_bias, self.item_bias(item).squeeze(-1)

    def forward(self, user, hist, item):
        bu, bi = self.biases(user, item)
        return (self.user_emb(user) * self.item_emb(item)).sum(-1) + bu + bi


class NCF(nn.Module):
    """NeuMF (He et al., "Neural Collaborative Filtering", WWW 2017): a GMF branch p_u * q_i and
    an MLP branch over [p'_u, q'_i] (widths 2d -> d -> d/2), concatenated into one linear output.
    Each branch has its own embeddings, as in the paper."""

    def __init__(self, n_users, n_items, dim=64, dropout=0.2):
        super().__init__()
        self.dim = dim
        self.user_gmf, self.item_gmf = nn.Embedding(n_users + 1, dim), nn.Embedding(n_items + 1, dim)
        self.user_mlp, self.item_mlp = nn.Embedding(n_users + 1, dim), nn.Embedding(n_items + 1, dim)
        self.mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * dim, dim), nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(dim, dim // 2), nn.ReLU())
        self.out = nn.Linear(dim + dim // 2, 1)
        for e in (self.user_gmf, self.item_gmf, self.user_mlp, self.item_mlp):
            nn.init.normal_(e.weight, std=0.1)

    def user_embedding(self, user, hist):
        return self.user_gmf(user)

    def item_embedding(self, item):
        return self.item_gmf(item)

    def forward(self, user, hist, item):
        gmf = self.user_gmf(user) * self.item_gmf(item)  # (B, d)
        mlp = self.mlp(torch.cat([self.user_mlp(user), self.item_mlp(item)], dim=-1))  # (B, d/2)
        return self.out(torch.cat([gmf, mlp], dim=-1)).squeeze(-1)


class GRU4Rec(nn.Module):
    """GRU4Rec (Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks",
    ICLR 2016): a GRU reads the liked-item history; its final hidden state h_u scores the target
        logit = <h_u, q_i> + b_i + b
    trained pointwise with BCE on the like label (CoLLM's setting) instead of session ranking."""

    def __init__(self, n_items, dim=64, dropout=0.2):
        super().__init__()
        self.dim = dim
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.item_bias = nn.Embedding(n_items + 1, 1)
        self.global_bias = nn.Parameter(torch.zeros(1))
        self.h0 = nn.Parameter(torch.zeros(dim))  # the state of an empty history
        nn.init.normal_(self.item_emb.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)
        nn.init.zeros_(self.item_emb.weight[0])  # the padding row, which normal_ overwrote

    def user_embedding(self, user, hist):
        """(B,), (B, T) left-padded -> (B, d): the GRU state after the last liked item."""
        B, T = hist.shape
        lengths = (hist != 0).sum(1)  # (B,)
        # Left-align each row (drop its left padding) so that packing skips the padding.
        shift = (torch.arange(T, device=hist.device)[None, :] + (T - lengths)[:, None]) % T  # (B, T)
        x = self.dropout(self.item_emb(hist.gather(1, shift)))  # (B, T, d)
        h0 = self.h0.expand(1, B, self.dim).contiguous()  # (layers=1, B, d)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, h = self.gru(packed, h0)  # h: (1, B, d)
        return torch.where((lengths > 0)[:, None], h[0], self.h0.expand(B, self.dim))

    def item_embedding(self, item):
        return self.item_emb(item)

    def biases(self, user, item):
        """(B,), (B,) -> the score's bias split by side: (b, b_i), each (B,); no user bias."""
        return self.global_bias.expand(item.shape), self.item_bias(item).squeeze(-1)

    def forward(self, user, hist, item):
        bu, bi = self.biases(user, item)
        return (self.user_embedding(user, hist) * self.item_emb(item)).sum(-1) + bu + bi
