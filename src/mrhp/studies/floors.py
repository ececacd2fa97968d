"""Floors: the cheap rankers any helpfulness result must beat, scored through the same evaluation as the model.

* ``random``: uniform random scores; its per-product values are the mean over ``shuffles`` independent draws
  (an estimate of the expected metric of a random order, not one lucky or unlucky draw).
* ``length``: the review's token count (longer reviews first), the classic strong floor of helpfulness work.
* ``age``: oldest first (the stored age rank, :mod:`mrhp.data.side`): older reviews have been shown to voters for
  longer, so they hold more votes whatever their quality. A model that does not beat it may have learnt exposure
  rather than helpfulness. Reviews of unknown time rank last (a dataset without times ties every review).
* ``lambdamart``: a LightGBM LambdaMART ranker (``objective="lambdarank"``, one query per product) on cheap
  per-review features (:func:`review_features`), trained on train with early stopping on the dev MAP (the same
  metric and split the neural model is selected on), never on test.

Every floor gives per-review scores (float64 ``[N]`` in split order) or, for ``random``, per-product values, which
go through :func:`mrhp.scoring.evaluate.per_product_metrics`, :func:`mrhp.objectives.metrics.summarize` and
:func:`mrhp.scoring.evaluate.write_per_product` exactly as the neural model's scores do (same ties policy, same
relevance threshold), so paired tests over products compare like with like.

Features of review ``j`` of product ``p`` (all from the prepared dataset: stored token ids, the optional
``review_rating.npy``, the stored side features ``review_side.npy`` and the optional word vectors; none derived
from the votes):

=====================  =========================================================================================
``log_tokens``         ``log(1 + n_j)``, ``n_j`` the token count
``sentences``          sentence ends: runs of ``.``/``!``/``?`` tokens, plus one for unterminated trailing text
``tokens_per_sent``    ``n_j / max(1, sentences)``
``rel_log_tokens``     ``log_tokens`` minus its mean over the product's reviews
``unk_fraction``       share of ``<unk>`` tokens (rare or unseen words)
``type_token_ratio``   distinct tokens / tokens (0 for an empty review)
``log_list_size``      ``log(reviews of p)`` (constant in a list; lets trees condition the other features on it)
``rating``             star rating (NaN = unknown, which LightGBM treats as missing)
``rating_dev``         rating minus the product's mean rating (over its reviews with a known rating)
``abs_rating_dev``     its absolute value
``log_age_rank``       ``log(1 + age rank)``: how many of the product's reviews are older (NaN = time unknown)
``age``                the age rank over the product's reviews with a time minus one (0 oldest, 1 newest)
``verified``           a verified purchase (1/0; NaN = the source does not say)
``has_images``         the review has images (features or image URLs)
text summary           ``tfidf``: ``svd_components`` dims of a TruncatedSVD of the sublinear TF-IDF matrix (both
                       fitted on train); ``vectors``: the mean word vector of the review (``embeddings.npy``);
                       ``none``: nothing
=====================  =========================================================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from mrhp.data.prepared import PreparedDataset, PreparedSplit
from mrhp.data.side import STORED_SIDE_FEATURES
from mrhp.data.text import PAD_ID, UNK_ID
from mrhp.errors import MrhpError
from mrhp.objectives.metrics import METRICS, summarize
from mrhp.scoring.evaluate import per_product_metrics

log = logging.getLogger(__name__)

FLOOR_METHODS = ("random", "length", "age", "lambdamart")
TEXT_FEATURES = ("tfidf", "vectors", "none")
BASE_FEATURES = ("log_tokens", "sentences", "tokens_per_sent", "rel_log_tokens", "unk_fraction", "type_token_ratio",
                 "log_list_size", "rating", "rating_dev", "abs_rating_dev", "log_age_rank", "age", "verified",
                 "has_images")
SENTENCE_END = (".", "!", "?")


def length_scores(split: PreparedSplit) -> np.ndarray:
    """The ``length`` floor: float64 ``[N]`` token counts (longer = more helpful)."""
    return split.review_lengths.astype(np.float64)


def age_scores(split: PreparedSplit) -> np.ndarray:
    """The ``age`` floor: float64 ``[N]`` minus the age rank (oldest first); unknown times score below every
    known one (a rank is below the number of reviews)."""
    rank = split.review_side[:, STORED_SIDE_FEATURES.index("age_rank")].astype(np.float64)
    return np.where(np.isnan(rank), -float(split.num_reviews), -rank)


def random_floor(
    split: PreparedSplit, threshold: int, ties: str, shuffles: int = 20, seed: int = 0
) -> tuple[list[str], dict[str, np.ndarray]]:
    """The ``random`` floor: per-product metric values averaged over ``shuffles`` uniform random scorings.

    Returns ``(product ids, {metric: float64 [P]})`` like :func:`mrhp.scoring.evaluate.per_product_metrics`.
    """
    if shuffles < 1:
        raise MrhpError(f"shuffles must be >= 1, got {shuffles}")
    rng = np.random.default_rng(seed)
    totals: dict[str, np.ndarray] = {}
    product_ids: list[str] = []
    for _ in range(shuffles):
        product_ids, values = per_product_metrics(split, rng.random(split.num_reviews), threshold, ties)
        for name in METRICS:
            totals[name] = totals.get(name, 0.0) + values[name]
    return product_ids, {name: totals[name] / shuffles for name in METRICS}


def _sentence_counts(split: PreparedSplit, end_ids: np.ndarray) -> np.ndarray:
    """Sentences per review from the stored tokens: int64 ``[N]`` (see the module docstring)."""
    counts = np.zeros(split.num_reviews, dtype=np.int64)
    for j in range(split.num_reviews):
        tokens = split.review_tokens(j)
        if tokens.size == 0:
            continue
        is_end = np.isin(tokens, end_ids)
        # A sentence ends where an end mark is not followed by another one ("..." or "?!" end one sentence).
        ends = int(np.count_nonzero(is_end[:-1] & ~is_end[1:])) + int(is_end[-1])
        counts[j] = ends + int(not is_end[-1])
    return counts


def _product_means(split: PreparedSplit, values: np.ndarray) -> np.ndarray:
    """Per review, the mean of ``values`` over its product's reviews, ignoring NaN (NaN if all are)."""
    out = np.full(split.num_reviews, np.nan)
    for p in range(split.num_products):
        reviews = split.reviews_of(p)
        known = values[reviews][~np.isnan(values[reviews])]
        if known.size:
            out[reviews] = known.mean()
    return out


def _bag_of_words(split: PreparedSplit, vocab_size: int):
    """Sparse ``[N, V]`` token counts (``<pad>`` and ``<unk>`` columns left empty)."""
    from scipy import sparse

    rows, cols = [], []
    for j in range(split.num_reviews):
        tokens = split.review_tokens(j)
        tokens = tokens[tokens > UNK_ID]
        rows.append(np.full(tokens.size, j, dtype=np.int64))
        cols.append(tokens)
    row = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    col = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    return sparse.csr_matrix((np.ones(row.size), (row, col)), shape=(split.num_reviews, vocab_size))


@dataclass
class TextSummary:
    """The text-summary part of the features, fitted on train: ``kind`` in :data:`TEXT_FEATURES`."""

    kind: str
    vocab_size: int
    tfidf: object = None
    svd: object = None
    embeddings: np.ndarray | None = None

    @classmethod
    def fit(cls, dataset: PreparedDataset, kind: str, svd_components: int, seed: int) -> TextSummary:
        if kind not in TEXT_FEATURES:
            raise MrhpError(f"unknown text features {kind!r} (choose from {', '.join(TEXT_FEATURES)})")
        summary = cls(kind, len(dataset.vocab))
        if kind == "vectors":
            summary.embeddings = dataset.embeddings()
            if summary.embeddings is None:
                raise MrhpError(f"{dataset.path}: text features 'vectors' need word vectors; prepare the dataset "
                                "with --vectors, or use 'tfidf'")
        elif kind == "tfidf":
            from sklearn.decomposition import TruncatedSVD
            from sklearn.feature_extraction.text import TfidfTransformer

            counts = _bag_of_words(dataset.split("train"), summary.vocab_size)
            summary.tfidf = TfidfTransformer(sublinear_tf=True).fit(counts)
            components = min(svd_components, counts.shape[1] - 1, counts.shape[0] - 1)
            if components < 1:
                raise MrhpError("text features 'tfidf' need a train split with at least 2 reviews and 2 words")
            summary.svd = TruncatedSVD(n_components=components, random_state=seed).fit(summary.tfidf.transform(counts))
        return summary

    def names(self) -> list[str]:
        if self.kind == "tfidf":
            return [f"tfidf_svd_{k}" for k in range(self.svd.n_components)]
        if self.kind == "vectors":
            return [f"mean_vector_{k}" for k in range(self.embeddings.shape[1])]
        return []

    def transform(self, split: PreparedSplit) -> np.ndarray:
        """float64 ``[N, K]`` for the reviews of ``split``."""
        if self.kind == "tfidf":
            return self.svd.transform(self.tfidf.transform(_bag_of_words(split, self.vocab_size)))
        if self.kind == "vectors":
            out = np.zeros((split.num_reviews, self.embeddings.shape[1]))
            for j in range(split.num_reviews):
                tokens = split.review_tokens(j)
                tokens = tokens[tokens != PAD_ID]
                if tokens.size:
                    out[j] = self.embeddings[tokens].mean(axis=0)
            return out
        return np.zeros((split.num_reviews, 0))


def review_features(split: PreparedSplit, end_ids: np.ndarray, text: TextSummary) -> tuple[np.ndarray, list[str]]:
    """Cheap features of every review of ``split``: (float64 ``[N, K]``, K names); see the module docstring."""
    n_tokens = split.review_lengths.astype(np.float64)
    log_tokens = np.log1p(n_tokens)
    sentences = _sentence_counts(split, end_ids).astype(np.float64)
    unk = np.zeros(split.num_reviews)
    ttr = np.zeros(split.num_reviews)
    for j in range(split.num_reviews):
        tokens = split.review_tokens(j)
        if tokens.size:
            unk[j] = np.count_nonzero(tokens == UNK_ID) / tokens.size
            ttr[j] = np.unique(tokens).size / tokens.size
    list_size = np.bincount(split.review_product, minlength=split.num_products)[split.review_product]
    rating = split.review_rating.astype(np.float64)
    rating_dev = rating - _product_means(split, rating)
    side = split.review_side.astype(np.float64)  # [N, len(STORED_SIDE_FEATURES)]
    base = np.column_stack([
        log_tokens,
        sentences,
        n_tokens / np.maximum(sentences, 1.0),
        log_tokens - _product_means(split, log_tokens),
        unk,
        ttr,
        np.log(list_size),
        rating,
        rating_dev,
        np.abs(rating_dev),
        np.log1p(side[:, STORED_SIDE_FEATURES.index("age_rank")]),
        side[:, STORED_SIDE_FEATURES.index("age")],
        side[:, STORED_SIDE_FEATURES.index("verified")],
        side[:, STORED_SIDE_FEATURES.index("has_images")],
    ])
    return np.hstack([base, text.transform(split)]), [*BASE_FEATURES, *text.names()]


def _grouped(split: PreparedSplit) -> tuple[np.ndarray, np.ndarray]:
    """Review indices ordered by product (LightGBM needs each query's rows together) and the query sizes."""
    groups = [split.reviews_of(p) for p in range(split.num_products)]
    groups = [g for g in groups if len(g)]
    return np.concatenate(groups), np.array([len(g) for g in groups], dtype=np.int64)


@dataclass
class LambdaMart:
    """A trained LambdaMART floor: the booster and the fitted text summary."""

    booster: object
    text: TextSummary
    end_ids: np.ndarray
    feature_names: list[str]
    best_iteration: int
    dev_map: float

    def scores(self, split: PreparedSplit) -> np.ndarray:
        """float64 ``[N]`` scores of the reviews of ``split`` in split order."""
        features, _ = review_features(split, self.end_ids, self.text)
        return np.asarray(self.booster.predict(features, num_iteration=self.best_iteration), dtype=np.float64)


def train_lambdamart(
    dataset: PreparedDataset,
    *,
    threshold: int,
    ties: str,
    text_features: str = "tfidf",
    svd_components: int = 16,
    seed: int = 0,
    learning_rate: float = 0.05,
    num_leaves: int = 15,
    min_data_in_leaf: int = 20,
    max_rounds: int = 1000,
    early_stopping_rounds: int = 50,
    threads: int = 1,
) -> LambdaMart:
    """Train LambdaMART on the train split with early stopping on the dev MAP (SPEC 5, our ties policy).

    The ranker is LightGBM's lambdarank (one query per product, gains ``2**label - 1``: LightGBM's default
    ``label_gain``), with row and feature subsampling of 0.8. The settings are fixed defaults, not tuned.
    """
    try:
        import lightgbm as lgb
    except ImportError:
        raise MrhpError("the lambdamart floor needs lightgbm: pip install -e '.[floors]'") from None
    train_split, dev_split = dataset.split("train"), dataset.split("dev")
    end_ids = np.array([dataset.vocab.id(t) for t in SENTENCE_END if t in dataset.vocab], dtype=np.int64)
    text = TextSummary.fit(dataset, text_features, svd_components, seed)
    sets = {}
    for name, split in (("train", train_split), ("dev", dev_split)):
        features, names = review_features(split, end_ids, text)
        order, sizes = _grouped(split)
        sets[name] = (features[order], split.labels[order], sizes, order)
    train_set = lgb.Dataset(sets["train"][0], label=sets["train"][1], group=sets["train"][2], feature_name=names,
                            free_raw_data=False)
    dev_set = lgb.Dataset(sets["dev"][0], label=sets["dev"][1], group=sets["dev"][2], reference=train_set)
    dev_order = sets["dev"][3]

    def dev_map(predictions: np.ndarray, _data: object) -> tuple[str, float, bool]:
        scores = np.empty(dev_split.num_reviews)
        scores[dev_order] = predictions
        _, values = per_product_metrics(dev_split, scores, threshold, ties)
        return "dev_map", float(values["map"].mean()), True

    params = {
        "objective": "lambdarank",
        "metric": "None",  # early stopping on dev_map alone
        "learning_rate": learning_rate,
        "num_leaves": num_leaves,
        "min_data_in_leaf": min_data_in_leaf,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": threads,
        "verbosity": -1,
    }
    booster = lgb.train(
        params, train_set, num_boost_round=max_rounds, valid_sets=[dev_set], valid_names=["dev"], feval=dev_map,
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)],
    )
    best = int(booster.best_iteration) or max_rounds
    best_map = float(booster.best_score["dev"]["dev_map"]) * 100.0
    log.info("lambdamart: best iteration %d, dev MAP %.2f", best, best_map)
    return LambdaMart(booster, text, end_ids, names, best, best_map)


def evaluate_floor(
    dataset: PreparedDataset,
    method: str,
    split_name: str,
    *,
    threshold: int,
    ties: str,
    seed: int = 0,
    shuffles: int = 20,
    text_features: str = "tfidf",
    threads: int = 1,
) -> tuple[dict[str, float], list[str], dict[str, np.ndarray]]:
    """Run one floor on a split: ``(summary x100, product ids, per-product values)`` as for the model."""
    if method not in FLOOR_METHODS:
        raise MrhpError(f"unknown floor {method!r} (choose from {', '.join(FLOOR_METHODS)})")
    split = dataset.split(split_name)
    if method == "random":
        product_ids, values = random_floor(split, threshold, ties, shuffles, seed)
    else:
        if method == "length":
            scores = length_scores(split)
        elif method == "age":
            scores = age_scores(split)
        else:
            model = train_lambdamart(dataset, threshold=threshold, ties=ties, text_features=text_features, seed=seed,
                                     threads=threads)
            scores = model.scores(split)
        product_ids, values = per_product_metrics(split, scores, threshold, ties)
    return summarize(values), product_ids, values
