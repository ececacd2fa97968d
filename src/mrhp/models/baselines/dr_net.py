"""DR-Net (Xu et al., "Reasoning with Multimodal Sarcastic Tweets via Modeling Cross-Modality Contrast and
Semantic Association", ACL 2020), a multimodal baseline of the paper's Tables 3-4.

Two modules over the text and image of an item. Decomposition: each modality's pooled vector is projected into
a space shared by the modalities and a space of its own, `s_t, s_v` and `p_t, p_v` (Linear + tanh); the
contrast between the shared parts, `|s_t - s_v|`, is the signal, next to the specific parts. Relation: the
semantic association between words and regions, `mean_i MLP([x_i; Attn(x_i -> Y)])` over the words x_i and the
regions Y. Features are fused and scored by an MLP, trained with the pairwise hinge loss (eq. 34).

Decided here, for a product-review pair (the original scores single posts): one BiLSTM text encoder (`d / 2`
units per direction) and one image encoder (Linear(F -> d) + one self-attention block, the image store's
features) shared by product and review; decomposition features `[|s_t - s_v|, p_t, p_v]` for the review and for
the product; three relation terms: review words with review regions, review words with product regions and
product words with review regions (the cross-modal associations inside the review and across the pair); one
hidden layer of d units in the scorer. An absent modality gives zero features, never a projected bias.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mrhp.config import ModelConfig, ModelInputs
from mrhp.data.batching import Batch
from mrhp.models.baselines.layers import SharedEncoderRanker, region_masks, scorer
from mrhp.models.paper import MaskedAttention, ModelOutput, masked_mean


class Decomposition(nn.Module):
    """Shared and specific parts of an item's text and image vectors: t, v [X, d], presence [X] -> [X, 3d]."""

    def __init__(self, dim: int):
        super().__init__()
        self.shared_text, self.shared_image = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.specific_text, self.specific_image = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, t: Tensor, v: Tensor, has_text: Tensor, has_image: Tensor) -> Tensor:
        text_on, image_on = has_text[:, None].to(t.dtype), has_image[:, None].to(v.dtype)
        s_t, p_t = torch.tanh(self.shared_text(t)) * text_on, torch.tanh(self.specific_text(t)) * text_on
        s_v, p_v = torch.tanh(self.shared_image(v)) * image_on, torch.tanh(self.specific_image(v)) * image_on
        return torch.cat([(s_t - s_v).abs(), p_t, p_v], dim=1)


class Relation(nn.Module):
    """Word-region association: words x [X, L, d] attend to regions y [X, M, d];
    `mean_i MLP([x_i; Attn(x_i -> y)])` over the real words -> [X, d] (0 without words or regions)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attention = MaskedAttention(dim, num_heads)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, x: Tensor, x_mask: Tensor, y: Tensor, y_mask: Tensor) -> Tensor:
        attended = self.attention(x, y, y_mask)  # [X, L, d]
        related = self.mlp(torch.cat([x, attended], dim=2))  # [X, L, d]
        return masked_mean(related, x_mask) * y_mask.any(dim=1, keepdim=True).to(related.dtype)


class DRNet(SharedEncoderRanker):
    """f(p, r) of DR-Net; see the module docstring."""

    def __init__(self, config: ModelConfig, inputs: ModelInputs):
        super().__init__(config, inputs)
        d = self.dim
        self.decomposition = Decomposition(d)
        self.relations = nn.ModuleDict(
            {name: Relation(d, config.num_heads) for name in ("review", "review_product", "product_review")}
        )
        self.scorer = scorer(9 * d, (d,), config.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        rows = batch.review_product
        m_pt, m_rt = batch.product_token_mask, batch.review_token_mask
        m_pi, m_ri = region_masks(batch, self.use_images)
        p_text = self.text_encoder(self.embed(batch.product_tokens, m_pt), m_pt)  # [B, Lp, d]
        r_text = self.text_encoder(self.embed(batch.review_tokens, m_rt), m_rt)  # [N, Lr, d]
        p_image = self.image_encoder(batch.product_regions, m_pi)  # [B, Mp, d]
        r_image = self.image_encoder(batch.review_regions, m_ri)  # [N, Mr, d]
        product = self.decomposition(
            masked_mean(p_text, m_pt), masked_mean(p_image, m_pi), m_pt.any(dim=1), m_pi.any(dim=1)
        )[rows]  # [N, 3d]
        review = self.decomposition(
            masked_mean(r_text, m_rt), masked_mean(r_image, m_ri), m_rt.any(dim=1), m_ri.any(dim=1)
        )  # [N, 3d]
        relations = [
            self.relations["review"](r_text, m_rt, r_image, m_ri),
            self.relations["review_product"](r_text, m_rt, p_image[rows], m_pi[rows]),
            self.relations["product_review"](p_text[rows], m_pt[rows], r_image, m_ri),
        ]  # 3 x [N, d]
        z = torch.cat([review, product, *relations], dim=1)  # [N, 9d]
        return self.output(self.scorer(z).squeeze(1), batch)
