"""SSE-Cross (Abavisani et al., "Multimodal Categorization of Crisis Events in Social Media", CVPR 2020), a
multimodal baseline of the paper's Tables 3-4.

Text and image encoders give an item's text vector `t` and image vector `v`; the cross-attention of the paper
lets each modality gate the other, so that the weaker (uninformative or misleading) one is damped:
`t' = sigmoid(W_t v + b_t) * t`, `v' = sigmoid(W_v t + b_v) * v`. Stochastic shared embeddings (SSE) regularise
training: with probability `SHARE_PROBABILITY`, a sample's embedding of one modality is replaced by the same
modality's embedding of another sample of the same label, so the model sees new cross-modal pairs that keep the
label. Product and review are encoded the same way and joined for scoring:
`[t'_p, v'_p, t'_r, v'_r, t'_p * t'_r, v'_p * v'_r]` -> MLP -> score, trained with the pairwise hinge loss
(eq. 34).

Decided here, where the original (single social-media posts, BERT and DenseNet features, class labels) is silent
about a product-review pair: one text encoder (a BiLSTM, `d / 2` units per direction, mean-pooled) and one image
encoder (Linear(F -> d) + one self-attention block, mean-pooled; the image store's region features as input)
shared by product and review; the label of SSE is the review's helpfulness level, and the exchange is among the
reviews of a training batch (products carry no label and are never exchanged); each modality of a review is
exchanged independently, with probability `SHARE_PROBABILITY = 0.25`, only with a review that has that modality
(an absent image stays absent), before the gates; the element-wise products for the product-review match; one
hidden layer of d units.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mrhp.config import ModelConfig, ModelInputs
from mrhp.data.batching import Batch
from mrhp.models.baselines.layers import SharedEncoderRanker, region_masks, scorer
from mrhp.models.paper import ModelOutput, masked_mean

SHARE_PROBABILITY = 0.25


def share_embeddings(x: Tensor, present: Tensor, labels: Tensor, probability: float) -> Tensor:
    """Stochastic shared embeddings: each row of `x [N, d]` is replaced, with `probability`, by the row of another
    sample of the same label drawn uniformly; only rows that have the modality (`present [N]`) give or take.
    -> [N, d]"""
    n = x.shape[0]
    candidates = (labels[:, None] == labels[None, :]) & present[None, :] & present[:, None]  # [N, N]
    candidates &= ~torch.eye(n, dtype=torch.bool, device=x.device)
    draws = torch.rand(n, n, device=x.device).masked_fill(~candidates, -1.0)  # [N, N]
    partner = draws.argmax(dim=1)  # [N]: a uniform pick among the candidates
    exchange = candidates.any(dim=1) & (torch.rand(n, device=x.device) < probability)  # [N]
    return torch.where(exchange[:, None], x[partner], x)


class SSECross(SharedEncoderRanker):
    """f(p, r) of SSE-Cross; see the module docstring."""

    def __init__(self, config: ModelConfig, inputs: ModelInputs):
        super().__init__(config, inputs)
        d = self.dim
        self.text_gate = nn.Linear(d, d)  # the image vector gates the text vector
        self.image_gate = nn.Linear(d, d)  # the text vector gates the image vector
        self.scorer = scorer(6 * d, (d,), config.dropout)

    def encode(self, tokens: Tensor, token_mask: Tensor, regions: Tensor, region_mask: Tensor) -> tuple[Tensor, Tensor]:
        """An item's text and image vectors: tokens [X, L], regions [X, M, F] -> ([X, d], [X, d])."""
        text = self.text_encoder(self.embed(tokens, token_mask), token_mask)  # [X, L, d]
        image = self.image_encoder(regions, region_mask)  # [X, M, d]
        return masked_mean(text, token_mask), masked_mean(image, region_mask)  # [X, d], [X, d]

    def gate(self, t: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """The cross-attention gates: t [X, d], v [X, d] -> (t', v'); an absent modality (zeros) stays zero."""
        return torch.sigmoid(self.text_gate(v)) * t, torch.sigmoid(self.image_gate(t)) * v

    def forward(self, batch: Batch) -> ModelOutput:
        rows = batch.review_product  # [N]
        m_pi, m_ri = region_masks(batch, self.use_images)  # [B, Mp], [N, Mr]
        t_p, v_p = self.encode(batch.product_tokens, batch.product_token_mask, batch.product_regions, m_pi)  # [B, d]
        t_r, v_r = self.encode(batch.review_tokens, batch.review_token_mask, batch.review_regions, m_ri)  # [N, d]
        if self.training:
            labels = batch.review_labels  # [N]
            t_r = share_embeddings(t_r, batch.review_token_mask.any(dim=1), labels, SHARE_PROBABILITY)  # [N, d]
            v_r = share_embeddings(v_r, m_ri.any(dim=1), labels, SHARE_PROBABILITY)  # [N, d]
        t_p, v_p = self.gate(t_p, v_p)  # [B, d] each
        t_r, v_r = self.gate(t_r, v_r)  # [N, d] each
        t_p, v_p = t_p[rows], v_p[rows]  # [N, d] each
        z = torch.cat([t_p, v_p, t_r, v_r, t_p * t_r, v_p * v_r], dim=1)  # [N, 6d]
        return self.output(self.scorer(z).squeeze(1), batch)
