"""Building blocks shared by the baselines (SPEC 8), written once here; the attention, self-attention and pooling
blocks of the paper's model are reused from `mrhp.models.paper`.

Shapes: `X` items (products or reviews), `L` positions, `E` word-embedding width, `d` model width. Every mask
is boolean, True for a real token or region. Every block returns zeros at padded positions and for items whose
sequence is empty, and no padding value ever enters a softmax, a max, a mean or a recurrence, so a score does not
depend on how much padding a batch needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrhp.compute.devices import run_lstm
from mrhp.config import ModelConfig, ModelInputs
from mrhp.data.batching import Batch
from mrhp.models.paper import (
    ModelOutput,
    SelfAttentionBlock,
    masked_mean,
)


def masked_softmax(scores: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax of `scores` over `dim` restricted to `mask` (broadcastable to `scores`); all-masked slices give 0."""
    mask = mask.expand_as(scores)
    filled = scores.masked_fill(~mask, float("-inf"))
    # Slices with nothing to attend to get a finite dummy row, then zeros: never a softmax over only -inf (NaN).
    has_any = mask.any(dim=dim, keepdim=True)
    weights = torch.softmax(torch.where(has_any, filled, torch.zeros_like(filled)), dim=dim)
    return weights * mask.to(weights.dtype)


def region_masks(batch: Batch, use_images: bool) -> tuple[Tensor, Tensor]:
    """The product and review region masks `[B, Mp]`, `[N, Mr]`, all False when images are switched off."""
    if use_images:
        return batch.product_region_mask, batch.review_region_mask
    return torch.zeros_like(batch.product_region_mask), torch.zeros_like(batch.review_region_mask)


class Ranker(nn.Module):
    """Base of every baseline: the word embedding (pretrained vectors loaded by the trainer, trainable) and the
    list layout of the scores. Baselines train with the pairwise hinge loss alone (eq. 34), so their outputs
    carry no pooled vectors for the paper's contrastive loss."""

    def __init__(self, vocab_size: int, embedding_dim: int, dropout: float):
        super().__init__()
        if vocab_size <= 2:
            raise ValueError("ModelInputs.vocab_size must count the vocabulary (padding, <unk> and words: > 2)")
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.embedding_dropout = nn.Dropout(dropout)

    def load_word_vectors(self, vectors: Tensor) -> None:
        """Initialise the word embedding with pretrained vectors [V, E] (they stay trainable)."""
        with torch.no_grad():
            self.embedding.weight.copy_(vectors)

    def embed(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """tokens [X, L], mask [X, L] -> [X, L, E], zero at padded positions."""
        embedded = self.embedding_dropout(self.embedding(tokens))  # [X, L, E]
        return embedded * mask[..., None].to(embedded.dtype)

    @staticmethod
    def output(row_scores: Tensor, batch: Batch) -> ModelOutput:
        """row_scores [N] -> ModelOutput with scores [B, R] (0 in padded slots) and no contrastive features."""
        scores = row_scores[batch.list_rows] * batch.list_mask.to(row_scores.dtype)  # [B, R]
        return ModelOutput(scores=scores, row_scores=row_scores, pooled={}, present={})


class NgramConv(nn.Module):
    """1-D convolutions of several widths over a token sequence (n-gram embeddings, Kim 2014; Dai et al. 2018).

    The n-gram of width h at position i covers tokens i..i+h-1; the sequence is padded on the right with h - 1
    zeros, so an n-gram that runs past the end of the text sees zeros whether the batch was padded or not, and
    every real position keeps one n-gram vector per width (texts shorter than h still get one)."""

    def __init__(self, in_dim: int, out_dim: int, widths: tuple[int, ...], activation: bool = True):
        super().__init__()
        self.widths = widths
        self.activation = activation
        self.convs = nn.ModuleList(nn.Conv1d(in_dim, out_dim, width) for width in widths)

    def forward(self, x: Tensor, mask: Tensor) -> list[Tensor]:
        """x [X, L, in] (zero at padding), mask [X, L] -> one [X, L, out] per width, zero at padding."""
        channels = x.transpose(1, 2)  # [X, in, L]
        keep = mask[..., None].to(x.dtype)
        outputs = []
        for width, conv in zip(self.widths, self.convs):
            y = conv(F.pad(channels, (0, width - 1))).transpose(1, 2)  # [X, L, out]
            outputs.append((F.relu(y) if self.activation else y) * keep)
        return outputs


class BiLSTM(nn.Module):
    """A 1-layer bidirectional LSTM over the real positions only (packed sequences): the backward direction
    starts at each text's own last token, not at the batch's padding. Output width 2 * hidden."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.lstm = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [X, L, in], mask [X, L] -> [X, L, 2 * hidden]; empty texts give zeros."""
        lengths = mask.sum(dim=1)  # [X]
        # An empty text runs over one (zero) dummy step, whose output is masked away below.
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = run_lstm(self.lstm, packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # [X, L, 2h]
        return out * mask[..., None].to(out.dtype)

    def final_states(self, encoded: Tensor, mask: Tensor) -> Tensor:
        """The forward direction's state at the last real token and the backward direction's at the first:
        encoded [X, L, 2h] (from `forward`), mask [X, L] -> [X, 2h] (zeros for empty texts)."""
        last = (mask.sum(dim=1) - 1).clamp(min=0)  # [X]
        rows = torch.arange(encoded.shape[0], device=encoded.device)
        forward_last = encoded[rows, last, : self.hidden]  # [X, h]
        backward_first = encoded[:, 0, self.hidden :]  # [X, h]
        return torch.cat([forward_last, backward_first], dim=1) * mask.any(dim=1, keepdim=True).to(encoded.dtype)


class ImageEncoder(nn.Module):
    """Region features -> Linear(F -> d) -> `layers` pre-norm self-attention blocks (the paper's eq. 4 and MCR's
    image encoder). regions [X, M, F], mask [X, M] -> [X, M, d], zero at padding."""

    def __init__(self, feature_dim: int, dim: int, layers: int, num_heads: int, feedforward_size: int, dropout: float):
        super().__init__()
        self.projection = nn.Linear(max(feature_dim, 1), dim)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(dim, num_heads, feedforward_size, dropout) for _ in range(layers)
        )

    def forward(self, regions: Tensor, mask: Tensor) -> Tensor:
        x = self.projection(regions)  # [X, M, d]
        for block in self.blocks:
            x = block(x, mask)
        return x * mask[..., None].to(x.dtype)


class SharedEncoderRanker(Ranker):
    """Base of the baselines that encode product and review alike (DR-Net, SSE-Cross): one text encoder (a BiLSTM,
    `d / 2` units per direction) and one image encoder (Linear(F -> d) + one self-attention block) shared by both
    sides; `dim` is d."""

    def __init__(self, config: ModelConfig, inputs: ModelInputs):
        super().__init__(inputs.vocab_size, inputs.embedding_dim, config.dropout)
        self.dim = 2 * (config.hidden_size // 2)
        self.use_images = config.use_images and inputs.image_dim > 0
        self.text_encoder = BiLSTM(inputs.embedding_dim, self.dim // 2)
        self.image_encoder = ImageEncoder(inputs.image_dim, self.dim, 1, config.num_heads, config.feedforward_size,
                                          config.dropout)


class ProductAwareAttention(nn.Module):
    """Product-aware review representation (Fan et al. 2019, PRH-Net; reused by MCR's intra- and inter-modal
    perspectives).

    `G = softmax over product positions of (ReLU(P W + b) R^T)` `[Lp, Lr]`: for every review token, a
    distribution over the product's tokens; `H = R + G^T P` `[Lr, d]` adds to each review token the product
    tokens it relates to; the output is the masked mean of `H` over the review tokens (as the PRH-Net family's
    code does). A review without a product text keeps its own mean; an empty review gives zeros."""

    def __init__(self, dim: int):
        super().__init__()
        self.transform = nn.Linear(dim, dim)

    def forward(self, product: Tensor, product_mask: Tensor, review: Tensor, review_mask: Tensor) -> Tensor:
        """product [X, Lp, d], product_mask [X, Lp], review [X, Lr, d] (zero at padding) -> [X, d]"""
        affinity = torch.relu(self.transform(product)) @ review.transpose(1, 2)  # [X, Lp, Lr]
        weights = masked_softmax(affinity, product_mask[:, :, None], dim=1)  # [X, Lp, Lr], softmax over Lp
        gathered = weights.transpose(1, 2) @ product  # [X, Lr, d]: the product tokens each review token selects
        return masked_mean(review + gathered, review_mask)  # [X, d]


def scorer(in_dim: int, hidden: tuple[int, ...], dropout: float) -> nn.Sequential:
    """MLP in_dim -> hidden... (ReLU, dropout) -> 1: the scoring head of every baseline."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = width
    layers.append(nn.Linear(in_dim, 1))
    return nn.Sequential(*layers)
