"""The distances of the paper's section 4.7 (Tables 7-8 of :mod:`mrhp.studies.report`): each test review's
max-pooled component vectors (``h^p, h^r, v^p, v^r``, the vectors of eqs. 30-31 the contrastive loss acts on; for
MCR the same places, ``MCR.modality_vectors``) and the cosine and L2 distances between them, by label.
"""

from __future__ import annotations

import math

import torch

from mrhp.data.batching import Batch, chunk_product_reviews, split_item_lists
from mrhp.data.prepared import PreparedSplit
from mrhp.models.checkpoint import Checkpoint
from mrhp.objectives.losses import MODALITY_KEYS
from mrhp.scoring.loop import forward_groups

# Section 4.7's groups of the six component pairs (names as in losses.MODALITY_KEYS).
PT, RT, PI, RI = MODALITY_KEYS
DISTANCE_GROUPS = {
    "intra-modal": ((PT, RT), (PI, RI)),
    "inter-modal": ((PT, RI), (PI, RT)),
    "intra-review": ((PT, PI), (RT, RI)),
}


@torch.no_grad()
def component_vectors(
    checkpoint: Checkpoint, split: PreparedSplit, feature_dim: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Per test review: the pooled component vectors {name: [N, d]}, their presence {name: [N]} and labels [N],
    in split order. The paper's model gives them in its output; MCR through `modality_vectors`."""
    model, data = checkpoint.model.eval(), checkpoint.config.data
    groups = chunk_product_reviews(split, data.max_list_size, rng=None)
    vectors: dict[str, list[torch.Tensor]] = {k: [] for k in MODALITY_KEYS}
    present: dict[str, list[torch.Tensor]] = {k: [] for k in MODALITY_KEYS}
    labels = []

    def pooled_of(batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if hasattr(model, "modality_vectors"):
            return model.modality_vectors(batch)
        output = model(batch)
        return output.pooled, output.present

    for _, batch, (pooled, has) in forward_groups(model, groups, lambda packed: split_item_lists(split, packed),
                                                  batch_rows=data.eval_batch_rows, data=data,
                                                  feature_dim=feature_dim, forward=pooled_of):
        for key in MODALITY_KEYS:
            vectors[key].append(pooled[key].float())
            present[key].append(has[key])
        labels.append(batch.review_labels)
    return ({k: torch.cat(v) for k, v in vectors.items()}, {k: torch.cat(v) for k, v in present.items()},
            torch.cat(labels))


def distances(vectors: dict, present: dict, labels: torch.Tensor) -> dict[tuple[int, str, str], float]:
    """Mean cosine distance ("cs") and L2 ("l2") per label and pair (and per section 4.7 group, the mean over the
    reviews and both pairs of the group), over the reviews that have both components of a pair."""
    out: dict[tuple[int, str, str], float] = {}
    for label in sorted(set(labels.tolist())):
        rows = labels == label
        for group, pairs in DISTANCE_GROUPS.items():
            collected: dict[str, list[torch.Tensor]] = {"cs": [], "l2": []}
            for first, second in pairs:
                keep = rows & present[first] & present[second]
                a, b = vectors[first][keep], vectors[second][keep]
                cs = 1 - torch.nn.functional.cosine_similarity(a, b, dim=1)  # [n]
                l2 = (a - b).norm(dim=1)  # [n]
                pair = f"{first}-{second}"
                out[(label, pair, "cs")] = float(cs.mean()) if len(cs) else math.nan
                out[(label, pair, "l2")] = float(l2.mean()) if len(l2) else math.nan
                collected["cs"].append(cs)
                collected["l2"].append(l2)
            for kind, parts in collected.items():
                joined = torch.cat(parts)
                out[(label, group, kind)] = float(joined.mean()) if len(joined) else math.nan
    return out
