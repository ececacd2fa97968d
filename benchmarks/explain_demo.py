"""Do the explanations of a trained demo model point at what makes a review helpful? (issue 15)

The demo's generator (`mrhp.studies.synthetic`) makes a review helpful when its words come from its product's topic and
its image regions from its product's prototype. With a trained full model of `mrhp demo`, this explains the score
of every test review (`score_groups(..., explain=True)`, the split `mrhp predict --explain` answers with) and asks
two questions of the review-text shares:

1. Are the words with the largest positive share more often words of the product's topic than the review's words
   are on average? (top-k precision against the base rate)
2. Do the product's topic words get a larger share than the other words? (mean share over all words, and the
   fraction of reviews holding both kinds whose topic words have the larger mean share)

    python benchmarks/explain_demo.py [--run demo-run] [--seed 0] [--top 3] [--smoke]

`--run` is an `mrhp demo --out` folder (its `prepared/` data and `runs/full-model/best.safetensors`); `--seed` the
seed it was made with. One torch thread.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import torch
from _common import add_smoke, demo_data, smoke_config

from mrhp.data.batching import chunk_product_reviews, split_item_lists
from mrhp.data.prepared import PreparedDataset
from mrhp.models.checkpoint import load_checkpoint
from mrhp.scoring.loop import score_groups
from mrhp.studies.synthetic import SyntheticSpec, topic_words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("demo-run"), help="an `mrhp demo --out` folder")
    parser.add_argument("--seed", type=int, default=0, help="the seed the demo data was made with")
    parser.add_argument("--top", type=int, default=3, help="words with the largest positive share per review")
    add_smoke(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.smoke:  # a stand-in for the demo run: a toy full model on a few products of the demo data
        from mrhp.studies.demo import demo_config
        from mrhp.studies.experiment import run_system

        args.run, args.seed = Path(tempfile.mkdtemp(prefix="explain-demo-smoke-")), 0
        run_system("full model", smoke_config(demo_config(), True), demo_data(args.run, True), args.run / "runs",
                   progress=False)
    checkpoint = load_checkpoint(args.run / "runs" / "full-model" / "best.safetensors")
    dataset = PreparedDataset.open(args.run / "prepared")
    split = dataset.split("test")
    vocab = dataset.vocab.tokens
    topic_of = {word: t for t, words in enumerate(topic_words(SyntheticSpec(seed=args.seed))) for word in words}

    hits = base = 0  # top-k words from the product's topic; all review words from it
    top_count = word_count = 0
    topic_shares: list[float] = []
    other_shares: list[float] = []
    wins = mixed = 0  # reviews with both kinds of words; those whose topic words have the larger mean share
    groups = chunk_product_reviews(split, checkpoint.config.data.max_list_size, rng=None)
    data = checkpoint.config.data
    for batch, _, explanation in score_groups(checkpoint.model, groups, partial(split_item_lists, split),
                                              batch_rows=data.eval_batch_rows, data=data,
                                              feature_dim=dataset.feature_dim, explain=True):
        lists = split_item_lists(split, batch)
        shares = explanation.shares["review_text"].double().cpu().numpy()  # [N, Lr]
        row = 0
        for ranking in lists:
            product_words = [topic_of.get(vocab[t]) for t in ranking.product.tokens]
            topic = Counter(t for t in product_words if t is not None).most_common(1)[0][0]
            for review in ranking.reviews:
                tokens = review.tokens[: data.max_tokens]
                own = np.array([topic_of.get(vocab[t]) == topic for t in tokens])
                weights = shares[row, : len(tokens)]
                row += 1
                if len(tokens) == 0:
                    continue
                base += int(own.sum())
                word_count += len(tokens)
                top = [k for k in np.argsort(-weights, kind="stable")[: args.top] if weights[k] > 0]
                hits += int(own[top].sum())
                top_count += len(top)
                topic_shares += weights[own].tolist()
                other_shares += weights[~own].tolist()
                if own.any() and not own.all():
                    mixed += 1
                    wins += int(weights[own].mean() > weights[~own].mean())
    print(f"{split.num_reviews} test reviews of {split.num_products} products, full model of {args.run}")
    print(f"top-{args.top} words by positive share that are the product's topic words: {hits / max(top_count, 1):.1%} "
          f"({hits} of {top_count}); base rate among all review words: {base / max(word_count, 1):.1%}")
    print(f"mean share of a product-topic word: {np.mean(topic_shares or [np.nan]):+.4f} ({len(topic_shares)} words); "
          f"of any other word: {np.mean(other_shares or [np.nan]):+.4f} ({len(other_shares)} words)")
    print(f"reviews with both kinds of words whose topic words have the larger mean share: {wins / max(mixed, 1):.1%} "
          f"({wins} of {mixed})")


if __name__ == "__main__":
    main()
