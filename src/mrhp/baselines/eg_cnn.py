"""EG-CNN (Chen et al., "Cross-Domain Review Helpfulness Prediction Based on Convolutional Neural Networks with
Auxiliary Domain Discriminators", NAACL 2018), a text-only baseline of the paper's Tables 3-4.

The review text alone: every word embedding is gated by a character-level representation of the word
(`x_w = sigmoid(W c_w + b) * e_w`, with `c_w` a character CNN max-pooled over the word's characters; the
"embedding-gated" words that handle rare and out-of-vocabulary words), then a CNN with n-gram widths 1-3 and
max-pooling over the text, and an MLP -> score, trained with the pairwise hinge loss (eq. 34).

Decided here: the auxiliary domain discriminator of the paper is left out (it only matters when training across
categories; every benchmark here is trained per category); characters are the first `MAX_CHARS` code points of
the vocabulary's token, hashed into `CHAR_BUCKETS` buckets (the spelling table is a buffer filled from the
vocabulary by `load_spelling` and saved with the weights); character embeddings of `CHAR_DIM` and a width-3
character convolution; `model.hidden_size` filters per n-gram width. The product is not read (the ranking is
within one product) and images are ignored by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrhp.baselines.layers import NgramConv, Ranker, scorer
from mrhp.config import ModelConfig
from mrhp.data.batching import Batch
from mrhp.model import ModelOutput, masked_max

NGRAMS = (1, 2, 3)
MAX_CHARS = 16
CHAR_BUCKETS = 512
CHAR_DIM = 32


class EGCNN(Ranker):
    """f(p, r) of EG-CNN; see the module docstring."""

    def __init__(self, config: ModelConfig):
        super().__init__(config.vocab_size, config.embedding_dim, config.dropout)
        d, e = config.hidden_size, config.embedding_dim
        # Character ids of each vocabulary word [V, MAX_CHARS] (0 = no character), filled by `load_spelling`.
        self.register_buffer("spelling", torch.zeros(config.vocab_size, MAX_CHARS, dtype=torch.int64))
        self.char_embedding = nn.Embedding(CHAR_BUCKETS + 1, CHAR_DIM, padding_idx=0)
        self.char_conv = nn.Conv1d(CHAR_DIM, e, 3, padding=1)
        self.gate = nn.Linear(e, e)
        self.ngrams = NgramConv(e, d, NGRAMS)
        self.scorer = scorer(len(NGRAMS) * d, (d,), config.dropout)

    def load_spelling(self, tokens: list[str]) -> None:
        """Fill the character table from the vocabulary's tokens (in id order)."""
        if len(tokens) != self.spelling.shape[0]:
            raise ValueError(f"spelling table has {self.spelling.shape[0]} rows, got {len(tokens)} tokens")
        table = torch.zeros_like(self.spelling)
        for index, token in enumerate(tokens):
            codes = [ord(char) % CHAR_BUCKETS + 1 for char in token[:MAX_CHARS]]
            table[index, : len(codes)] = torch.tensor(codes, dtype=torch.int64)
        self.spelling.copy_(table)

    def spell(self, tokens: Tensor) -> Tensor:
        """Character representation of each distinct word of `tokens` [X, L] -> [X, L, E]."""
        words, inverse = torch.unique(tokens, return_inverse=True)  # [W], [X, L]
        chars = self.spelling[words]  # [W, C]
        char_mask = chars > 0
        embedded = self.char_embedding(chars).transpose(1, 2)  # [W, CHAR_DIM, C]
        convolved = F.relu(self.char_conv(embedded)).transpose(1, 2)  # [W, C, E]
        return masked_max(convolved, char_mask)[inverse]  # [X, L, E]

    def forward(self, batch: Batch) -> ModelOutput:
        m_r = batch.review_token_mask  # [N, Lr]
        embedded = self.embed(batch.review_tokens, m_r)  # [N, Lr, E]
        gated = torch.sigmoid(self.gate(self.spell(batch.review_tokens))) * embedded  # [N, Lr, E]
        z = torch.cat([masked_max(g, m_r) for g in self.ngrams(gated, m_r)], dim=1)  # [N, 3d]
        return self.output(self.scorer(z).squeeze(1), batch)
