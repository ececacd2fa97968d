"""MCR: Multi-perspective Coherent Reasoning (Liu et al., "Multi-perspective Coherent Reasoning for Helpfulness
Prediction of Multimodal Reviews", ACL 2021), the previous state of the art on Amazon-MRHP and Lazada-MRHP.

Built as the authors' code builds it (github.com/jhliu17/MCR: the model its configs `config/lazada/*.json` select,
`CommonSpaceMultimodalLayernormRHP3`, i.e. `CommonSpaceMultimodalLayernormRHPNet3` of
`matchzoo/models/multimodal_rhp.py`, with the sizes of those configs). A review is scored from:

(a) intra-modal coherence: the cosine matrices between the product's positions and the review's, one channel per
    pair of n-gram encodings for text (3 x 3 = 9 channels, as `matchzoo/modules/cross_match.py` crosses the lists
    of n-gram maps) and one channel for image regions, go through "kernel max pooling" (square 2-D convolutions of
    sizes 1..n, tanh, the top-k values of each filter, then LayerNorm): text 2 sizes x 4 filters x top-16, images
    4 sizes x 8 filters x top-8. Product-aware attention vectors (`mrhp.models.baselines.layers.
    ProductAwareAttention`: each review position plus the product positions it attends to, mean-pooled) of the
    summed n-gram maps and of the image regions are added;
(b) inter-modal coherence: the summed text maps and the image regions are mapped to a common space
    (Linear-Tanh-Linear, one map per modality, shared by product and review); product-aware attention from the
    product image to the review text and from the product text to the review image, mean-pooled;
(c) intra-review coherent reasoning: graph attention over the product's text and image nodes gives a "claim"
    vector, which guides attention pooling over the review's text and image nodes.

All features are concatenated and scored by an MLP (128, 64) -> 1, trained with the pairwise hinge loss (eq. 34).
Text encoders: 1-D convolutions of widths 1, 3, 5 with ReLU (the reference's `ConvEncoder`); image encoders:
Linear(F -> d) + 3 pre-norm self-attention layers.

On `matchzoo/modules/cross_modal_match.py`: its `CrossModalMatchLayer` (the cosine between each position and its
attended vector, then kernel pooling) is built only by `MultimodalRHPNet` / `MultimodalLayernormRHPNet`;
`MultimodalLayernormRHPNet3` replaces it, and the configured `CommonSpace...Net3` replaces it again with
`ProductAwareAttention(...).mean(dim=1)` in the common space (its `img2txt_pooler` / `txt2img_pooler` are built
but its `forward` never calls them). So (b) follows the configured model, not that layer.
SPEC 8 also has the review cross-attend to the product, then self-attend, before the kernel pooling of (a); the
configured model has neither (its pooling reads the encoders' outputs), so neither is here.

Where we differ from the reference code on purpose:
* masks: a mean is over real positions only and the top-k only over real cells (padded ones are excluded and give
  0 when fewer than k cells exist), where the reference averages and takes top-k over the padded length, so its
  features change with the batch's padding; here a score does not depend on it (`tests/test_baselines.py`
  checks that for every model). N-gram windows start at each token and run right into zeros (the reference
  centres them): the same n-grams, each filed one position over.
* `modality_vectors` (for the distance analysis of the paper's Tables 7-8, which the reference does not have):
  the max-pooled summed text maps and encoded image regions of product and review, the places of MCR that match
  the paper model's pooled `h^p, h^r, v^p, v^r`.

Not yet as the reference, unmeasured (issue 20 named the three points above; these remain for a follow-up):
* the reference encodes review images with the product's image encoder (`self.prd_img_encoder`, though it builds
  `rvw_img_encoder`); here each side has its own, like the paper's model;
* coherent reasoning (c): the reference runs it on the common-space sequences, reasons over the review's nodes
  too (graph attention whose energies are an MLP over concatenated node pairs, no residual), pools the review's
  nodes by attention against the claim and scores that pooled vector alone. Here: additive graph attention
  `e_ij = v^T tanh(W_q x_i + W_k x_j)` over the product's encoded nodes only, `REASONING_STEPS` residual steps
  `x_i <- x_i + ReLU(W_o sum_j softmax_j(e_ij) x_j)`, the claim as the masked mean of the final nodes,
  `softmax_j(y_j . W_c c)` pooling over the review's nodes, and both the claim and that pooled evidence scored.
  The pair tensor `[B, T, T, d]` makes memory grow with the square of the node count T = Lp + Mp, as in the
  reference (benchmarks/models.py measures it); the claim depends on the product alone, so it is computed once
  per product and gathered for its reviews.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrhp.config import ModelConfig, ModelInputs
from mrhp.data.batching import Batch
from mrhp.models.baselines.layers import (
    ImageEncoder,
    NgramConv,
    ProductAwareAttention,
    Ranker,
    masked_softmax,
    region_masks,
    scorer,
)
from mrhp.models.paper import COMPONENTS, ModelOutput, masked_max, masked_mean

TEXT_NGRAMS = (1, 3, 5)
IMAGE_LAYERS = 3
# Kernel max pooling of config/lazada/*.json: (square kernel sizes 1..n, filters per size, top-k per filter).
TEXT_POOLING = (2, 4, 16)
IMAGE_POOLING = (4, 8, 8)
REASONING_STEPS = 2
MLP_SIZES = (128, 64)


def similarity_channels(
    products: list[Tensor], product_mask: Tensor, reviews: list[Tensor], review_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Cosine similarity matrices between a product's positions and a review's, one channel per (product
    encoding, review encoding) pair, product-major. products Cp x [X, Lp, d], reviews Cr x [X, Lr, d] ->
    ([X, Cp * Cr, Lp, Lr] zero at padded cells, cell mask [X, Lp, Lr])."""
    cells = product_mask[:, :, None] & review_mask[:, None, :]  # [X, Lp, Lr]
    units = [F.normalize(review, dim=-1).transpose(1, 2) for review in reviews]  # Cr x [X, d, Lr]
    grids = [F.normalize(product, dim=-1) @ unit for product in products for unit in units]  # Cp*Cr x [X, Lp, Lr]
    return torch.stack(grids, dim=1) * cells[:, None].to(grids[0].dtype), cells  # [X, Cp * Cr, Lp, Lr]


class KernelMaxPooling(nn.Module):
    """2-D convolutions of square sizes 1..`kernels` over product x review similarity matrices, tanh, the top-k
    values of each filter over the real cells, then LayerNorm over them all (as the reference normalises each
    pooled block). grid [X, C, Lp, Lr] (zero at padded cells), cells [X, Lp, Lr] -> [X, kernels * filters * k]."""

    def __init__(self, channels: int, kernels: int, filters: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.convs = nn.ModuleList(nn.Conv2d(channels, filters, size) for size in range(1, kernels + 1))
        self.norm = nn.LayerNorm(kernels * filters * top_k)

    def forward(self, grid: Tensor, cells: Tensor) -> Tensor:
        pooled = []
        for conv in self.convs:
            size = conv.kernel_size[0]
            # Windows start at each cell and run right/down into zeros: the same zeros with or without padding.
            maps = torch.tanh(conv(F.pad(grid, (0, size - 1, 0, size - 1))))  # [X, filters, Lp, Lr]
            maps = maps.masked_fill(~cells[:, None], float("-inf")).flatten(2)  # [X, filters, Lp * Lr]
            # A batch whose grids hold fewer than k cells gets -inf slots to take k from.
            maps = F.pad(maps, (0, max(0, self.top_k - maps.shape[2])), value=float("-inf"))  # [X, filters, >= k]
            top = maps.topk(self.top_k, dim=2).values  # [X, filters, k]
            # Fewer real cells than k (or none: an absent product or review side) leave -inf slots: zeros.
            pooled.append(torch.where(torch.isfinite(top), top, torch.zeros_like(top)).flatten(1))
        return self.norm(torch.cat(pooled, dim=1))  # [X, kernels * filters * k]


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
        self.product_text = NgramConv(inputs.embedding_dim, d, TEXT_NGRAMS)
        self.review_text = NgramConv(inputs.embedding_dim, d, TEXT_NGRAMS)
        self.product_image = ImageEncoder(inputs.image_dim, d, IMAGE_LAYERS, heads, 4 * d, drop)
        self.review_image = ImageEncoder(inputs.image_dim, d, IMAGE_LAYERS, heads, 4 * d, drop)
        # (a) intra-modal coherence
        self.text_kmp = KernelMaxPooling(len(TEXT_NGRAMS) ** 2, *TEXT_POOLING)
        self.image_kmp = KernelMaxPooling(1, *IMAGE_POOLING)
        self.text_aware, self.image_aware = ProductAwareAttention(d), ProductAwareAttention(d)
        # (b) inter-modal coherence
        self.text_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d))
        self.image_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d))
        self.image_to_text, self.text_to_image = ProductAwareAttention(d), ProductAwareAttention(d)
        # (c) intra-review coherent reasoning
        self.reasoning = ClaimReasoning(d, REASONING_STEPS)
        self.claim_guide = nn.Linear(d, d)
        pooled = sum(kernels * filters * k for kernels, filters, k in (TEXT_POOLING, IMAGE_POOLING))
        self.scorer = scorer(pooled + 6 * d, MLP_SIZES, drop)

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """The encoders: every sequence the three perspectives read, by name."""
        rows = batch.review_product  # [N]
        m_pt, m_rt = batch.product_token_mask, batch.review_token_mask  # [B, Lp], [N, Lr]
        m_pi, m_ri = region_masks(batch, self.use_images)  # [B, Mp], [N, Mr]
        p_grams = self.product_text(self.embed(batch.product_tokens, m_pt), m_pt)  # 3 x [B, Lp, d]
        r_grams = self.review_text(self.embed(batch.review_tokens, m_rt), m_rt)  # 3 x [N, Lr, d]
        p_image = self.product_image(batch.product_regions, m_pi)  # [B, Mp, d]
        r_image = self.review_image(batch.review_regions, m_ri)  # [N, Mr, d]
        p_text, r_text = sum(p_grams), sum(r_grams)  # [B, Lp, d], [N, Lr, d]: the summed n-gram maps
        return {"p_grams": p_grams, "r_grams": r_grams, "p_text": p_text, "r_text": r_text, "p_image": p_image,
                "r_image": r_image, "m_pt": m_pt, "m_rt": m_rt, "m_pi": m_pi, "m_ri": m_ri,
                # the product side per review row
                "pt": p_text[rows], "pi": p_image[rows], "m_ptr": m_pt[rows], "m_pir": m_pi[rows]}

    def modality_vectors(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per row the max-pooled product text, review text, product image and review image (each [N, d]) and
        whether the row has each (each [N] bool), keyed like the paper model's `ModelOutput.pooled`."""
        e = self.encode(batch)
        chosen = [(e["pt"], e["m_ptr"]), (e["r_text"], e["m_rt"]), (e["pi"], e["m_pir"]), (e["r_image"], e["m_ri"])]
        sequences = dict(zip(COMPONENTS, chosen))  # product text, review text, product image, review image
        pooled = {name: masked_max(x, mask) for name, (x, mask) in sequences.items()}  # each [N, d]
        present = {name: mask.any(dim=1) for name, (_, mask) in sequences.items()}  # each [N]
        return pooled, present

    def features(self, batch: Batch) -> dict[str, Tensor]:
        """What the scorer reads, by perspective, each [N, width], in the scorer's order."""
        rows = batch.review_product  # [N]
        e = self.encode(batch)
        pt, pi, r_text, r_image = e["pt"], e["pi"], e["r_text"], e["r_image"]
        m_ptr, m_pir, m_rt, m_ri = e["m_ptr"], e["m_pir"], e["m_rt"], e["m_ri"]
        # (a) kernel max pooling over product x review cosine matrices: every pair of n-gram maps for text.
        text_grid, text_cells = similarity_channels([g[rows] for g in e["p_grams"]], m_ptr, e["r_grams"], m_rt)
        image_grid, image_cells = similarity_channels([pi], m_pir, [r_image], m_ri)  # [N, 1, Mp, Mr]
        # (b) product-aware attention across modalities in a common space.
        c_pt, c_rt = self.text_common(pt), self.text_common(r_text)  # [N, Lp, d], [N, Lr, d]
        c_pi, c_ri = self.image_common(pi), self.image_common(r_image)  # [N, Mp, d], [N, Mr, d]
        # (c) the product's claim guides pooling over the review's nodes.
        claim = self.reasoning(torch.cat([e["p_text"], e["p_image"]], dim=1),
                               torch.cat([e["m_pt"], e["m_pi"]], dim=1))[rows]  # [N, d]
        nodes, node_mask = torch.cat([r_text, r_image], dim=1), torch.cat([m_rt, m_ri], dim=1)  # [N, Lr + Mr, d]
        guide = (nodes @ self.claim_guide(claim)[:, :, None]).squeeze(2)  # [N, Lr + Mr]
        evidence = (masked_softmax(guide, node_mask, dim=1)[:, None, :] @ nodes).squeeze(1)  # [N, d]
        return {
            "text_match": self.text_kmp(text_grid, text_cells),  # [N, 2 * 4 * 16]
            "image_match": self.image_kmp(image_grid, image_cells),  # [N, 4 * 8 * 8]
            "text_aware": self.text_aware(pt, m_ptr, r_text, m_rt),  # [N, d]
            "image_aware": self.image_aware(pi, m_pir, r_image, m_ri),  # [N, d]
            "image_to_text": self.image_to_text(c_pi, m_pir, c_rt, m_rt),  # product image -> review text, [N, d]
            "text_to_image": self.text_to_image(c_pt, m_ptr, c_ri, m_ri),  # product text -> review image, [N, d]
            "claim": claim,
            "evidence": evidence,
        }

    def forward(self, batch: Batch) -> ModelOutput:
        z = torch.cat(list(self.features(batch).values()), dim=1)  # [N, 384 + 6d]
        return self.output(self.scorer(z).squeeze(1), batch)
