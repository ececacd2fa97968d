"""MRHP: multimodal review helpfulness ranking.

The model of Nguyen et al., "Adaptive Contrastive Learning on Multimodal Transformer for Review Helpfulness
Predictions" (EMNLP 2022), with its data pipeline, losses, metrics, training and serving.

The Python API runs what the command line runs (`mrhp prepare --format jsonl`, `mrhp train`, and the ranking of
`mrhp predict` and `mrhp serve`)::

    import mrhp

    mrhp.prepare("data/products.jsonl", "data/reviews.jsonl", "prepared/mine")
    mrhp.train("prepared/mine", "runs/mine", overrides=["train.epochs=10"])
    ranker = mrhp.load_ranker("runs/mine/best.safetensors")
    ranked = ranker.rank({"text": "Steel stock pot"}, [{"review_id": "r1", "text": "Heats evenly."}, ...])
    ranked.scores, ranked.ranks, ranked.in_rank_order()

`import mrhp` imports nothing else: each entry point imports what it needs when it is first used.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mrhp.config import Config

__version__ = "0.1.0"
__all__ = ["RankedReviews", "Ranker", "RequestError", "__version__", "load_ranker", "prepare", "train"]

# The API's names and the module each lives in, imported on first use (so `import mrhp` imports no torch).
_LAZY = {"RankedReviews": "mrhp.ranking.ranker", "Ranker": "mrhp.ranking.ranker", "load_ranker": "mrhp.ranking.ranker",
         "RequestError": "mrhp.ranking.request"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mrhp' has no attribute {name!r}")


def prepare(
    products: str | os.PathLike[str],
    reviews: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    min_count: int = 5,
    vectors: str | None = None,
    relevance_threshold: int = 1,
    overwrite: bool = False,
    **read_options: Any,
) -> dict:
    """Prepare a dataset of the project's JSON-lines format into `out`, as `mrhp prepare --format jsonl` does, and
    return its report. `read_options` go to `mrhp.data.jsonl.read_jsonl` (`fractions`, `seed`, `votes_scheme`,
    `image_features`, ...); the others to `mrhp.data.prepare.prepare_dataset`."""
    from mrhp.data.jsonl import read_jsonl
    from mrhp.data.prepare import prepare_dataset

    raw = read_jsonl(products, reviews, **read_options)
    return prepare_dataset(raw, out, min_count=min_count, vectors=vectors, relevance_threshold=relevance_threshold,
                           overwrite=overwrite)


def train(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    config: Config | str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    progress: bool = True,
) -> dict[str, object]:
    """Train on the prepared dataset `data` and select on its dev split, as `mrhp train` does; the run folder `out`
    gets `best.safetensors`, `last.safetensors`, `config.json` and `metrics.jsonl`. Returns the best epoch's record.

    Args:
        config: a `mrhp.config.Config`, or a TOML/JSON file of overrides (`--config`); default: the defaults.
        overrides: `"section.key=value"` items applied after it (`--set`).
    """
    from pathlib import Path

    from mrhp.config import Config, load_config
    from mrhp.training.loop import train as run_training

    if isinstance(config, Config):
        resolved = load_config(None, overrides, base=config)
    else:
        resolved = load_config(None if config is None else Path(config), overrides)
    return run_training(resolved, Path(data), Path(out), resume=resume, progress=progress)
