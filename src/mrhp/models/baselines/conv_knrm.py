"""Conv-KNRM (Dai et al., "Convolutional Neural Networks for Soft-Matching N-Grams in Ad-hoc Search", WSDM 2018),
a text-only baseline of the paper's Tables 3-4: the product text plays the query, the review text the document.

Word embeddings -> 1-D convolutions giving uni-, bi- and tri-gram embeddings of both texts -> for each of the
9 pairs of n-gram sizes, the cosine "translation matrix" between every product n-gram and every review n-gram
-> RBF kernel pooling: `K_k(i) = sum_j exp(-(M_ij - mu_k)^2 / (2 sigma_k^2))` over review positions, then
`sum_i log K_k(i)` over product positions -> one linear layer over the 9 x 11 features -> score.

Taken from the paper and SPEC 8: n-gram sizes 1-3 with 128 filters (`model.hidden_size`) and ReLU, shared
between the two texts; 11 kernels, mu = 1.0 (the exact-match kernel, sigma 1e-3) and mu = 0.9, 0.7, ..., -0.9
(sigma 0.1); log-sum over the query; a linear ranking layer.

Decided here: log K is taken of `max(K, 1e-10)` and scaled by 0.01, as in the K-NRM family's code, so an empty
review text gives finite features; every real position has one n-gram per size (n-grams that run past the end
of a text see zero vectors, see `NgramConv`). Images are ignored by construction: the model reads only tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrhp.config import ModelConfig, ModelInputs
from mrhp.data.batching import Batch
from mrhp.models.baselines.layers import NgramConv, Ranker
from mrhp.models.paper import ModelOutput

NGRAMS = (1, 2, 3)
KERNEL_MUS = (1.0, 0.9, 0.7, 0.5, 0.3, 0.1, -0.1, -0.3, -0.5, -0.7, -0.9)
KERNEL_SIGMAS = (1e-3,) + (0.1,) * 10
LOG_FLOOR, LOG_SCALE = 1e-10, 0.01


class ConvKNRM(Ranker):
    """f(p, r) of Conv-KNRM; see the module docstring."""

    def __init__(self, config: ModelConfig, inputs: ModelInputs):
        super().__init__(inputs.vocab_size, inputs.embedding_dim, config.dropout)
        self.ngrams = NgramConv(inputs.embedding_dim, config.hidden_size, NGRAMS)
        self.register_buffer("mus", torch.tensor(KERNEL_MUS), persistent=False)
        self.register_buffer("sigmas", torch.tensor(KERNEL_SIGMAS), persistent=False)
        self.scorer = nn.Linear(len(NGRAMS) ** 2 * len(KERNEL_MUS), 1)

    def kernel_pooling(self, translation: Tensor, product_mask: Tensor, review_mask: Tensor) -> Tensor:
        """translation [N, Lp, Lr] cosine matrix -> [N, kernels] soft-match features."""
        kernels = torch.exp(-((translation[..., None] - self.mus) ** 2) / (2 * self.sigmas**2))  # [N, Lp, Lr, K]
        soft_tf = (kernels * review_mask[:, None, :, None].to(kernels.dtype)).sum(dim=2)  # [N, Lp, K]
        logs = torch.log(soft_tf.clamp(min=LOG_FLOOR)) * LOG_SCALE
        return (logs * product_mask[..., None].to(logs.dtype)).sum(dim=1)  # [N, K]

    def forward(self, batch: Batch) -> ModelOutput:
        rows = batch.review_product
        m_p, m_r = batch.product_token_mask, batch.review_token_mask
        product = [F.normalize(g, dim=-1)[rows] for g in self.ngrams(self.embed(batch.product_tokens, m_p), m_p)]
        review = [F.normalize(g, dim=-1) for g in self.ngrams(self.embed(batch.review_tokens, m_r), m_r)]
        m_pr = m_p[rows]  # [N, Lp]
        features = [
            self.kernel_pooling(p @ r.transpose(1, 2), m_pr, m_r) for p in product for r in review
        ]  # 9 x [N, K]
        return self.output(self.scorer(torch.cat(features, dim=1)).squeeze(1), batch)
