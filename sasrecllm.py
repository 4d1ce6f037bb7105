"""SASRec, the collaborative encoder that SASRecLLM plugs into the LLM.

SASRec: Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018 (arXiv:1808.09781). Pre-LayerNorm blocks
of causal self-attention and a point-wise feed-forward network read a user's liked-item history; the last position's
output is the user state, and a (user, item) score is the dot product of the user state with the item embedding.

Differences from the original, each chosen for this benchmark (CoLLM's ML-1M split):
- the default objective is pointwise BCE on the like/dislike label (`forward`), as CoLLM trains it;
  the original next-item objective with sampled negatives is `next_item_loss` (`--objective next`);
- optional learned user/item/global biases are added to the dot product;
- positions are counted from the right end of the sequence (the last item always gets position
  maxlen-1), so the user state does not depend on how much left padding a batch carries.

Shapes: B batch, T sequence length (<= maxlen), d model width. Item id 0 is padding.

The SASRecLLM parts (mapping layer, prompt splice, the hybrid model) follow below SASRec.
"""
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# SASRec

class Block(nn.Module):
    """One layer, read in one place: x + Dropout(Attn(LN(x))), then x + Dropout(FFN(LN(x))); padding zeroed."""

    def __init__(self, dim, n_heads, dropout):
        super().__init__()
        assert dim % n_heads == 0, f"dim {dim} is not divisible by n_heads {n_heads}"
        self.n_heads = n_heads
        # The sub-layers' weights (checkpoint keys attn.qkv, attn.out, ffn.conv1, ffn.conv2); the FFN is SASRec's
        # two Conv1d(k=1) layers and the dropout between them.
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = nn.ModuleDict(dict(qkv=nn.Linear(dim, 3 * dim), out=nn.Linear(dim, dim)))
        self.ln_2 = nn.LayerNorm(dim)
        self.ffn = nn.ModuleDict(dict(conv1=nn.Conv1d(dim, dim, kernel_size=1),
                                      conv2=nn.Conv1d(dim, dim, kernel_size=1), dropout=nn.Dropout(dropout)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, keep, allowed):
        # x: (B, T, d); keep: (B, T) bool, False at padding; allowed: (B, 1, T, T) bool, SASRec.encode's
        a, f = self.attn, self.ffn
        B, T, d = x.shape
        qkv = a.qkv(self.ln_1(x)).view(B, T, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, nh, T, hs) each
        # Dropout is applied to the sub-layer's output, not to the attention probabilities: on CPU
        # the (B, nh, T, T) dropout mask cost more than the rest of the layer.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)          # (B, nh, T, hs)
        x = x + self.dropout(a.out(y.transpose(1, 2).reshape(B, T, d)))        # (B, T, d)
        # The point-wise FFN: a kernel-1 convolution is a per-position linear map, so the Conv1d
        # weights (d_out, d_in, 1) are applied as F.linear on (B, T, d): the same numbers without
        # two transposes, and much faster on CPU than the convolution kernel.
        y = F.relu(F.linear(self.ln_2(x), f.conv1.weight.squeeze(-1), f.conv1.bias))
        x = x + self.dropout(F.linear(f.dropout(y), f.conv2.weight.squeeze(-1), f.conv2.bias))
        return x * keep[..., None]


class SASRec(nn.Module):
    """score(user, hist, item) = <user state of hist, e_item> (+ b_user + b_item + b); user feeds only b_user."""

    def __init__(self, n_items, n_users=0, dim=64, n_layers=2, n_heads=4, maxlen=25, dropout=0.2, bias=True):
        super().__init__()
        self.dim, self.maxlen = dim, maxlen
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(maxlen, dim)
        self.emb_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(dim, n_heads, dropout) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(dim)
        self.bias = bias
        if bias:
            self.user_bias = nn.Embedding(n_users + 1, 1)
            self.item_bias = nn.Embedding(n_items + 1, 1)
            self.global_bias = nn.Parameter(torch.zeros(1))
            nn.init.zeros_(self.user_bias.weight)
            nn.init.zeros_(self.item_bias.weight)
        nn.init.normal_(self.item_emb.weight, std=1.0 / math.sqrt(dim))
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, hist):
        """hist: (B, T) left-padded item ids -> (B, T, d), position t having read hist[:, :t+1]."""
        B, T = hist.shape
        assert T <= self.maxlen, f"history length {T} > maxlen {self.maxlen}"
        keep = hist != 0  # (B, T)
        pos = torch.arange(self.maxlen - T, self.maxlen, device=hist.device)  # right-aligned positions
        x = self.item_emb(hist) * math.sqrt(self.dim) + self.pos_emb(pos)  # (B, T, d)
        x = self.emb_dropout(x) * keep[..., None]
        # Position t sees positions <= t and never a padded key. A padded query would then see no
        # key at all (softmax of all -inf is NaN), so every query may always see itself; padded
        # outputs are zeroed by each block anyway. One mask for every block.
        causal = torch.ones(T, T, dtype=torch.bool, device=hist.device).tril()  # (T, T) query x key
        allowed = causal & keep[:, None, :] | torch.eye(T, dtype=torch.bool, device=hist.device)  # (B, T, T)
        for block in self.blocks:
            x = block(x, keep, allowed[:, None])
        # A fully padded history ends in a zero vector, so its user state is ln_f's bias: a
        # learned "no history yet" state.
        return self.ln_f(x)

    def user_embedding(self, user, hist):
        """(B,), (B, T) -> (B, d): the last position's output. A user's rows with no new like between them
        share one history, so each distinct history is encoded once (train.py batches such rows together)."""
        uniq, inv = torch.unique(hist, dim=0, return_inverse=True)  # (U, T), (B,)
        # index_select, not [inv]: the rows that share a history sum their gradients, and [inv]'s
        # backward (index_put_ with accumulate) has CPU threads add them atomically, in an order
        # that varies from run to run; index_select's (index_add_) adds them in batch order.
        return self.encode(uniq)[:, -1].index_select(0, inv)  # (B, d)

    def item_embedding(self, item):
        """(B,) -> (B, d)"""
        return self.item_emb(item)

    def biases(self, user, item):
        """(B,), (B,) -> the score's bias split by side: (b_user + b, b_item), each (B,).
        Zeros without biases; user=None leaves the user bias out."""
        if not self.bias:
            zero = torch.zeros(item.shape, device=item.device)
            return zero, zero
        bu = self.global_bias.expand(item.shape)
        if user is not None:
            bu = bu + self.user_bias(user).squeeze(-1)
        return bu, self.item_bias(item).squeeze(-1)

    def forward(self, user, hist, item):
        """(B,), (B, T), (B,) -> logit (B,)"""
        bu, bi = self.biases(user, item)
        return (self.user_embedding(user, hist) * self.item_embedding(item)).sum(-1) + bu + bi

    def seq_logits(self, hist, targets):
        """The next-item objective: logit of targets[:, t] as the item after hist[:, :t+1].
        (B, T), (B, T) -> (B, T). The user bias is left out: it cannot rank items for a user."""
        h = self.encode(hist)  # (B, T, d)
        bu, bi = self.biases(None, targets)
        return (h * self.item_emb(targets)).sum(-1) + bu + bi

    def next_item_loss(self, b):
        """SASRec's original objective on a data.Batch holding seq (B, T+1): at every position, the true
        next liked item against one uniformly sampled negative, BCE on both; padded targets are ignored."""
        seq = b.inputs["seq"]                 # (B, T+1)
        hist, pos = seq[:, :-1], seq[:, 1:]   # (B, T) each
        neg = torch.randint(1, self.item_emb.num_embeddings, pos.shape, device=seq.device)
        keep = (pos != 0) & (hist != 0)       # a position with no history yet predicts nothing
        pos_logit, neg_logit = self.seq_logits(hist, pos), self.seq_logits(hist, neg)
        loss = (F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit), reduction="none")
                + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit), reduction="none"))
        return (loss * keep).sum() / keep.sum().clamp(min=1)


# -----------------------------------------------------------------------------
# SASRecLLM: collaborative tokens spliced into the LLM's prompt (paper Section 3.2)
#
#   history ──SASRec.user_embedding──> u (B, d) ──MappingLayer──> (B, k, D) ─┐
#   target  ──SASRec.item_embedding──> i (B, d) ──MappingLayer──> (B, k, D) ─┤ splice at the
#   prompt  ──embed_tokens──────────────────────────────────────> (B, T, D) ─┘ <UserID>/<TargetItemID> slots
#        ──> LLM (+ LoRA) ──> last position ──> z_Yes - z_No = s,  p = sigmoid(s),  BCE(s, y)

class MappingLayer(nn.Sequential):
    """Projects a d-wide CF embedding into k pseudo-token embeddings of the LLM's width D.

    (B, d) -> Linear(d, 10 d) -> ReLU -> Linear(10 d, k D) -> (B, k, D): the 2-layer MLP that expands
    x10 and then projects (paper Section 3.2; CoLLM's `llama_proj`), applied in order as an nn.Sequential.
    One mapping serves both the user and the item embedding, as they live in the same SASRec space."""

    def __init__(self, d, D, proj_token_num=1):
        super().__init__(OrderedDict(
            fc1=nn.Linear(d, 10 * d),
            act=nn.ReLU(),
            fc2=nn.Linear(10 * d, proj_token_num * D),
            tokens=nn.Unflatten(-1, (proj_token_num, D)),  # (B, k D) -> (B, k, D)
        ))
        self.k, self.D = proj_token_num, D


def splice(token_embeds, user_pos, item_pos, user_tokens, item_tokens):
    """The hybrid prompt: the text's token embeddings, with the collaborative tokens written into
    the placeholder slots that data.encode_prompts left at <UserID> and <TargetItemID>.

    token_embeds: (B, T, D)  embed_tokens(input_ids), left-padded
    user_pos, item_pos: (B, k) slot indices into T (already shifted by each row's left padding)
    user_tokens, item_tokens: (B, k, D) from the mapping layer
    Every other position, padding included, keeps its token embedding."""
    x = token_embeds.clone()                                  # keep embed_tokens' output intact
    rows = torch.arange(x.size(0), device=x.device)[:, None]  # (B, 1), broadcasts against (B, k)
    x[rows, user_pos] = user_tokens.to(x.dtype)               # x[b, user_pos[b, j]] = user_tokens[b, j]
    x[rows, item_pos] = item_tokens.to(x.dtype)
    return x


def cf_vectors(cf, user, hist, item, with_bias=False):
    """The CF encoder's user vector (its user_embedding of the liked-item history) and item
    vector (its item_embedding of the target), (B, d) each: the paper's inputs to the mapping layer.

    with_bias (train.py's default, going beyond the paper): a biased dot-product model scores
        logit = <u, i> + (b_user + b) + b_item,
    and the bare embeddings u, i leave the biases out. Appending one coordinate per side,
        u' = [u, 1, b_user + b],   i' = [i, b_item, 1],   so that  <u', i'> = logit  exactly,
    hands the mapping layer everything the CF model scores with, as (B, d + 2) vectors. On a temporal split the item
    bias (popularity) carries much of a CF model's AUC (see the README's Pop row), and the bare embeddings hide it."""
    u, i = cf.user_embedding(user, hist), cf.item_embedding(item)  # (B, d) each
    if not with_bias:
        return u, i
    bu, bi = cf.biases(user, item)  # (B,) each
    one = torch.ones_like(bu)
    return torch.cat([u, one[:, None], bu[:, None]], -1), torch.cat([i, bi[:, None], one[:, None]], -1)


class SASRecLLM(nn.Module):
    """The LLM recommender in its three modes (paper Sections 3.2 and 4.1):

    - "icl":       the base LLM on the text-only prompt, no LoRA, no training;
    - "tallrec":   LoRA on the text-only prompt (TALLRec, and the paper's stage 2);
    - "sasrecllm": LoRA plus collaborative tokens from `cf` spliced in (stage 3).

    Score: s = z_Yes - z_No, the last position's logits of the "Yes" and "No" tokens, computed from those two rows
    of lm_head only. p = sigmoid(s) = softmax([z_Yes, z_No])[0] is the probability of "Yes" against "No", and BCE is
    taken on s. CoLLM instead uses sigmoid(z_Yes) alone, which makes the probability depend on the absolute level of
    one logit (shifted by anything that moves all logits together) and lets "No" rise with "Yes"; the two-way
    softmax is invariant to a shared shift and compares exactly the two answers the prompt allows."""

    def __init__(self, llm, yes_id, no_id, cf=None, proj_token_num=1, cf_bias=False):
        super().__init__()
        self.llm = llm
        self.answer_ids = [yes_id, no_id]
        self.cf, self.cf_bias = cf, cf_bias
        d_in = None if cf is None else cf.dim + (2 if cf_bias else 0)  # cf_vectors' width
        # On the LLM's device, in fp32 (trainable parameters stay fp32 whatever the LLM's dtype).
        self.mapping = None if cf is None else MappingLayer(d_in, llm.cfg.hidden_size, proj_token_num).to(
            llm.lm_head.weight.device)

    def forward(self, input_ids, attention_mask, user_pos=None, item_pos=None, user=None, hist=None, item=None):
        """(B, T) left-padded prompt ids and mask; for collaborative prompts also the (B, k) slot positions and the
        CF encoder's inputs: user (B,), liked-item history (B, maxlen), item (B,). -> s = z_Yes - z_No, (B,)"""
        x = self.llm.model.embed_tokens(input_ids)                           # (B, T, D)
        if self.cf is not None:
            u, i = cf_vectors(self.cf, user, hist, item, self.cf_bias)       # (B, d) each, d = cf.dim (+2)
            x = splice(x, user_pos, item_pos, self.mapping(u), self.mapping(i))  # mapped: (B, k, D) each
        h = self.llm(inputs_embeds=x, attention_mask=attention_mask)        # (B, T, D)
        z = self.llm.token_logits(h[:, -1], self.answer_ids)                 # (B, 2): left padding puts every prompt's end at T-1
        return z[:, 0] - z[:, 1]                                             # (B,) s = z_Yes - z_No
