"""SSE-Cross (Abavisani et al., "Multimodal Categorization of Crisis Events in Social Media", CVPR 2020), a
multimodal baseline of the paper's Tables 3-4.

Text and image encoders; cross-attention between the modalities of an item (each text token attends to the
item's image regions and each region to its tokens, with residuals); mean-pooled text and image vectors; and
stochastic shared embeddings as regularisation: in training, each of an item's two vectors is replaced by the
other modality's vector with probability `SHARE_PROBABILITY` (the modalities share an embedding space, so either
slot can hold either). Product and review are encoded the same way and joined for scoring:
`[t_p, v_p, t_r, v_r, t_p * t_r, v_p * v_r]` -> MLP -> score, trained with the pairwise hinge loss (eq. 34).

Decided here, where the original (single social-media posts, BERT and DenseNet features) is silent about a
product-review pair: one text encoder (a BiLSTM, `d / 2` units per direction) and one image encoder
(Linear(F -> d) + one self-attention block, the image store's region features as input) shared by product and
review; `SHARE_PROBABILITY = 0.25`, applied only to items that have both modalities (an absent image stays
absent); the element-wise products for the product-review match; one hidden layer of d units.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mrhp.baselines.layers import CrossAttention, SharedEncoderRanker, region_masks, scorer
from mrhp.config import ModelConfig
from mrhp.data.batching import Batch
from mrhp.model import ModelOutput, masked_mean

SHARE_PROBABILITY = 0.25


class SSECross(SharedEncoderRanker):
    """f(p, r) of SSE-Cross; see the module docstring."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        d, heads, drop = self.dim, config.num_heads, config.dropout
        self.text_to_image = CrossAttention(d, heads, drop)
        self.image_to_text = CrossAttention(d, heads, drop)
        self.scorer = scorer(6 * d, (d,), drop)

    def encode(self, tokens: Tensor, token_mask: Tensor, regions: Tensor, region_mask: Tensor) -> tuple[Tensor, Tensor]:
        """One item's text and image vectors: tokens [X, L], regions [X, M, F] -> ([X, d], [X, d])."""
        text = self.text_encoder(self.embed(tokens, token_mask), token_mask)  # [X, L, d]
        image = self.image_encoder(regions, region_mask)  # [X, M, d]
        text_crossed = self.text_to_image(text, token_mask, image, region_mask)  # [X, L, d]
        image_crossed = self.image_to_text(image, region_mask, text, token_mask)  # [X, M, d]
        t, v = masked_mean(text_crossed, token_mask), masked_mean(image_crossed, region_mask)
        if self.training:
            both = token_mask.any(dim=1) & region_mask.any(dim=1)  # [X]
            draw = torch.rand(2, t.shape[0], device=t.device) < SHARE_PROBABILITY
            t, v = (
                torch.where((draw[0] & both)[:, None], v, t),
                torch.where((draw[1] & both)[:, None], t, v),
            )
        return t, v

    def forward(self, batch: Batch) -> ModelOutput:
        rows = batch.review_product
        m_pi, m_ri = region_masks(batch, self.use_images)
        t_p, v_p = self.encode(batch.product_tokens, batch.product_token_mask, batch.product_regions, m_pi)  # [B, d]
        t_r, v_r = self.encode(batch.review_tokens, batch.review_token_mask, batch.review_regions, m_ri)  # [N, d]
        t_p, v_p = t_p[rows], v_p[rows]
        z = torch.cat([t_p, v_p, t_r, v_r, t_p * t_r, v_p * v_r], dim=1)  # [N, 6d]
        return self.output(self.scorer(z).squeeze(1), batch)
