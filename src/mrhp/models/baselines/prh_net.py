"""PRH-Net (Fan et al., "Product-Aware Helpfulness Prediction of Online Reviews", WWW 2019), a text-only baseline
of the paper's Tables 3-4.

BiLSTM encodings of the review text and of the product text; a product-aware attention of the review tokens
over the product (`G = softmax over product positions of ReLU(P W + b) R^T`, `H = R + G^T P`: each review token
plus the product tokens it attends to, mean over review positions; `mrhp.models.baselines.layers.ProductAwareAttention`);
the review's own mean-pooled encoding next to it;
an MLP -> score, trained with the pairwise hinge loss (eq. 34).

Decided here, where the description is silent for this benchmark: the product metadata branch of the paper
(category, price, ...) is left out because Amazon-MRHP and Lazada-MRHP have no such fields; separate BiLSTMs for
product and review with `d / 2` units per direction (width d); one hidden layer of d units in the scorer.
Images are ignored by construction: the model reads only tokens.
"""

from __future__ import annotations

import torch

from mrhp.config import ModelConfig, ModelInputs
from mrhp.data.batching import Batch
from mrhp.models.baselines.layers import BiLSTM, ProductAwareAttention, Ranker, scorer
from mrhp.models.paper import ModelOutput, masked_mean


class PRHNet(Ranker):
    """f(p, r) of PRH-Net; see the module docstring."""

    def __init__(self, config: ModelConfig, inputs: ModelInputs):
        super().__init__(inputs.vocab_size, inputs.embedding_dim, config.dropout)
        d = config.hidden_size
        self.product_lstm = BiLSTM(inputs.embedding_dim, d // 2)
        self.review_lstm = BiLSTM(inputs.embedding_dim, d // 2)
        self.aware = ProductAwareAttention(2 * (d // 2))
        self.scorer = scorer(4 * (d // 2), (d,), config.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        rows = batch.review_product
        m_p, m_r = batch.product_token_mask, batch.review_token_mask
        product = self.product_lstm(self.embed(batch.product_tokens, m_p), m_p)[rows]  # [N, Lp, d]
        review = self.review_lstm(self.embed(batch.review_tokens, m_r), m_r)  # [N, Lr, d]
        z = torch.cat([masked_mean(review, m_r), self.aware(product, m_p[rows], review, m_r)], dim=1)  # [N, 2d]
        return self.output(self.scorer(z).squeeze(1), batch)
