"""`mrhp train`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mrhp.cli.options import progress_option
from mrhp.config import MODEL_NAMES


def _train(args: argparse.Namespace) -> int:
    from mrhp.config import load_config
    from mrhp.training.loop import train

    sets = ((args.set or []) + ([f"model.name={args.model}"] if args.model else [])
            + ([f"train.device={args.device}"] if args.device else []))
    config = load_config(args.config, sets)
    best = train(config, args.data or None, args.out, resume=args.resume, progress=not args.no_progress)
    print(json.dumps({"best": best, "checkpoint": str(args.out / "best.safetensors")}, indent=2))
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The training command."""
    train = commands.add_parser("train", help="train on one or several prepared datasets, selecting on their pooled dev split")
    train.add_argument("--data", type=Path, action="append", help="prepared dataset folder; repeat it to train on several at once (prepared with one vocabulary: prepare --vocabulary-from); default: data.paths of the config")
    train.add_argument("--out", type=Path, required=True, help="run folder (config, metrics log, checkpoints)")
    train.add_argument("--config", type=Path, help="TOML (or JSON) file of config overrides")
    train.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting; repeatable")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    train.add_argument("--model", choices=MODEL_NAMES, help="the paper's model (mrhp, default) or a baseline (= --set model.name=NAME)")
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N (= --set train.device=DEVICE; default: the config's, auto)")
    progress_option(train)
    train.set_defaults(handler=_train)
