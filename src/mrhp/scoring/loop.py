"""The one scoring loop: evaluation, training's dev scoring, the report, `mrhp predict`, the service and
`Ranker.rank` all score reviews with `score_groups`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from mrhp.config import DataConfig
from mrhp.data.batching import Batch, RankingList, collate, pack_groups
from mrhp.models.paper import Explanation

T = TypeVar("T")
Group = tuple[int, np.ndarray]
"""(index of a product or list, positions of its reviews): the unit `mrhp.data.batching.pack_groups` packs."""


@torch.no_grad()
def forward_groups(
    model: nn.Module,
    groups: Sequence[Group],
    lists_of: Callable[[Sequence[Group]], list[RankingList]],
    *,
    batch_rows: int,
    data: DataConfig,
    feature_dim: int,
    forward: Callable[[Batch], T],
) -> Iterator[tuple[list[Group], Batch, T]]:
    """The loop under `score_groups`: `groups` in order, packed into forward passes of at most `batch_rows` review
    rows (`pack_groups`; a larger group is a pass of its own), each collated on the model's device and given to
    `forward`. `lists_of` turns one pass's groups into ranking lists, so only one pass is ever held in memory.
    Yields each pass's groups, its batch and what `forward` returned."""
    model.eval()
    device = next(model.parameters()).device
    for packed in pack_groups(groups, batch_rows):
        inputs = collate(lists_of(packed), data.max_tokens, data.max_regions, feature_dim).to(device)
        yield packed, inputs, forward(inputs)


def score_groups(
    model: nn.Module,
    groups: Sequence[Group],
    lists_of: Callable[[Sequence[Group]], list[RankingList]],
    *,
    batch_rows: int,
    data: DataConfig,
    feature_dim: int,
    explain: bool = False,
) -> Iterator[tuple[list[Group], np.ndarray, Explanation | None]]:
    """Score `groups` in order (`forward_groups`). Yields each pass's groups with the float64 scores of their
    reviews, in order, and with `explain` (a model that `mrhp.models.registry.explains`) the split of those scores,
    else None."""
    run = (lambda inputs: model(inputs, explain=True)) if explain else model
    for packed, _, output in forward_groups(model, groups, lists_of, batch_rows=batch_rows, data=data,
                                            feature_dim=feature_dim, forward=run):
        yield packed, output.row_scores.double().cpu().numpy(), output.explanation
