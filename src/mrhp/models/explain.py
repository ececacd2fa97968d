"""Explanations of scores in answers: the exact split of a list's scores (`ScoreSplit`, from
`mrhp.models.paper.Explanation`) and the JSON explanation of one review.

A review's explanation::

    {"bias": b, "side": s, "paths": {PATH: x, ...}, "parts": {PART: x, ...}, "sources": {COMPONENT: x, ...},
     "words": [{"word": "great", "position": 0, "weight": 0.12}, ...],
     "regions": [{"image": 0, "region": 3, "weight": -0.04}, ...]}

`bias + side + sum(paths)` is the score up to float rounding, and so is `bias + side + sum(parts)` or
`bias + side + sum(sources)`; `side` is there only for a model with side features (`model.side_features`) or a
length anchor (`model.length_anchor`). PATH, PART and COMPONENT are `mrhp.models.paper.PATHS`, `PARTS` and `COMPONENTS`. `words`: the review's `TOP_WORDS` tokens of
largest share in absolute value (their positions among the tokens the model read, from 0; word pieces with the
special tokens for a pretrained text encoder); `regions`: its `TOP_REGIONS` image regions likewise (the image as
its index in the review's `images`, the region within that image, both from 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from mrhp.models.paper import COMPONENTS, PARTS, PATHS, Explanation

TOP_WORDS = 10  # words and regions an explanation lists, by largest share in absolute value
TOP_REGIONS = 5


@dataclass(frozen=True)
class ScoreSplit:
    """The exact split of the scores of one list's reviews (`mrhp.models.paper.Explanation`), float64, a row per review:
    `bias + side + parts.sum(1) == scores` (side 0 when None) up to float rounding, and
    `sources.sum(1) == parts.sum(1)`."""

    bias: float
    side: np.ndarray | None  # [n], None for a model without side features
    parts: np.ndarray  # [n, len(PARTS)]
    sources: np.ndarray  # [n, len(COMPONENTS)]: each component's positions' shares added up
    review_text: list[np.ndarray]  # per review, each token position's share (0 beyond its tokens)
    review_regions: list[np.ndarray]  # per review, each region's share (0 beyond its regions)

    @classmethod
    def of_rows(cls, explanation: Explanation, rows: slice) -> ScoreSplit:
        def numpy(values: Tensor) -> np.ndarray:
            return values[rows].cpu().double().numpy()

        shares = {name: numpy(value) for name, value in explanation.shares.items()}
        return cls(
            bias=explanation.bias,
            side=None if explanation.side is None else numpy(explanation.side),
            parts=numpy(explanation.parts),
            sources=np.stack([shares[name].sum(axis=1) for name in COMPONENTS], axis=1),
            review_text=list(shares["review_text"]),
            review_regions=list(shares["review_image"]),
        )

    @classmethod
    def joined(cls, pieces: Sequence[ScoreSplit]) -> ScoreSplit:
        return cls(
            bias=pieces[0].bias,
            side=None if pieces[0].side is None else np.concatenate([piece.side for piece in pieces]),
            parts=np.concatenate([piece.parts for piece in pieces]),
            sources=np.concatenate([piece.sources for piece in pieces]),
            review_text=[row for piece in pieces for row in piece.review_text],
            review_regions=[row for piece in pieces for row in piece.review_regions],
        )


def _top(shares: np.ndarray, count: int) -> list[int]:
    """Positions of the `count` largest shares in absolute value, largest first (ties: earlier first)."""
    return [int(j) for j in np.argsort(-np.abs(shares), kind="stable")[:count]]


def explanation_json(split: ScoreSplit, j: int, words: list[str], region_images: np.ndarray) -> dict[str, object]:
    """The JSON explanation of review `j` of `split` (module docstring), whose model read `words` and the regions
    of the images `region_images`."""
    parts = dict(zip(PARTS, split.parts[j].tolist()))
    text = split.review_text[j][:len(words)]
    regions = split.review_regions[j][:len(region_images)]
    first_region = {}  # image -> position of its first kept region
    for position, image in enumerate(region_images.tolist()):
        first_region.setdefault(image, position)
    explanation: dict[str, object] = {"bias": split.bias}
    if split.side is not None:
        explanation["side"] = float(split.side[j])
    explanation.update(
        paths={path: sum(value for part, value in parts.items() if PARTS[part] == path) for path in PATHS},
        parts=parts,
        sources=dict(zip(COMPONENTS, split.sources[j].tolist())),
        words=[{"word": words[k], "position": k, "weight": float(text[k])} for k in _top(text, TOP_WORDS)],
        regions=[{"image": int(region_images[k]), "region": k - first_region[int(region_images[k])],
                  "weight": float(regions[k])} for k in _top(regions, TOP_REGIONS)],
    )
    return explanation
