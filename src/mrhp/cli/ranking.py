"""`mrhp predict` and `mrhp serve`: ranking new reviews."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from mrhp.cli.options import device_option, progress_option, settings_options
from mrhp.ranking.serve.settings import ServeSettings


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


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The ranking commands."""
    predict = commands.add_parser("predict", help="rank the reviews of each product of a JSON-lines file")
    predict.add_argument("--checkpoint", type=Path, required=True)
    predict.add_argument("--input", type=Path, required=True)
    predict.add_argument("--output", type=Path, required=True)
    predict.add_argument("--restart", action="store_true", help="discard an interrupted run's progress instead of resuming it")
    predict.add_argument("--batch-rows", type=int, help="review rows per forward pass (default: the checkpoint's eval_batch_rows)")
    predict.add_argument("--explain", action="store_true",
                         help="add each review's explanation: its score split into fusion paths, top words and regions "
                              "(the paper's model only)")
    device_option(predict)
    progress_option(predict)
    predict.set_defaults(handler=_predict)

    serve = commands.add_parser("serve", help="HTTP scoring service (POST /v1/rank, GET /healthz, GET /v1/model)")
    serve.add_argument("--checkpoint", type=Path, required=True)
    settings_options(serve, ServeSettings)
    serve.set_defaults(handler=_serve)
