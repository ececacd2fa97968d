"""`mrhp evaluate` and `mrhp floor`: a checkpoint or a floor on a prepared split."""

from __future__ import annotations

import argparse
from pathlib import Path

from mrhp.cli.options import (
    SEED,
    THREADS,
    at_least,
    device_option,
    progress_option,
    split_options,
)
from mrhp.errors import MrhpError
from mrhp.studies.floors import FLOOR_METHODS, TEXT_FEATURES


def _evaluation_data(args: argparse.Namespace):
    """The prepared dataset of `evaluate` / `floor` and the relevance threshold (--threshold, else the dataset's)."""
    from mrhp.data.prepared import PreparedDataset

    dataset = PreparedDataset.open(args.data)
    if args.threshold is None:
        return dataset, dataset.relevance_threshold
    labels = dataset.split(args.split).labels
    low, high = (int(labels.min()), int(labels.max())) if len(labels) else (0, 0)
    # A review is relevant iff its label is above the threshold: outside [low, high) none or all of them are.
    if not low <= args.threshold < high:
        raise MrhpError(f"--threshold {args.threshold}: the labels of {args.data} split {args.split} are {low}..{high}; "
                        f"the threshold must be within {low}..{high - 1} for some but not all reviews to be relevant")
    return dataset, args.threshold


def _report_split(args: argparse.Namespace, summary: dict, product_ids: list, values: dict, *, system: str,
                  ties: str, threshold: int) -> int:
    """Print the metrics of `evaluate` / `floor` on the split, and write its per-product values if asked."""
    from mrhp.scoring.evaluate import format_metrics, write_per_product

    print(f"{args.split}: {format_metrics(summary)}  ({system}{len(product_ids)} products, ties={ties}, "
          f"threshold={threshold})")
    if args.per_product:
        write_per_product(args.per_product, product_ids, values, args.split)
        print(f"per-product values written to {args.per_product}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mrhp.compute.devices import resolve_device
    from mrhp.models.checkpoint import load_checkpoint
    from mrhp.scoring.evaluate import check_fits, evaluate_split

    checkpoint = load_checkpoint(args.checkpoint)
    checkpoint.model.to(resolve_device(args.device))
    dataset, threshold = _evaluation_data(args)
    check_fits(checkpoint, dataset)
    ties = args.ties or checkpoint.config.train.ties
    summary, product_ids, values, _ = evaluate_split(
        checkpoint.model, dataset.split(args.split), data=checkpoint.config.data, feature_dim=dataset.feature_dim,
        threshold=threshold, ties=ties, progress=not args.no_progress,
    )
    return _report_split(args, summary, product_ids, values, system="", ties=ties, threshold=threshold)


def _floor(args: argparse.Namespace) -> int:
    from mrhp.studies.floors import evaluate_floor

    dataset, threshold = _evaluation_data(args)
    summary, product_ids, values = evaluate_floor(
        dataset, args.method, args.split, threshold=threshold, ties=args.ties, seed=args.seed, shuffles=args.shuffles,
        text_features=args.text_features, threads=args.threads,
    )
    return _report_split(args, summary, product_ids, values, system=f"{args.method} floor, ", ties=args.ties,
                         threshold=threshold)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The evaluation commands."""
    evaluate = commands.add_parser("evaluate", help="MAP / NDCG@3 / NDCG@5 of a checkpoint on a split")
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    device_option(evaluate)
    split_options(evaluate, ties_default=None, ties_help="tie order (default: the checkpoint's)")
    progress_option(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    floor = commands.add_parser("floor", help="a floor (random, review length, LightGBM LambdaMART) on a split, evaluated like a model")
    floor.add_argument("--method", choices=FLOOR_METHODS, required=True)
    split_options(floor, ties_default="pessimistic", ties_help="tie order (default pessimistic)")
    floor.add_argument("--seed", type=SEED, default=0, help="seed of the random shuffles / LightGBM")
    floor.add_argument("--shuffles", type=at_least(1), default=20, help="random: metrics are averaged over this many shuffles")
    floor.add_argument("--text-features", choices=TEXT_FEATURES, default="tfidf", help="lambdamart: text summary features")
    floor.add_argument("--threads", type=THREADS, default=1, help="lambdamart: LightGBM threads")
    floor.set_defaults(handler=_floor)
