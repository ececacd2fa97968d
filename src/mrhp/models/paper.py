"""The paper's model: a multimodal transformer that scores product-review pairs (Nguyen et al. 2022, section 2).

Read top to bottom: building blocks (masked attention, self-attention block, pooling), the cross-modal layer of
the multimodal interaction module, then `HelpfulnessModel`, whose `forward` is the whole computation of
eqs. 2-29 plus the max-pooled features of eqs. 30-31 used by the contrastive loss.

Shapes: `B` products in a batch, `N` product-review rows (reviews) in the batch, `Lp`/`Lr` product/review
tokens, `Mp`/`Mr` product/review image regions, `F` region-feature width, `E` word-embedding width, `d` model
width. Every mask is boolean, True for a real token/region/review. A modality may be absent for a row (no
image, empty text): attention over an empty key set yields zeros and pooling over an empty set yields zeros,
so no padding value ever enters a softmax, a max or a mean, and nothing becomes NaN.

Efficiency that changes no result (SPEC 3.5): the product's text and image encoders do not depend on the
review, so each product is encoded once per batch and its encodings are gathered for its reviews' rows.

Explanations (`forward(batch, explain=True)`): the scorer (eq. 29) is linear in `z_final`, so a score is exactly
the bias plus the contributions `w_part . z_part` of the five d-sized parts of eqs. 17, 22 and 27 (three fusion
paths), plus the side scorer's output when the model has one. The score is also linear (mean pools, eqs. 20-27)
or piecewise linear (the max of eq. 17: each channel's value is that of one position) in the fused sequences, so
each part splits further, exactly, over the positions it pools: a position's share is `w_part . x_i / n` for a
mean and, for the max, the terms `w_k z_k` of the channels whose maximum is at that position. This is gradient x
input taken at the fusion outputs, where it is exact: the shares of every word and region of product and review
add up to the score minus bias and side (`Explanation`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mrhp.compute.devices import run_lstm
from mrhp.config import ModelConfig, ModelInputs
from mrhp.data.batching import SIDE_FEATURES, Batch
from mrhp.data.side import parse_side_names
from mrhp.objectives.losses import MODALITY_KEYS

# The four components of eqs. 5-14, named as the contrastive loss (eqs. 30-33) names the pooled vectors.
COMPONENTS = MODALITY_KEYS
# The three fusion paths of z_final (eq. 28) and their five d-sized parts, in the scorer's input order, each part
# with the path it belongs to: eq. 17; eqs. 18-22 (product text with review image, product image with review
# text); eqs. 23-27 (product text with product image, review text with review image).
PATHS = ("intra_modal", "inter_modal", "intra_review")
PARTS = {
    "intra_modal": "intra_modal",
    "product_text_review_image": "inter_modal",
    "product_image_review_text": "inter_modal",
    "product_text_product_image": "intra_review",
    "review_text_review_image": "intra_review",
}


@dataclass
class Explanation:
    """Every row's score split exactly (up to float rounding) as `bias + side + parts.sum(1)`, and the parts
    over the positions of the four components: `sum over components of shares[c].sum(1) == parts.sum(1)`."""

    bias: float  # the scorer's bias (eq. 29)
    side: Tensor | None  # [N] side scorer's output + length anchor (model.side_features, model.length_anchor)
    parts: Tensor  # [N, len(PARTS)] w_part . z_part, in PARTS order
    shares: dict[str, Tensor]  # per component, [N, L_component]: each token's / region's share, 0 at padding


@dataclass
class ModelOutput:
    scores: Tensor  # [B, R] f(p, r) in list layout, 0 in padded slots
    row_scores: Tensor  # [N]
    pooled: dict[str, Tensor]  # eqs. 30-31: h^p, h^r, v^p, v^r per row, each [N, d]
    present: dict[str, Tensor]  # [N] bool: the row has that modality (at least one token / region)
    explanation: Explanation | None = None  # forward(batch, explain=True) only


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max over dim 1 of `x [N, L, d]` where `mask [N, L]`; rows with nothing unmasked give 0. -> [N, d]"""
    filled = x.masked_fill(~mask[..., None], float("-inf"))
    pooled = filled.max(dim=1).values  # [N, d]
    return torch.where(mask.any(dim=1, keepdim=True), pooled, torch.zeros_like(pooled))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over dim 1 of `x [N, L, d]` where `mask [N, L]`; rows with nothing unmasked give 0. -> [N, d]"""
    weights = mask.to(x.dtype)[..., None]  # [N, L, 1]
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def left_order(mask: Tensor) -> Tensor:
    """mask [N, L] -> [N, L]: the positions of each row, unmasked ones first, each group in its order."""
    return torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices


def pack_left(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move the unmasked positions of each row to the front, keeping their order. -> ([N, L, d], [N, L])

    A convolution over a concatenation of padded sequences would otherwise see interior padding, and its result
    would depend on how much padding the batch happened to need.
    """
    order = left_order(mask)  # [N, L]
    packed = torch.gather(x, 1, order[..., None].expand_as(x))  # [N, L, d]
    packed_mask = torch.gather(mask, 1, order)  # [N, L]
    return packed * packed_mask[..., None], packed_mask


class MaskedAttention(nn.Module):
    """Multi-head scaled dot-product attention from queries to the unmasked keys (eq. 8). With 1 head it is eq. 8
    plus what eq. 8 does not print: biases on the Q, K, V projections and an output projection (as in MulT and
    every transformer). Queries whose key set is empty get a zero output instead of a softmax over nothing.

    No dropout on the attention weights: with it, PyTorch's CPU flash-attention kernel is unavailable and every
    layer would keep its full [N, heads, Lq, Lk] weights for the backward pass (4x slower, GBs of memory).
    Dropout is applied to the residual branches instead."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, keys: Tensor, key_mask: Tensor) -> Tensor:
        """queries [N, Lq, d], keys [N, Lk, d], key_mask [N, Lk] -> [N, Lq, d]"""
        n, lq, d = queries.shape
        lk, h = keys.shape[1], self.num_heads
        has_key = key_mask.any(dim=1)  # [N]
        # A row without keys attends to its (arbitrary) padding and is zeroed below, which keeps the softmax finite.
        attend = (key_mask | ~has_key[:, None])[:, None, None, :]  # [N, 1, 1, Lk]
        q = self.query(queries).view(n, lq, h, d // h).transpose(1, 2)  # [N, h, Lq, d/h]
        k, v = self.key_value(keys).view(n, lk, 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2 x [N, h, Lk, d/h]
        mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)  # [N, h, Lq, d/h]
        mixed = mixed.transpose(1, 2).reshape(n, lq, d)  # [N, Lq, d]
        return self.out(mixed) * has_key[:, None, None].to(mixed.dtype)


class SelfAttentionBlock(nn.Module):
    """SelfAttn of eqs. 4 and 15-24: one pre-norm transformer encoder layer (Vaswani et al. 2017) over the
    unmasked positions. Padded positions come out as zeros."""

    def __init__(self, dim: int, num_heads: int, feedforward_size: int, dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = MaskedAttention(dim, num_heads)
        self.feedforward_norm = nn.LayerNorm(dim)
        self.feedforward = nn.Sequential(
            nn.Linear(dim, feedforward_size), nn.GELU(), nn.Dropout(dropout), nn.Linear(feedforward_size, dim)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [N, L, d], mask [N, L] -> [N, L, d]"""
        normed = self.attention_norm(x)
        x = x + self.dropout(self.attention(normed, normed, mask))
        x = x + self.dropout(self.feedforward(self.feedforward_norm(x)))
        return x * mask[..., None].to(x.dtype)


class CrossModalLayer(nn.Module):
    """One layer of the multimodal interaction module for one component gamma (eqs. 10-12):
    T = CM(LN(Q_prev), LN(X_eta)); U = T + Q_prev; Q = GELU(Linear(U)).

    Keys and values are the other components X_eta (SPEC 3.3: eq. 10 prints X_gamma, but eq. 8 and the MulT
    design it follows use the other modalities)."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim)
        self.context_norm = nn.LayerNorm(dim)
        self.attention = MaskedAttention(dim, num_heads)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(dim, dim)

    def forward(self, previous: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        """previous [N, Lg, d], context [N, Le, d], context_mask [N, Le] -> [N, Lg, d]"""
        t = self.attention(self.query_norm(previous), self.context_norm(context), context_mask)  # eq. 10
        u = self.dropout(t) + previous  # eq. 11
        return F.gelu(self.linear(u))  # eq. 12


class HelpfulnessModel(nn.Module):
    """f(p, r): scores every product-review row of a batch (eqs. 2-29)."""

    def __init__(self, config: ModelConfig, inputs: ModelInputs):
        super().__init__()
        if inputs.vocab_size <= 2:
            raise ValueError("ModelInputs.vocab_size must count the vocabulary (padding, <unk> and words: > 2)")
        d, heads, drop = config.hidden_size, config.num_heads, config.dropout
        self.use_interaction = config.use_interaction
        self.checkpoint_activations = config.checkpoint_activations
        self.use_images = config.use_images and inputs.image_dim > 0
        self.image_dim = inputs.image_dim
        self.reads_states = config.text_encoder != "lstm"
        self.text_encoder_name = config.text_encoder
        self.embedding_dropout = nn.Dropout(drop)
        if not self.reads_states:
            # Text encoders (eqs. 2-3): one word embedding, separate LSTMs for product and review.
            self.embedding = nn.Embedding(inputs.vocab_size, inputs.embedding_dim, padding_idx=0)
            self.product_lstm = nn.LSTM(inputs.embedding_dim, d, batch_first=True)
            self.review_lstm = nn.LSTM(inputs.embedding_dim, d, batch_first=True)
        else:
            # A pretrained transformer's token states, stored when preparing, replace LSTM(W_emb(T)): its top
            # `text_tuned_layers` layers (shared by product and review, as the pretrained encoder is) are trained
            # here, then separate projections H -> d for product and review, as the LSTMs were separate.
            from mrhp.features.text_encoder import PRETRAINED, TopLayers

            if inputs.text_state_dim <= 0:
                raise ValueError("ModelInputs.text_state_dim must be the width of the stored token states")
            self.text_top = TopLayers(PRETRAINED[config.text_encoder], config.text_tuned_layers, drop)
            self.product_text_projection = nn.Linear(inputs.text_state_dim, d)
            self.review_text_projection = nn.Linear(inputs.text_state_dim, d)
        # Image encoders (eq. 4): Linear F -> d, then self-attention; separate for product and review.
        image_dim = max(inputs.image_dim, 1)
        self.product_image_projection = nn.Linear(image_dim, d)
        self.review_image_projection = nn.Linear(image_dim, d)
        self.product_image_encoder = nn.ModuleList(
            SelfAttentionBlock(d, heads, config.feedforward_size, drop) for _ in range(config.image_encoder_layers)
        )
        self.review_image_encoder = nn.ModuleList(
            SelfAttentionBlock(d, heads, config.feedforward_size, drop) for _ in range(config.image_encoder_layers)
        )
        # Multimodal interaction module (eqs. 5-14): D layers per component, separate parameters.
        self.interaction = nn.ModuleDict(
            {
                name: nn.ModuleList(CrossModalLayer(d, heads, drop) for _ in range(config.interaction_layers))
                for name in COMPONENTS
            }
        )
        # Fusion (eqs. 15-27): six self-attention modules, the intra-modal CNN, and the scorer (eq. 29).
        fusion = ("intra_text", "intra_image", "text_image", "image_text", "product_pair", "review_pair")
        self.fusion = nn.ModuleDict({name: SelfAttentionBlock(d, heads, config.feedforward_size, drop) for name in fusion})
        self.intra_modal_conv = nn.Conv1d(d, d, config.conv_kernel, padding=config.conv_kernel // 2)
        self.scorer = nn.Linear(5 * d, 1)
        # Not in the paper (model.side_features): review length and star rating, which pooling hides, and the
        # stored side features named by model.extra_side_features, added to the score through a small MLP.
        self.side_lengths = config.side_features
        self.register_buffer("side_columns", torch.tensor(parse_side_names(config.extra_side_features),
                                                          dtype=torch.int64), persistent=False)
        side_width = len(SIDE_FEATURES) * config.side_features + len(self.side_columns)
        self.side_scorer = (
            nn.Sequential(nn.Linear(side_width, config.side_hidden_size), nn.GELU(),
                          nn.Linear(config.side_hidden_size, 1))
            if side_width else None
        )
        # Not in the paper either (model.length_anchor): a fixed share of log(1 + words) in every score.
        self.length_anchor = config.length_anchor

    def run(self, module: nn.Module, *inputs: Tensor) -> Tensor:
        """Call `module`; in training with `checkpoint_activations`, keep only its inputs for the backward pass
        and recompute the rest then (same values, dropout masks included; about a third of the memory)."""
        if self.checkpoint_activations and self.training and torch.is_grad_enabled():
            return checkpoint(module, *inputs, use_reentrant=False)
        return module(*inputs)

    def load_word_vectors(self, vectors: Tensor) -> None:
        """Initialise the word embedding with pretrained vectors [V, E] (they stay trainable); a model that reads
        pretrained token states has no word embedding."""
        if self.reads_states:
            return
        with torch.no_grad():
            self.embedding.weight.copy_(vectors)

    def encode_text(self, lstm: nn.LSTM, tokens: Tensor, mask: Tensor) -> Tensor:
        """tokens [X, L], mask [X, L] -> [X, L, d]. The LSTM runs left to right, so the outputs at real
        positions never depend on the padding that follows them."""
        embedded = self.embedding_dropout(self.embedding(tokens))  # [X, L, E]
        encoded, _ = run_lstm(lstm, embedded)  # [X, L, d]
        return encoded * mask[..., None].to(encoded.dtype)

    def load_pretrained_text(self) -> None:
        """Copy the pretrained weights of the top text-encoder layers this model fine-tunes (none: nothing to do;
        a checkpoint holds them afterwards, so loading one needs no package)."""
        if not self.reads_states or not len(self.text_top.layers):
            return
        from mrhp.features.text_encoder import TopLayers
        from mrhp.features.text_weights import load_pretrained

        pretrained = TopLayers.from_encoder(load_pretrained(self.text_encoder_name), len(self.text_top.layers))
        self.text_top.load_state_dict(pretrained.state_dict())

    def encode_states(self, projection: nn.Linear, states: Tensor, mask: Tensor) -> Tensor:
        """Pretrained token states [X, S, H], mask [X, S] -> [X, S, d] (top layers, then projection)."""
        x = self.text_top(states, mask)  # [X, S, H]
        x = projection(self.embedding_dropout(x))  # [X, S, d]
        return x * mask[..., None].to(x.dtype)

    def encode_image(self, projection: nn.Linear, encoder: nn.ModuleList, regions: Tensor, mask: Tensor) -> Tensor:
        """regions [X, M, F], mask [X, M] -> [X, M, d]"""
        x = projection(regions)  # [X, M, d]
        for block in encoder:
            x = block(x, mask)  # [X, M, d]
        return x * mask[..., None].to(x.dtype)

    def components(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The encoded components (eqs. 2-4) of every row, `{name: [N, L_name, d]}`, and their masks
        `{name: [N, L_name]}` (no region is real when the model uses no images); product encodings are computed
        once per product, then gathered for each review row."""
        rows = batch.review_product  # [N]
        if self.reads_states:
            product_token_mask, review_token_mask = batch.product_state_mask, batch.review_state_mask
        else:
            product_token_mask, review_token_mask = batch.product_token_mask, batch.review_token_mask
        product_region_mask, review_region_mask = batch.product_region_mask, batch.review_region_mask
        if not self.use_images:
            product_region_mask = torch.zeros_like(product_region_mask)
            review_region_mask = torch.zeros_like(review_region_mask)

        if self.reads_states:
            k_p = self.encode_states(self.product_text_projection, batch.product_states, product_token_mask)  # [B, Lp, d]
            k_r = self.encode_states(self.review_text_projection, batch.review_states, review_token_mask)  # [N, Lr, d]
        else:
            k_p = self.encode_text(self.product_lstm, batch.product_tokens, product_token_mask)  # [B, Lp, d]
            k_r = self.encode_text(self.review_lstm, batch.review_tokens, review_token_mask)  # [N, Lr, d]
        a_p = self.encode_image(
            self.product_image_projection, self.product_image_encoder, batch.product_regions, product_region_mask
        )  # [B, Mp, d]
        a_r = self.encode_image(
            self.review_image_projection, self.review_image_encoder, batch.review_regions, review_region_mask
        )  # [N, Mr, d]
        x = {
            "product_text": k_p[rows],  # [N, Lp, d]
            "review_text": k_r,  # [N, Lr, d]
            "product_image": a_p[rows],  # [N, Mp, d]
            "review_image": a_r,  # [N, Mr, d]
        }
        mask = {
            "product_text": product_token_mask[rows],  # [N, Lp]
            "review_text": review_token_mask,  # [N, Lr]
            "product_image": product_region_mask[rows],  # [N, Mp]
            "review_image": review_region_mask,  # [N, Mr]
        }
        return x, mask

    def interact(self, x: dict[str, Tensor], mask: dict[str, Tensor]) -> dict[str, Tensor]:
        """The multimodal interaction module (eqs. 9-14): each component attends to the other three; padded
        positions come out as zeros. Without the module (`use_interaction` off) the components as they are."""
        if not self.use_interaction:
            return x
        out = {}
        for name in COMPONENTS:
            others = [other for other in COMPONENTS if other != name]
            context = torch.cat([x[other] for other in others], dim=1)  # [N, Le, d], Le = sum of the others
            context_mask = torch.cat([mask[other] for other in others], dim=1)  # [N, Le]
            q = x[name]  # eq. 9: Q[0] = X_gamma
            for layer in self.interaction[name]:
                q = self.run(layer, q, context, context_mask)  # [N, L_gamma, d]
            out[name] = q * mask[name][..., None].to(q.dtype)
        return out

    def forward(self, batch: Batch, explain: bool = False) -> ModelOutput:
        """Scores of every row; with `explain`, also their exact split (`Explanation`)."""
        x, mask = self.components(batch)  # encoders (eqs. 2-4)
        out = self.interact(x, mask)  # eqs. 9-14
        h_p, h_r, v_p, v_r = (out[name] for name in COMPONENTS)  # eqs. 13-14
        m_hp, m_hr, m_vp, m_vr = (mask[name] for name in COMPONENTS)

        def fuse(name: str, first: Tensor, second: Tensor, first_mask: Tensor, second_mask: Tensor):
            joint_mask = torch.cat([first_mask, second_mask], dim=1)  # [N, L1 + L2]
            return self.run(self.fusion[name], torch.cat([first, second], dim=1), joint_mask), joint_mask

        # Intra-modal fusion (eqs. 15-17): CNN over [H_intraM, V_intraM] with only the real positions, then max.
        h_intra, h_intra_mask = fuse("intra_text", h_p, h_r, m_hp, m_hr)  # [N, Lp + Lr, d]
        v_intra, v_intra_mask = fuse("intra_image", v_p, v_r, m_vp, m_vr)  # [N, Mp + Mr, d]
        packed, packed_mask = pack_left(
            torch.cat([h_intra, v_intra], dim=1), torch.cat([h_intra_mask, v_intra_mask], dim=1)
        )  # [N, Lp + Lr + Mp + Mr, d]
        conv = F.relu(self.intra_modal_conv(packed.transpose(1, 2))).transpose(1, 2)  # [N, Lp + Lr + Mp + Mr, d]
        z_intra_modal = masked_max(conv, packed_mask)  # [N, d]

        # Inter-modal fusion (eqs. 18-22): product text with review image, product image with review text.
        text_image, text_image_mask = fuse("text_image", h_p, v_r, m_hp, m_vr)  # [N, Lp + Mr, d]
        image_text, image_text_mask = fuse("image_text", v_p, h_r, m_vp, m_hr)  # [N, Mp + Lr, d]
        z_inter_modal = torch.cat(
            [masked_mean(text_image, text_image_mask), masked_mean(image_text, image_text_mask)], dim=1
        )  # [N, 2d]

        # Intra-review fusion (eqs. 23-27): product text with product image, review text with review image.
        product_pair, product_pair_mask = fuse("product_pair", h_p, v_p, m_hp, m_vp)  # [N, Lp + Mp, d]
        review_pair, review_pair_mask = fuse("review_pair", h_r, v_r, m_hr, m_vr)  # [N, Lr + Mr, d]
        z_intra_review = torch.cat(
            [masked_mean(product_pair, product_pair_mask), masked_mean(review_pair, review_pair_mask)], dim=1
        )  # [N, 2d]

        z_final = torch.cat([z_intra_modal, z_inter_modal, z_intra_review], dim=1)  # [N, 5d] eq. 28
        row_scores = self.scorer(z_final).squeeze(1)  # [N] eq. 29
        side = None
        if self.side_scorer is not None:
            inputs = [batch.review_side] if self.side_lengths else []
            inputs.append(batch.review_extra[:, self.side_columns])  # [N, len(side_columns)]
            side = self.side_scorer(torch.cat(inputs, dim=1)).squeeze(1)  # [N]
            row_scores = row_scores + side  # [N]
        if self.length_anchor:
            anchor = self.length_anchor * batch.review_side[:, 0]  # [N]: log(1 + words) of each review
            side = anchor if side is None else side + anchor  # [N]
            row_scores = row_scores + anchor  # [N]
        scores = row_scores[batch.list_rows] * batch.list_mask.to(row_scores.dtype)  # [B, R]

        pooled = {name: masked_max(out[name], mask[name]) for name in COMPONENTS}  # eqs. 30-31, each [N, d]
        present = {name: mask[name].any(dim=1) for name in COMPONENTS}  # each [N]
        explanation = None
        if explain:
            # Each mean-pooled part: its fused sequence, that sequence's mask, and whose positions it holds.
            means = {
                "product_text_review_image": (text_image, text_image_mask, ("product_text", "review_image")),
                "product_image_review_text": (image_text, image_text_mask, ("product_image", "review_text")),
                "product_text_product_image": (product_pair, product_pair_mask, ("product_text", "product_image")),
                "review_text_review_image": (review_pair, review_pair_mask, ("review_text", "review_image")),
            }
            explanation = self.explain(conv, packed_mask, torch.cat([h_intra_mask, v_intra_mask], dim=1), means,
                                       side, mask)
        return ModelOutput(scores=scores, row_scores=row_scores, pooled=pooled, present=present,
                           explanation=explanation)

    def explain(self, conv: Tensor, packed_mask: Tensor, intra_mask: Tensor,
                means: dict[str, tuple[Tensor, Tensor, tuple[str, str]]], side: Tensor | None,
                mask: dict[str, Tensor]) -> Explanation:
        """The exact split of eq. 29 (module docstring): parts, and their shares per position of each component.

        conv [N, Lt, d] and packed_mask [N, Lt]: the intra-modal CNN's output over the packed positions of
        `[h_p, h_r, v_p, v_r]`, whose unpacked mask is intra_mask [N, Lt]; means: the four mean-pooled parts."""
        d = conv.shape[2]
        weights = dict(zip(PARTS, self.scorer.weight[0].split(d)))  # each [d]
        lengths = [mask[name].shape[1] for name in COMPONENTS]
        shares = {name: torch.zeros_like(mask[name], dtype=conv.dtype) for name in COMPONENTS}  # each [N, L_c]
        parts = []

        # Eq. 17: each channel's term w_k z_k goes to the position holding its maximum (none: z_k = 0).
        filled = conv.masked_fill(~packed_mask[..., None], float("-inf"))  # [N, Lt, d]
        winner = filled.argmax(dim=1)  # [N, d]
        terms = weights["intra_modal"] * masked_max(conv, packed_mask)  # [N, d]
        packed_shares = torch.zeros_like(packed_mask, dtype=conv.dtype).scatter_add(1, winner, terms)  # [N, Lt]
        # Packed position j holds unpacked position left_order(intra_mask)[:, j], as in pack_left.
        unpacked = torch.zeros_like(packed_shares).scatter_add(1, left_order(intra_mask), packed_shares)  # [N, Lt]
        for name, piece in zip(COMPONENTS, unpacked.split(lengths, dim=1)):
            shares[name] = shares[name] + piece  # [N, L_c]
        parts.append(terms.sum(dim=1))  # [N]

        # Eqs. 20-27: a mean pool is the sum of w . x_i / n over its n real positions.
        for part, (sequence, sequence_mask, (first, second)) in means.items():
            count = sequence_mask.sum(dim=1, keepdim=True).clamp(min=1).to(sequence.dtype)  # [N, 1]
            position = (sequence @ weights[part]) * sequence_mask.to(sequence.dtype) / count  # [N, L1 + L2]
            first_share, second_share = position.split([mask[first].shape[1], mask[second].shape[1]], dim=1)
            shares[first] = shares[first] + first_share  # [N, L1]
            shares[second] = shares[second] + second_share  # [N, L2]
            parts.append(position.sum(dim=1))  # [N]
        return Explanation(bias=float(self.scorer.bias[0]), side=side, parts=torch.stack(parts, dim=1),
                           shares=shares)
