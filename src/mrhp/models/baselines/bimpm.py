"""BiMPM (Wang et al., "Bilateral Multi-Perspective Matching for Natural Language Sentences", IJCAI 2017), a
text-only baseline of the paper's Tables 3-4, between the product text and the review text.

Context layer: a BiLSTM over each text (shared by both). Matching layer, in both directions (review against
product, product against review) and for the forward and the backward half of the context separately, four
strategies of multi-perspective cosine `m_k = cos(w_k * v1, w_k * v2)`, k = 1..l:
full (each step against the other text's final state: the last real forward step, the first backward step),
max-pooling (the maximum over the other text's steps), attentive (against the attention-weighted mean of the
other text) and max-attentive (against the other text's step of highest cosine). Aggregation layer: a BiLSTM
over each text's `8 l` matching vectors, whose final states (4 vectors) go through an MLP -> score.

Taken from the paper and SPEC 8: the three layers and the four strategies with learned perspective weights.

Decided here: `PERSPECTIVES = 10` (the paper used 20 for sentences; review and product texts are up to 128
tokens, and the max-pooling strategy holds an `[N, L, L, l]` tensor); context and aggregation BiLSTMs with
`d / 2` units per direction; the attentive mean uses a softmax over the cosines rather than dividing by their
sum, which can be 0 or negative; one hidden layer of d units in the scorer. Images are ignored by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrhp.config import ModelConfig, ModelInputs
from mrhp.data.batching import Batch
from mrhp.models.baselines.layers import BiLSTM, Ranker, masked_softmax, scorer
from mrhp.models.paper import ModelOutput

PERSPECTIVES = 10
STRATEGIES = ("full", "max_pooling", "attentive", "max_attentive")


def perspective_cosine(a: Tensor, b: Tensor, weights: Tensor) -> Tensor:
    """m_k = cos(w_k * a, w_k * b): a, b [N, L, h], weights [l, h] -> [N, L, l]"""
    return F.cosine_similarity(a[:, :, None, :] * weights, b[:, :, None, :] * weights, dim=-1)


def pairwise_perspective_cosine(a: Tensor, b: Tensor, weights: Tensor) -> Tensor:
    """cos(w_k * a_i, w_k * b_j) for every pair: a [N, La, h], b [N, Lb, h], weights [l, h] -> [N, La, Lb, l]"""
    a_unit = F.normalize(a[:, :, None, :] * weights, dim=-1)  # [N, La, l, h]
    b_unit = F.normalize(b[:, :, None, :] * weights, dim=-1)  # [N, Lb, l, h]
    return torch.einsum("nilh,njlh->nijl", a_unit, b_unit)


class MultiPerspectiveMatching(nn.Module):
    """The four strategies of one direction and one context half: a [N, La, h] matched against b [N, Lb, h]
    (zero at padding; `b_final` [N, h] is b's final state) -> [N, La, 4 l], zero at a's padding."""

    def __init__(self, hidden: int):
        super().__init__()
        self.weights = nn.ParameterDict(
            {name: nn.Parameter(torch.rand(PERSPECTIVES, hidden)) for name in STRATEGIES}
        )

    def forward(self, a: Tensor, a_mask: Tensor, b: Tensor, b_mask: Tensor, b_final: Tensor) -> Tensor:
        la = a.shape[1]
        full = perspective_cosine(a, b_final[:, None, :].expand(-1, la, -1), self.weights["full"])  # [N, La, l]
        pairs = pairwise_perspective_cosine(a, b, self.weights["max_pooling"])  # [N, La, Lb, l]
        pairs = pairs.masked_fill(~b_mask[:, None, :, None], float("-inf"))
        max_pooling = pairs.max(dim=2).values  # [N, La, l]
        max_pooling = torch.where(torch.isfinite(max_pooling), max_pooling, torch.zeros_like(max_pooling))
        cosine = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(1, 2)  # [N, La, Lb]
        attention = masked_softmax(cosine, b_mask[:, None, :], dim=2)  # [N, La, Lb]
        attentive = perspective_cosine(a, attention @ b, self.weights["attentive"])  # [N, La, l]
        best = cosine.masked_fill(~b_mask[:, None, :], float("-inf")).argmax(dim=2)  # [N, La]
        chosen = torch.gather(b, 1, best[..., None].expand(-1, -1, b.shape[2]))  # [N, La, h]
        max_attentive = perspective_cosine(a, chosen, self.weights["max_attentive"])  # [N, La, l]
        matched = torch.cat([full, max_pooling, attentive, max_attentive], dim=2)  # [N, La, 4l]
        # b without tokens offers nothing to match: all strategies are 0 (not the cosine with a zero vector).
        keep = a_mask[..., None] & b_mask.any(dim=1)[:, None, None]
        return matched * keep.to(matched.dtype)


class BiMPM(Ranker):
    """f(p, r) of BiMPM; see the module docstring."""

    def __init__(self, config: ModelConfig, inputs: ModelInputs):
        super().__init__(inputs.vocab_size, inputs.embedding_dim, config.dropout)
        h = config.hidden_size // 2
        self.hidden = h
        self.context = BiLSTM(inputs.embedding_dim, h)
        # Directions x context halves: review vs product and product vs review, forward and backward each.
        self.matching = nn.ModuleDict(
            {f"{side}_{half}": MultiPerspectiveMatching(h) for side in ("review", "product") for half in ("fw", "bw")}
        )
        self.aggregation = BiLSTM(8 * PERSPECTIVES, h)
        self.dropout = nn.Dropout(config.dropout)
        self.scorer = scorer(4 * h, (config.hidden_size,), config.dropout)

    def match(self, side: str, a: Tensor, a_mask: Tensor, b: Tensor, b_mask: Tensor, b_final: Tensor) -> Tensor:
        """Both context halves of a matched against b: -> [N, La, 8 l]"""
        h = self.hidden
        forward = self.matching[f"{side}_fw"](a[..., :h], a_mask, b[..., :h], b_mask, b_final[:, :h])
        backward = self.matching[f"{side}_bw"](a[..., h:], a_mask, b[..., h:], b_mask, b_final[:, h:])
        return torch.cat([forward, backward], dim=2)

    def forward(self, batch: Batch) -> ModelOutput:
        rows = batch.review_product
        m_p, m_r = batch.product_token_mask, batch.review_token_mask
        product_encoded = self.context(self.embed(batch.product_tokens, m_p), m_p)  # [B, Lp, 2h]
        product_final = self.context.final_states(product_encoded, m_p)[rows]  # [N, 2h]
        product, m_pr = self.dropout(product_encoded)[rows], m_p[rows]  # [N, Lp, 2h]
        review = self.context(self.embed(batch.review_tokens, m_r), m_r)  # [N, Lr, 2h]
        review_final = self.context.final_states(review, m_r)  # [N, 2h]
        review = self.dropout(review)
        review_matched = self.match("review", review, m_r, product, m_pr, product_final)  # [N, Lr, 8l]
        product_matched = self.match("product", product, m_pr, review, m_r, review_final)  # [N, Lp, 8l]
        review_aggregated = self.aggregation(review_matched, m_r)
        product_aggregated = self.aggregation(product_matched, m_pr)
        z = torch.cat(
            [
                self.aggregation.final_states(review_aggregated, m_r),
                self.aggregation.final_states(product_aggregated, m_pr),
            ],
            dim=1,
        )  # [N, 4h]
        return self.output(self.scorer(z).squeeze(1), batch)
