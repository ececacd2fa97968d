"""MCR: Multi-perspective Coherent Reasoning (Liu et al., "Multi-perspective Coherent Reasoning for Helpfulness
Prediction of Multimodal Reviews", ACL 2021), the previous state of the art on Amazon-MRHP and Lazada-MRHP.

A review is scored by how coherent its text and images are with the product's, from three perspectives:

(a) intra-modal coherence: review tokens cross-attend to the product's tokens and a self-attention block
    follows; the cosine similarity matrices `[Lp, Lr]` between the product's tokens and the review's (as encoded,
    and after that attention) are the channels of "kernel max pooling" (as in Conv-KNRM's translation matrices:
    2-D convolutions with small square kernels over the product x review grid, tanh, the top-k values of each
    filter over the real cells); the same for image regions `[Mp, Mr]`. Product-aware attention vectors
    (`mrhp.models.baselines.layers.ProductAwareAttention`: each review token plus the product tokens it attends to,
    mean-pooled) are added for both modalities;
(b) inter-modal coherence: every sequence is mapped to a common space (Linear-Tanh-Linear, one map per
    modality); the product image attends to the review text and the product text to the review image, and both
    are mean-pooled;
(c) intra-review coherent reasoning: graph attention over the product's text and image nodes gives a "claim"
    vector, which guides attention pooling over the review's text and image nodes.

All features are concatenated and scored by an MLP (128, 64) -> 1, trained with the pairwise hinge loss (eq. 34).

Taken from the paper and SPEC 8: CNN text encoders with n-gram widths 1, 3, 5 whose maps are summed; image
encoder Linear(F -> d) + 3 pre-norm self-attention layers; the three perspectives; the MLP sizes.

Decided here, where the description is silent:
* separate text encoders and separate image encoders for the product and the review (like the paper's model);
  feed-forward width of the image encoder 4d (512 at d = 128), heads `model.num_heads` (4 by default);
* kernel max pooling: two similarity channels per modality (the review as encoded and after the intra-modal
  attention, each against the encoded product), square kernels of sizes 1, 2 and 3 (the reference code's
  sizes start at 1, the plain similarity) with 8 filters each, top-4 values per filter over the real cells
  (cells of padded rows or columns are excluded from the top-k and hold 0, so windows running past a text's end
  see zeros with or without batch padding);
* `modality_vectors` (for the distance analysis of the paper's Tables 7-8): the max-pooled encoded product
  text and image and the review text and image after the intra-modal attention, the places of MCR that match
  the paper model's pooled `h^p, h^r, v^p, v^r`;
* the graph reasoning is additive graph attention, `e_ij = v^T tanh(W_q x_i + W_k x_j)`, with
  `REASONING_STEPS` residual steps `x_i <- x_i + ReLU(W_o sum_j softmax_j(e_ij) x_j)`; the claim is the masked
  mean of the final nodes. The pair tensor `[B, T, T, d]` is what makes MCR's memory grow with the square of the
  node count T = Lp + Mp (benchmarks/models.py measures it). The claim depends on the product alone, so it is
  computed once per product and gathered for its reviews (the same values as per row, B instead of N times);
* the claim-guided pooling is `softmax_j(y_j . W_c c)` over the review's text and image nodes; its output and the
  claim both enter the scorer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrhp.config import ModelConfig, ModelInputs
from mrhp.data.batching import Batch
from mrhp.models.baselines.layers import (
    CrossAttention,
    ImageEncoder,
    NgramConv,
    ProductAwareAttention,
    Ranker,
    masked_softmax,
    region_masks,
    scorer,
)
from mrhp.models.paper import (
    COMPONENTS,
    MaskedAttention,
    ModelOutput,
    SelfAttentionBlock,
    masked_max,
    masked_mean,
)

TEXT_NGRAMS = (1, 3, 5)
IMAGE_LAYERS = 3
KMP_KERNELS = (1, 2, 3)  # square kernel sizes of kernel max pooling
KMP_CHANNELS = 2  # similarity matrices per modality: the review as encoded, and after the intra-modal attention
KMP_FILTERS = 8  # filters per kernel size
KMP_TOP_K = 4
REASONING_STEPS = 2
MLP_SIZES = (128, 64)


def similarity_channels(
    product: Tensor, product_mask: Tensor, reviews: list[Tensor], review_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Cosine similarity matrices between a product's positions and a review's, one channel per review encoding.
    product [X, Lp, d], reviews C x [X, Lr, d] -> ([X, C, Lp, Lr] zero at padded cells, cell mask [X, Lp, Lr])."""
    cells = product_mask[:, :, None] & review_mask[:, None, :]  # [X, Lp, Lr]
    unit_product = F.normalize(product, dim=-1)  # [X, Lp, d]
    grids = [unit_product @ F.normalize(review, dim=-1).transpose(1, 2) for review in reviews]  # C x [X, Lp, Lr]
    return torch.stack(grids, dim=1) * cells[:, None].to(product.dtype), cells  # [X, C, Lp, Lr]


class KernelMaxPooling(nn.Module):
    """2-D convolutions over product x review similarity matrices, tanh, and the top-k values of each filter over
    the real cells. grid [X, C, Lp, Lr] (zero at padded cells), cells [X, Lp, Lr] -> [X, kernels * filters * k]."""

    def __init__(self, channels: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, KMP_FILTERS, size) for size in KMP_KERNELS)

    def forward(self, grid: Tensor, cells: Tensor) -> Tensor:
        pooled = []
        for size, conv in zip(KMP_KERNELS, self.convs):
            # Windows start at each cell and run right/down into zeros: the same zeros with or without padding.
            maps = torch.tanh(conv(F.pad(grid, (0, size - 1, 0, size - 1))))  # [X, filters, Lp, Lr]
            maps = maps.masked_fill(~cells[:, None], float("-inf")).flatten(2)  # [X, filters, Lp * Lr]
            # A batch whose grids hold fewer than k cells gets -inf slots to take k from.
            maps = F.pad(maps, (0, max(0, KMP_TOP_K - maps.shape[2])), value=float("-inf"))  # [X, filters, >= k]
            top = maps.topk(KMP_TOP_K, dim=2).values  # [X, filters, k]
            # Fewer real cells than k (or none: an absent product or review side) leave -inf slots: zeros.
            pooled.append(torch.where(torch.isfinite(top), top, torch.zeros_like(top)).flatten(1))
        return torch.cat(pooled, dim=1)


class ClaimReasoning(nn.Module):
    """Graph attention over a product's text and image nodes -> its claim vector.
    nodes [B, T, d] (zero at padding), mask [B, T] -> [B, d]."""

    def __init__(self, dim: int, steps: int):
        super().__init__()
        self.query = nn.ModuleList(nn.Linear(dim, dim) for _ in range(steps))
        self.key = nn.ModuleList(nn.Linear(dim, dim) for _ in range(steps))
        self.energy = nn.ModuleList(nn.Linear(dim, 1, bias=False) for _ in range(steps))
        self.update = nn.ModuleList(nn.Linear(dim, dim) for _ in range(steps))

    def forward(self, nodes: Tensor, mask: Tensor) -> Tensor:
        x = nodes
        keep = mask[..., None].to(x.dtype)
        for query, key, energy, update in zip(self.query, self.key, self.energy, self.update):
            pairs = torch.tanh(query(x)[:, :, None, :] + key(x)[:, None, :, :])  # [B, T, T, d]: the quadratic term
            weights = masked_softmax(energy(pairs).squeeze(-1), mask[:, None, :], dim=2)  # [B, T, T]
            x = (x + torch.relu(update(weights @ x))) * keep  # [B, T, d]
        return masked_mean(x, mask)


class MCR(Ranker):
    """f(p, r) of MCR; see the module docstring."""

    def __init__(self, config: ModelConfig, inputs: ModelInputs):
        super().__init__(inputs.vocab_size, inputs.embedding_dim, config.dropout)
        d, heads, drop = config.hidden_size, config.num_heads, config.dropout
        self.use_images = config.use_images and inputs.image_dim > 0
        self.product_text = NgramConv(inputs.embedding_dim, d, TEXT_NGRAMS, activation=False)
        self.review_text = NgramConv(inputs.embedding_dim, d, TEXT_NGRAMS, activation=False)
        self.product_image = ImageEncoder(inputs.image_dim, d, IMAGE_LAYERS, heads, 4 * d, drop)
        self.review_image = ImageEncoder(inputs.image_dim, d, IMAGE_LAYERS, heads, 4 * d, drop)
        # (a) intra-modal coherence
        self.text_cross, self.image_cross = CrossAttention(d, heads, drop), CrossAttention(d, heads, drop)
        self.text_self = SelfAttentionBlock(d, heads, 4 * d, drop)
        self.image_self = SelfAttentionBlock(d, heads, 4 * d, drop)
        self.text_kmp, self.image_kmp = KernelMaxPooling(KMP_CHANNELS), KernelMaxPooling(KMP_CHANNELS)
        self.text_aware, self.image_aware = ProductAwareAttention(d), ProductAwareAttention(d)
        # (b) inter-modal coherence
        self.text_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d))
        self.image_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d))
        self.image_to_text = MaskedAttention(d, heads)
        self.text_to_image = MaskedAttention(d, heads)
        # (c) intra-review coherent reasoning
        self.reasoning = ClaimReasoning(d, REASONING_STEPS)
        self.claim_guide = nn.Linear(d, d)
        kmp_size = len(KMP_KERNELS) * KMP_FILTERS * KMP_TOP_K
        self.scorer = scorer(2 * kmp_size + 6 * d, MLP_SIZES, drop)

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """The encoders and the intra-modal attention: every sequence the three perspectives read, by name."""
        rows = batch.review_product  # [N]
        m_pt, m_rt = batch.product_token_mask, batch.review_token_mask  # [B, Lp], [N, Lr]
        m_pi, m_ri = region_masks(batch, self.use_images)  # [B, Mp], [N, Mr]
        p_text = sum(self.product_text(self.embed(batch.product_tokens, m_pt), m_pt))  # [B, Lp, d]
        r_text = sum(self.review_text(self.embed(batch.review_tokens, m_rt), m_rt))  # [N, Lr, d]
        p_image = self.product_image(batch.product_regions, m_pi)  # [B, Mp, d]
        r_image = self.review_image(batch.review_regions, m_ri)  # [N, Mr, d]
        pt, pi, m_ptr, m_pir = p_text[rows], p_image[rows], m_pt[rows], m_pi[rows]  # product side per row
        # (a) the review attends to the product, then to itself.
        text = self.text_self(self.text_cross(r_text, m_rt, pt, m_ptr), m_rt)  # [N, Lr, d]
        image = self.image_self(self.image_cross(r_image, m_ri, pi, m_pir), m_ri)  # [N, Mr, d]
        return dict(p_text=p_text, r_text=r_text, p_image=p_image, r_image=r_image, pt=pt, pi=pi, text=text,
                    image=image, m_pt=m_pt, m_rt=m_rt, m_pi=m_pi, m_ri=m_ri, m_ptr=m_ptr, m_pir=m_pir)

    def modality_vectors(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per row the max-pooled product text, review text, product image and review image (each [N, d]) and
        whether the row has each (each [N] bool), keyed like the paper model's `ModelOutput.pooled`."""
        e = self.encode(batch)
        chosen = [(e["pt"], e["m_ptr"]), (e["text"], e["m_rt"]), (e["pi"], e["m_pir"]), (e["image"], e["m_ri"])]
        sequences = dict(zip(COMPONENTS, chosen))  # product text, review text, product image, review image
        pooled = {name: masked_max(x, mask) for name, (x, mask) in sequences.items()}  # each [N, d]
        present = {name: mask.any(dim=1) for name, (_, mask) in sequences.items()}  # each [N]
        return pooled, present

    def forward(self, batch: Batch) -> ModelOutput:
        rows = batch.review_product  # [N]
        e = self.encode(batch)
        p_text, r_text, p_image, r_image = e["p_text"], e["r_text"], e["p_image"], e["r_image"]
        pt, pi, m_ptr, m_pir = e["pt"], e["pi"], e["m_ptr"], e["m_pir"]
        m_pt, m_rt, m_pi, m_ri = e["m_pt"], e["m_rt"], e["m_pi"], e["m_ri"]

        # (a) intra-modal coherence: kernel max pooling over product x review similarity matrices.
        text_grid, text_cells = similarity_channels(pt, m_ptr, [r_text, e["text"]], m_rt)  # [N, 2, Lp, Lr]
        image_grid, image_cells = similarity_channels(pi, m_pir, [r_image, e["image"]], m_ri)  # [N, 2, Mp, Mr]
        intra = [
            self.text_kmp(text_grid, text_cells),
            self.image_kmp(image_grid, image_cells),
            self.text_aware(pt, m_ptr, r_text, m_rt),  # [N, d]
            self.image_aware(pi, m_pir, r_image, m_ri),  # [N, d]
        ]

        # (b) inter-modal coherence in a common space.
        c_pt, c_rt = self.text_common(pt), self.text_common(r_text)  # [N, Lp, d], [N, Lr, d]
        c_pi, c_ri = self.image_common(pi), self.image_common(r_image)  # [N, Mp, d], [N, Mr, d]
        inter = [
            masked_mean(self.image_to_text(c_pi, c_rt, m_rt), m_pir),  # product image -> review text, [N, d]
            masked_mean(self.text_to_image(c_pt, c_ri, m_ri), m_ptr),  # product text -> review image, [N, d]
        ]

        # (c) intra-review coherent reasoning: the product's claim guides pooling over the review's nodes.
        claim = self.reasoning(torch.cat([p_text, p_image], dim=1), torch.cat([m_pt, m_pi], dim=1))[rows]  # [N, d]
        nodes, node_mask = torch.cat([r_text, r_image], dim=1), torch.cat([m_rt, m_ri], dim=1)  # [N, Lr + Mr, d]
        guide = (nodes @ self.claim_guide(claim)[:, :, None]).squeeze(2)  # [N, Lr + Mr]
        evidence = (masked_softmax(guide, node_mask, dim=1)[:, None, :] @ nodes).squeeze(1)  # [N, d]

        z = torch.cat([*intra, *inter, claim, evidence], dim=1)  # [N, 2 * kmp + 6d]
        return self.output(self.scorer(z).squeeze(1), batch)
