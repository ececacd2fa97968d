"""Ranking lists and batches: a product with (some of) its reviews is one list; a batch packs lists up to a number
of product-review rows (paper 4.2: 32 rows per step), and every valid pair inside a list is trained on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mrhp.config import SOURCE_SAMPLING
from mrhp.data.prepared import PreparedSplit
from mrhp.data.side import STORED_SIDE_FEATURES
from mrhp.data.text import MAX_WORD_CHARS


@dataclass
class Batch:
    """A batch of ranking lists: `B` products, each with some of its reviews (`N` reviews in all).

    `list_rows[b, r]` is the row (index into the `N` reviews) of the r-th review of list b; `list_mask[b, r]`
    says whether that slot holds a review. A product may appear in several lists of a batch (a long list is cut
    into pieces); `review_product[n]` is the list (product slot) of review row n.
    """

    product_tokens: Tensor  # [B, Lp] int64
    product_token_mask: Tensor  # [B, Lp] bool
    product_regions: Tensor  # [B, Mp, F] float32
    product_region_mask: Tensor  # [B, Mp] bool
    review_tokens: Tensor  # [N, Lr] int64
    review_token_mask: Tensor  # [N, Lr] bool
    review_regions: Tensor  # [N, Mr, F] float32
    review_region_mask: Tensor  # [N, Mr] bool
    review_product: Tensor  # [N] int64, index into B
    list_group: Tensor  # [B] int64: lists cut from the same product share a group (contrastive false negatives)
    review_labels: Tensor  # [N] int64 (0 where unknown, e.g. at prediction time)
    list_rows: Tensor  # [B, R] int64, index into N (0 in padded slots)
    list_mask: Tensor  # [B, R] bool
    # Pretrained text encoders (model.text_encoder != "lstm"): token states stored when preparing; an empty
    # [X, 1, 1] with an all-False mask when the items carry none.
    product_states: Tensor  # [B, Sp, H] float32
    product_state_mask: Tensor  # [B, Sp] bool
    review_states: Tensor  # [N, Sr, H] float32
    review_state_mask: Tensor  # [N, Sr] bool
    review_side: Tensor  # [N, SIDE_FEATURES] float32: side_features() of each review (model.side_features)
    review_extra: Tensor  # [N, STORED_SIDE_FEATURES] float32: extra_side_inputs() (model.extra_side_features)
    review_chars: Tensor  # [N, Lr, MAX_WORD_CHARS] int32 code points of each review word (0 = none; EG-CNN)

    @property
    def labels(self) -> Tensor:
        """Labels in list layout `[B, R]` (0 in padded slots)."""
        return self.review_labels[self.list_rows] * self.list_mask

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch on `device`; `non_blocking` lets a copy from pinned memory overlap the host's work."""
        return Batch(**{name: value.to(device, non_blocking=non_blocking) for name, value in vars(self).items()})

    def pin_memory(self) -> Batch:
        """The batch in page-locked memory (what `DataLoader(pin_memory=True)` calls)."""
        return Batch(**{name: value.pin_memory() for name, value in vars(self).items()})


@dataclass
class Item:
    """One product or review: token ids [L], image region features [M, F] (M = 0 without image), token states
    [S, H] of a pretrained text encoder (None when the dataset stores none), for a review its star rating
    (NaN = unknown), the code points of its words [L, MAX_WORD_CHARS] (`mrhp.data.text.spell`; None = unknown,
    read as no characters) and its stored side features [len(STORED_SIDE_FEATURES)] (`mrhp.data.side`; None =
    all unknown)."""

    tokens: np.ndarray
    regions: np.ndarray
    states: np.ndarray | None = None
    rating: float = float("nan")
    chars: np.ndarray | None = None
    side: np.ndarray | None = None


# Side features of a review (model.side_features): log(1 + words), whether a star rating is known, and the
# rating centred on the middle of a 1-5 scale (0 when unknown). Length is the strongest single signal on public
# review data (the length floor), yet masked mean and max pooling cannot see it.
SIDE_FEATURES = ("log_words", "has_rating", "rating")


def side_features(words: int, rating: float) -> tuple[float, float, float]:
    """The :data:`SIDE_FEATURES` of a review with ``words`` tokens (before the ``max_tokens`` cut)."""
    known = not np.isnan(rating)
    return float(np.log1p(words)), float(known), (float(rating) - 3.0) / 2.0 if known else 0.0


# How each stored side feature (mrhp.data.side.STORED_SIDE_FEATURES, in that order) enters a model: age_rank as
# log(1 + rank) (ranks reach the thousands on Steam), the rating deviation halved (a 1-5 scale spans 4), the others
# as they are; unknown (NaN) becomes 0, the value of the oldest review, an unverified or image-less one, or a
# rating at the product's mean.
_EXTRA_TRANSFORMS = (np.log1p, None, None, None, lambda x: x / 2.0)


def extra_side_inputs(stored: np.ndarray | None) -> np.ndarray:
    """float32 ``[len(STORED_SIDE_FEATURES)]`` model inputs of a review's stored side features (None = unknown)."""
    if stored is None:
        return np.zeros(len(STORED_SIDE_FEATURES), dtype=np.float32)
    values = np.asarray(stored, dtype=np.float64).copy()  # [K]
    for k, transform in enumerate(_EXTRA_TRANSFORMS):
        if transform is not None:
            values[k] = transform(values[k])
    return np.nan_to_num(values, nan=0.0).astype(np.float32)


@dataclass
class RankingList:
    product: Item
    reviews: list[Item]
    labels: list[int]
    review_indices: list[int]  # position of each review in its source (split row, or request order)
    group: int  # identity of the product (lists cut from one product share it)


def split_item_lists(split: PreparedSplit, groups: Sequence[tuple[int, Sequence[int]]],
                     group_offset: int = 0) -> list[RankingList]:
    """Materialise `(product index, review indices)` groups of a prepared split as ranking lists; a list's group
    is `group_offset` + its product index (an offset per source keeps products of several datasets apart)."""
    out = []
    for product, reviews in groups:
        out.append(
            RankingList(
                product=Item(split.product_tokens(product), split.product_regions(product),
                             split.product_states(product)),
                reviews=[Item(split.review_tokens(j), split.review_regions(j), split.review_states(j),
                              float(split.review_rating[j]), split.review_chars(j), split.review_side[j])
                         for j in reviews],
                labels=[int(split.labels[j]) for j in reviews],
                review_indices=[int(j) for j in reviews],
                group=group_offset + int(product),
            )
        )
    return out


def chunk_product_reviews(
    split: PreparedSplit, max_list_size: int, rng: np.random.Generator | None
) -> list[tuple[int, np.ndarray]]:
    """Cut every product's reviews into lists of at most `max_list_size` reviews of nearly equal size.

    With `rng` the reviews are shuffled first (training: a new partition each epoch, so every pair of a long
    list is seen over the epochs); without it they keep file order (scoring)."""
    groups = []
    for product in range(split.num_products):
        reviews = np.asarray(split.reviews_of(product))
        if len(reviews) == 0:
            continue
        if rng is not None:
            reviews = rng.permutation(reviews)
        pieces = -(-len(reviews) // max_list_size)
        groups.extend((product, chunk) for chunk in np.array_split(reviews, pieces))
    return groups


def pack_groups(groups: Sequence[tuple], batch_rows: int) -> list[list[tuple]]:
    """Greedily pack lists (tuples whose last element is the review indices), in the given order, into batches of
    at most `batch_rows` rows (a single list larger than that forms its own batch)."""
    batches: list[list[tuple]] = []
    current: list[tuple] = []
    rows = 0
    for group in groups:
        if current and rows + len(group[-1]) > batch_rows:
            batches.append(current)
            current, rows = [], 0
        current.append(group)
        rows += len(group[-1])
    if current:
        batches.append(current)
    return batches


def training_batches(
    split: PreparedSplit, batch_rows: int, max_list_size: int, seed: int, epoch: int
) -> list[list[tuple[int, np.ndarray]]]:
    """The batches of one training epoch; a function of (seed, epoch) alone, so a resumed run repeats them."""
    mixed = mixed_training_batches([split], "products", batch_rows, max_list_size, seed, epoch)
    return [[(product, reviews) for _, product, reviews in batch] for batch in mixed]


def mixed_training_batches(
    splits: Sequence[PreparedSplit], sampling: str, batch_rows: int, max_list_size: int, seed: int, epoch: int
) -> list[list[tuple[int, int, np.ndarray]]]:
    """The batches of one training epoch over several sources: each batch a list of `(source, product index,
    review indices)` with the sources shuffled together; a function of (seed, epoch) alone. `sampling`
    (`SOURCE_SAMPLING`): "products" takes every list of every source once; "balanced" takes as many lists in all,
    an equal share from each source (a small source's lists repeat, a large one gives a fresh random subset each
    epoch). One source gives the same epoch under both."""
    if sampling not in SOURCE_SAMPLING:
        raise ValueError(f"source sampling must be one of {SOURCE_SAMPLING}, got {sampling!r}")
    rng = np.random.default_rng([seed, epoch])
    per_source = [chunk_product_reviews(split, max_list_size, rng) for split in splits]
    total = sum(len(groups) for groups in per_source)
    groups: list[tuple[int, int, np.ndarray]] = []
    for source, source_groups in enumerate(per_source):
        if sampling == "balanced" and len(splits) > 1 and source_groups:
            # An equal share of the epoch's lists (the remainder to the first sources): whole passes over the
            # source's lists, then a random subset of them.
            share = total // len(splits) + (source < total % len(splits))
            passes, extra = divmod(share, len(source_groups))
            picked = [*range(len(source_groups))] * passes + rng.permutation(len(source_groups))[:extra].tolist()
        else:
            picked = range(len(source_groups))
        groups.extend((source, *source_groups[i]) for i in picked)
    order = rng.permutation(len(groups))
    return pack_groups([groups[i] for i in order], batch_rows)


def _pad_tokens(items: Sequence[Item], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [min(len(item.tokens), max_tokens) for item in items]
    width = max(max(lengths, default=0), 1)  # at least one (masked) slot so an all-empty batch still has a shape
    tokens = np.zeros((len(items), width), dtype=np.int64)
    for i, (item, length) in enumerate(zip(items, lengths)):
        tokens[i, :length] = item.tokens[:length]
    mask = np.arange(width)[None, :] < np.asarray(lengths)[:, None]
    return torch.from_numpy(tokens), torch.from_numpy(mask)


def _pad_regions(items: Sequence[Item], max_regions: int, feature_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    counts = [min(len(item.regions), max_regions) for item in items]
    width = max(max(counts, default=0), 1)
    regions = np.zeros((len(items), width, max(feature_dim, 1)), dtype=np.float32)
    for i, (item, count) in enumerate(zip(items, counts)):
        if count:
            regions[i, :count] = item.regions[:count]
    mask = np.arange(width)[None, :] < np.asarray(counts)[:, None]
    return torch.from_numpy(regions), torch.from_numpy(mask)


def _pad_states(items: Sequence[Item], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    present = [item.states for item in items if item.states is not None]
    if len(present) not in (0, len(items)):
        raise ValueError("some items have text states and others not")
    dim = present[0].shape[1] if present else 1
    # An empty text (no token) is an absent modality, as for the LSTM: its encoder's special-token states are
    # masked out, so they never pose as a product text in the contrastive loss.
    counts = [min(len(item.states), max_tokens) if item.states is not None and len(item.tokens) else 0
              for item in items]
    width = max(max(counts, default=0), 1)
    states = np.zeros((len(items), width, dim), dtype=np.float32)
    for i, (item, count) in enumerate(zip(items, counts)):
        if count:
            states[i, :count] = item.states[:count]
    mask = np.arange(width)[None, :] < np.asarray(counts)[:, None]
    return torch.from_numpy(states), torch.from_numpy(mask)


def _pad_chars(items: Sequence[Item], max_tokens: int) -> torch.Tensor:
    lengths = [min(len(item.tokens), max_tokens) for item in items]
    chars = np.zeros((len(items), max(max(lengths, default=0), 1), MAX_WORD_CHARS), dtype=np.int32)
    for i, (item, length) in enumerate(zip(items, lengths)):
        if item.chars is not None:
            chars[i, :length] = item.chars[:length]
    return torch.from_numpy(chars)


def collate(lists: Sequence[RankingList], max_tokens: int, max_regions: int, feature_dim: int) -> Batch:
    """Pad a sequence of ranking lists into a `Batch` (B = len(lists), N = total reviews)."""
    products = [ranking.product for ranking in lists]
    reviews = [review for ranking in lists for review in ranking.reviews]
    sizes = [len(ranking.reviews) for ranking in lists]
    width = max(max(sizes, default=0), 1)
    starts = np.cumsum([0] + sizes[:-1])
    list_mask = np.arange(width)[None, :] < np.asarray(sizes)[:, None]  # [B, R]
    list_rows = np.where(list_mask, starts[:, None] + np.arange(width)[None, :], 0)  # [B, R]
    product_tokens, product_token_mask = _pad_tokens(products, max_tokens)
    review_tokens, review_token_mask = _pad_tokens(reviews, max_tokens)
    product_regions, product_region_mask = _pad_regions(products, max_regions, feature_dim)
    review_regions, review_region_mask = _pad_regions(reviews, max_regions, feature_dim)
    product_states, product_state_mask = _pad_states(products, max_tokens)
    review_states, review_state_mask = _pad_states(reviews, max_tokens)
    side = np.array([side_features(len(review.tokens), review.rating) for review in reviews],
                    dtype=np.float32).reshape(len(reviews), len(SIDE_FEATURES))
    extra = np.array([extra_side_inputs(review.side) for review in reviews],
                     dtype=np.float32).reshape(len(reviews), len(STORED_SIDE_FEATURES))  # [N, K]
    return Batch(
        product_tokens=product_tokens,
        product_token_mask=product_token_mask,
        product_regions=product_regions,
        product_region_mask=product_region_mask,
        review_tokens=review_tokens,
        review_token_mask=review_token_mask,
        review_regions=review_regions,
        review_region_mask=review_region_mask,
        review_product=torch.from_numpy(np.repeat(np.arange(len(lists)), sizes).astype(np.int64)),
        list_group=torch.tensor([ranking.group for ranking in lists], dtype=torch.int64),
        review_labels=torch.tensor([label for ranking in lists for label in ranking.labels], dtype=torch.int64),
        list_rows=torch.from_numpy(list_rows.astype(np.int64)),
        list_mask=torch.from_numpy(list_mask),
        product_states=product_states,
        product_state_mask=product_state_mask,
        review_states=review_states,
        review_state_mask=review_state_mask,
        review_side=torch.from_numpy(side),
        review_extra=torch.from_numpy(extra),
        review_chars=_pad_chars(reviews, max_tokens),
    )
