"""`mrhp train`."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from mrhp.cli.options import config_options, device_option, progress_option
from mrhp.config import MODEL_NAMES


def _train(args: argparse.Namespace) -> int:
    from mrhp.config import load_config
    from mrhp.training.loop import train

    config = load_config(args.config, args.set)
    # The options name a setting directly, after the file and --set, as the last word of the command line.
    if args.model is not None:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, name=args.model))
    if args.device is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, device=args.device))
    best = train(config, args.data or None, args.out, resume=args.resume, progress=not args.no_progress)
    print(json.dumps({"best": best, "checkpoint": str(args.out / "best.safetensors")}, indent=2))
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The training command."""
    train = commands.add_parser("train", help="train on one or several prepared datasets, selecting on their pooled dev split")
    train.add_argument("--data", type=Path, action="append", help="prepared dataset folder; repeat it to train on several at once (prepared with one vocabulary: prepare --vocabulary-from); default: data.paths of the config")
    train.add_argument("--out", type=Path, required=True, help="run folder (config, metrics log, checkpoints)")
    config_options(train)
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    train.add_argument("--model", choices=MODEL_NAMES, help="the paper's model (mrhp, default: model.name) or a baseline")
    device_option(train, default=None)
    progress_option(train)
    train.set_defaults(handler=_train)
