"""What several commands share, declared once: checked output locations, integer bounds, options made from
settings dataclasses, the config options, the device, the progress switch, and the options of `evaluate` / `floor`
and of image extraction."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from pathlib import Path

from mrhp.config import MAX_SEED, MAX_THREADS
from mrhp.features.images import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_INPUT_SIZE,
    DEFAULT_MAX_PIXELS,
)
from mrhp.objectives.metrics import TIES

# EfficientNet-Lite0's input side: the default is 224, and memory grows with its square.
MAX_INPUT_SIZE = 2048

# Where each command writes: checked before it does any work (a read-only or wrong-kind path is an error at once).
_OUTPUT_FOLDERS = {"prepare": "out", "features": "out", "fetch-images": "out", "train": "out", "demo": "out",
                   "report": "out"}
_OUTPUT_FILES = {"evaluate": "per_product", "floor": "per_product", "predict": "output"}
# What each command reads: its output may be none of these (nor, for prepare, a folder holding one).
_INPUTS = {
    "prepare": ("products", "reviews", "input", "metadata", "business", "data_dir", "features", "product_features",
                "review_features", "vectors", "config", "fetched", "image_features"),
    "features": ("products", "reviews"), "fetch-images": ("products", "reviews", "prepared"),
    "train": ("data", "config"), "demo": ("config",), "report": ("runs", "data"),
    "evaluate": ("checkpoint", "data"), "floor": ("data",), "predict": ("checkpoint", "input"),
}


def check_outputs(args: argparse.Namespace) -> None:
    """Check the command's output folder or file before any work."""
    from mrhp.outputs import check_not_an_input, check_output_dir, check_output_file

    inputs = []
    for name in _INPUTS.get(args.command, ()):
        value = getattr(args, name, None)
        inputs += [Path(v) for v in value] if isinstance(value, list) else [Path(value)] if value else []
    folder = getattr(args, _OUTPUT_FOLDERS.get(args.command, ""), None)
    if folder is not None:
        check_output_dir(folder, "--out")
        check_not_an_input(folder, "--out", inputs, replaces_folder=args.command == "prepare")
    file = getattr(args, _OUTPUT_FILES.get(args.command, ""), None)
    if file is not None:
        option = f"--{_OUTPUT_FILES[args.command].replace('_', '-')}"
        check_output_file(file, option)
        check_not_an_input(file, option, inputs)


def at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= `minimum` (and <= `maximum`), else the usual `mrhp CMD: error: argument --X:
    ...` (exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"within [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def fraction(text: str) -> float:
    """An argparse type: a finite number within [0, 1] (NaN and inf are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
    if not 0.0 <= value <= 1.0:  # also False for NaN
        raise argparse.ArgumentTypeError(f"must be a number within [0, 1], got {text[:40]}")
    return value


SEED = at_least(0, MAX_SEED)  # the type of every --seed option
THREADS = at_least(1, MAX_THREADS)  # the type of every --threads option


def settings_options(parser: argparse.ArgumentParser, settings: type) -> None:
    """One option per field of a settings dataclass, with the field's type, default and `help` metadata."""
    hints = typing.get_type_hints(settings)
    for setting in dataclasses.fields(settings):
        kind = next(t for t in typing.get_args(hints[setting.name]) or (hints[setting.name],) if t is not type(None))
        default = "" if setting.default is None else f" (default {setting.default})"
        if kind is bool:  # a switch: bool("False") would be True
            parser.add_argument(f"--{setting.name.replace('_', '-')}", action="store_true", default=setting.default,
                                help=setting.metadata["help"])
            continue
        parser.add_argument(f"--{setting.name.replace('_', '-')}", type=kind, default=setting.default,
                            help=setting.metadata["help"] + default)


def progress_option(sub: argparse.ArgumentParser) -> None:
    """`--no-progress`, on every command that draws progress bars (`main` turns them all off with it)."""
    sub.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_options(sub: argparse.ArgumentParser, reads: str = "") -> None:
    """`--config` and `--set`, on every command that reads a training config; `reads` says what of it, if not all."""
    sub.add_argument("--config", type=Path, help=f"TOML (or JSON) file of config overrides{reads}")
    sub.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override one config setting (after --config); repeatable")


def _device(text: str) -> str:
    from mrhp.compute.devices import DEVICE_FORMS, is_device_name

    if not is_device_name(text):
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(DEVICE_FORMS)}, got {text!r}")
    return text


def device_option(sub: argparse.ArgumentParser, default: str | None = "auto", more: str = "") -> None:
    """`--device`: where the model computes."""
    shown = "the config's train.device" if default is None else default
    sub.add_argument("--device", type=_device, default=default,
                     help=f"where the model computes: auto, cpu, cuda or cuda:N (default: {shown}){more}")


def split_options(sub: argparse.ArgumentParser, ties_default: str | None, ties_help: str) -> None:
    """What `evaluate` and `floor` evaluate on, and how."""
    sub.add_argument("--data", type=Path, required=True, help="prepared dataset folder")
    sub.add_argument("--split", default="test")
    sub.add_argument("--per-product", type=Path, help="write per-product metric values (JSON lines) here")
    sub.add_argument("--ties", choices=TIES, default=ties_default, help=ties_help)
    sub.add_argument("--threshold", type=int, help="relevance threshold (default: the dataset's)")


def image_options(group: argparse._ActionsContainer) -> None:
    group.add_argument("--input-size", type=at_least(32, MAX_INPUT_SIZE), default=DEFAULT_INPUT_SIZE, help="image side in pixels fed to EfficientNet-Lite0 (grid ceil(N/32))")
    group.add_argument("--batch-size", type=at_least(1), default=DEFAULT_BATCH_SIZE, help="images per forward pass")
    group.add_argument("--threads", type=THREADS, help="threads for decoding and the network (default: all cores)")
    group.add_argument("--max-pixels", type=at_least(1), default=DEFAULT_MAX_PIXELS, help="refuse images with more pixels (decompression bomb guard)")
