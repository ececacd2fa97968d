"""The real review samples of ../shared/data that the real-data benchmarks read (``real_data.py``, its pooled
study ``pooled_study.py``, ``set_contrastive.py``), and the MiniLM token states they share across seeds: one table,
so that a set's files, converter and title are said once. A module, not a script: the scripts that read it have
their own ``--smoke``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mrhp.features.text_weights import StateEncoder


@dataclass(frozen=True)
class RealSet:
    title: str
    format: str  # the converter of `mrhp prepare --format`
    reviews: str  # path under the shared data folder
    metadata: str | None = None
    domains: tuple[str, ...] = ()  # the pooled study's sources, one per domain (the `domain` field of each review)


SETS = {
    "amazon2023-magazine": RealSet("Amazon'23 Magazine", "amazon2023",
                                   "amazon2023-magazine/Magazine_Subscriptions.jsonl",
                                   "amazon2023-magazine/meta_Magazine_Subscriptions.jsonl"),
    "finefood": RealSet("Amazon Fine Food (first 5,003 rows)", "finefood", "amazon-finefood-5k/Reviews.csv"),
    "amazon2018-magazine": RealSet("Amazon 2018 Magazine 5-core", "amazon2018",
                                   "amazon2018-magazine5/Magazine_Subscriptions_5.json.gz",
                                   "amazon2018-magazine5/meta_Magazine_Subscriptions.json.gz"),
    "amazon2018-beauty": RealSet("Amazon 2018 All Beauty 5-core", "amazon2018",
                                 "amazon2018-beauty5/All_Beauty_5.json.gz"),
    "mdsd": RealSet("MDSD (books, dvd, electronics)", "amazon2023", "amazon-mdsd/reviews.jsonl",
                    "amazon-mdsd/meta.jsonl", domains=("books", "dvd", "electronics")),
    "steam": RealSet("Steam (61 games)", "steam", "steam-sample"),
}


class CachedStates:
    """all-MiniLM-L6-v2 token states, computed once per distinct text for all seeds of a run."""

    def __init__(self, max_tokens: int, tuned_layers: int = 0) -> None:
        self.encoder = StateEncoder("minilm", tuned_layers, max_tokens)
        self.cache: dict[str, np.ndarray] = {}
        self.seconds = 0.0
        self.encoded = 0

    def describe(self) -> dict:
        return self.encoder.describe()

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        new = sorted({text for text in texts if text not in self.cache})
        if new:
            began = time.perf_counter()
            self.cache.update(zip(new, self.encoder.encode(new)))
            self.seconds += time.perf_counter() - began
            self.encoded += len(new)
        return [self.cache[text] for text in texts]
