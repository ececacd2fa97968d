"""EG-CNN (Chen et al., "Cross-Domain Review Helpfulness Prediction Based on Convolutional Neural Networks with
Auxiliary Domain Discriminators", NAACL 2018), a text-only baseline of the paper's Tables 3-4.

The review text alone: every word embedding is gated by a character-level representation of the word
(`x_w = sigmoid(W c_w + b) * e_w`, with `c_w` a character CNN max-pooled over the word's characters; the
"embedding-gated" words that handle rare and out-of-vocabulary words), then a CNN with n-gram widths 1-3 and
max-pooling over the text, and an MLP -> score, trained with the pairwise hinge loss (eq. 34).

Decided here: the auxiliary domain discriminator of the paper is left out (it only matters when training across
categories; every benchmark here is trained per category); characters are the first
`mrhp.data.text.MAX_WORD_CHARS` code points of the word as written in the text (`Batch.review_chars`), so a word
outside the vocabulary (`<unk>`, the very case the gates exist for) keeps its spelling, hashed into
`CHAR_BUCKETS` buckets; character embeddings of `CHAR_DIM` and a width-3 character convolution;
`model.hidden_size` filters per n-gram width. The product is not read (the ranking is within one product) and
images are ignored by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrhp.config import ModelConfig, ModelInputs
from mrhp.data.batching import Batch
from mrhp.models.baselines.layers import NgramConv, Ranker, scorer
from mrhp.models.paper import ModelOutput, masked_max

NGRAMS = (1, 2, 3)
CHAR_BUCKETS = 512
CHAR_DIM = 32


class EGCNN(Ranker):
    """f(p, r) of EG-CNN; see the module docstring."""

    def __init__(self, config: ModelConfig, inputs: ModelInputs):
        super().__init__(inputs.vocab_size, inputs.embedding_dim, config.dropout)
        d, e = config.hidden_size, inputs.embedding_dim
        self.char_embedding = nn.Embedding(CHAR_BUCKETS + 1, CHAR_DIM, padding_idx=0)
        self.char_conv = nn.Conv1d(CHAR_DIM, e, 3, padding=1)
        self.gate = nn.Linear(e, e)
        self.ngrams = NgramConv(e, d, NGRAMS)
        self.scorer = scorer(len(NGRAMS) * d, (d,), config.dropout)

    def spell(self, chars: Tensor) -> Tensor:
        """Character representation of each word: code points [X, L, C] (0 = no character) -> [X, L, E]."""
        buckets = torch.where(chars > 0, chars.long() % CHAR_BUCKETS + 1, 0)  # [X, L, C]
        words, inverse = torch.unique(buckets.flatten(0, 1), dim=0, return_inverse=True)  # [W, C], [X * L]
        embedded = self.char_embedding(words).transpose(1, 2)  # [W, CHAR_DIM, C]
        convolved = F.relu(self.char_conv(embedded)).transpose(1, 2)  # [W, C, E]
        spelled = masked_max(convolved, words > 0)[inverse]  # [X * L, E]
        return spelled.view(*chars.shape[:2], -1)  # [X, L, E]

    def forward(self, batch: Batch) -> ModelOutput:
        m_r = batch.review_token_mask  # [N, Lr]
        embedded = self.embed(batch.review_tokens, m_r)  # [N, Lr, E]
        gated = torch.sigmoid(self.gate(self.spell(batch.review_chars))) * embedded  # [N, Lr, E]
        z = torch.cat([masked_max(g, m_r) for g in self.ngrams(gated, m_r)], dim=1)  # [N, 3d]
        return self.output(self.scorer(z).squeeze(1), batch)
