"""What the benchmarks share: the `--smoke` switch and its tiny settings, measurements in a fresh interpreter (so
that a peak resident memory is the measurement's own), the peak itself, the allocator line, timing, a batch of
the paper's shape made through the library's own `collate`, and the synthetic data and settings of the demo.

Every script of benchmarks/ has a `--smoke` mode: the same code path at toy sizes, run by tests/test_benchmarks.py
in seconds so that no script can break unnoticed. Its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mrhp.config import Config
    from mrhp.data.batching import Batch
    from mrhp.data.prepared import PreparedDataset

# Settings of a model that trains in a blink; applied over a script's own with `smoke_config`.
SMOKE_OVERRIDES = {
    "model": {"hidden_size": 8, "embedding_dim": 8, "num_heads": 2, "interaction_layers": 1, "feedforward_size": 16,
              "checkpoint_activations": False},
    "data": {"batch_rows": 8, "max_list_size": 4, "eval_batch_rows": 16},
    "train": {"epochs": 1, "threads": 1},
}
RESULT = "RESULT "  # the prefix of the line a child process reports its measurement on


def add_smoke(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny run in seconds that checks the script still works (tests/test_benchmarks.py); "
                             "its figures mean nothing")


def peak_rss_gb() -> float:
    """This process's peak resident memory so far (Linux `ru_maxrss` is in KiB), in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def allocator() -> str:
    """The allocator settings in the environment (MALLOC_*), printed with the figures they affect."""
    settings = {key: value for key, value in os.environ.items() if key.startswith("MALLOC_")}
    return str(settings) if settings else "glibc defaults"


def median_seconds(step: Callable[[], object], steps: int) -> float:
    """The median time of `steps` calls of `step`, after one untimed warm-up call."""
    step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def report_result(result: dict) -> None:
    """What a child process prints last: its measurement as one JSON line."""
    print(RESULT + json.dumps(result), flush=True)


def run_child(command: Sequence[str], *, env: dict[str, str] | None = None, timeout: float | None = None) -> dict:
    """The measurement a fresh interpreter reports with `report_result` (its peak memory is its own);
    RuntimeError naming the command with the end of its stderr when it fails, reports nothing or runs too long."""
    try:
        finished = subprocess.run(list(command), capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(command[1:])}: ran past {timeout} s") from None
    lines = [line for line in finished.stdout.splitlines() if line.startswith(RESULT)]
    if finished.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command[1:])} failed (exit {finished.returncode}):\n"
                           f"{finished.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT):])


def python(script: str, *args: str) -> list[str]:
    """The command that runs `script` (a benchmark's `__file__`) again in a fresh interpreter."""
    return [sys.executable, script, *args]


def synthetic_batch(products: int, reviews: int, tokens: int, regions: int, feature_dim: int, vocab: int,
                    seed: int = 0) -> Batch:
    """A batch of `products` lists of `reviews` reviews, every text `tokens` random word ids and every item
    `regions` random regions of `feature_dim`, one helpful review (label 3) per list and the rest 0; made by the
    library's `collate`, so that it has every field the models read."""
    import numpy as np

    from mrhp.data.batching import Item, RankingList, collate

    rng = np.random.default_rng(seed)

    def item() -> Item:
        return Item(rng.integers(2, vocab, tokens).astype(np.int64),
                    rng.standard_normal((regions, feature_dim)).astype(np.float32))

    lists = [RankingList(product=item(), reviews=[item() for _ in range(reviews)], labels=[3] + [0] * (reviews - 1),
                         review_indices=list(range(reviews)), group=p) for p in range(products)]
    return collate(lists, tokens, regions, feature_dim)


def demo_data(out: Path, smoke: bool) -> PreparedDataset:
    """The synthetic data of `mrhp demo` prepared under `out`, or with `smoke` a few products of it."""
    from mrhp.studies.demo import prepare_demo_data
    from mrhp.studies.synthetic import SyntheticSpec

    spec = SyntheticSpec(products=(12, 6, 6), reviews_per_product=(3, 5)) if smoke else None
    return prepare_demo_data(out, seed=0, spec=spec)


def smoke_config(config: Config, smoke: bool) -> Config:
    """`config`, or with `smoke` the same with `SMOKE_OVERRIDES` applied."""
    from mrhp.config import apply_overrides

    return apply_overrides(config, SMOKE_OVERRIDES, "--smoke").validate() if smoke else config
