"""The `mrhp` command line, one module per command group: data (prepare, features, fetch-images), training
(train), evaluation (evaluate, floor), ranking (predict, serve) and studies (compare, report, demo); options several
commands share are declared once in `options`. `main(argv)` returns the exit status."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mrhp import __version__
from mrhp.cli import data, evaluation, ranking, studies, training
from mrhp.cli.options import check_outputs
from mrhp.errors import MrhpError
from mrhp.progress import bars_hidden


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrhp", description="Multimodal review helpfulness ranking (EMNLP 2022 model).")
    parser.add_argument("--version", action="version", version=f"mrhp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (data, training, evaluation, ranking, studies):
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if args.command == "prepare" and args.config is not None:
            args = build_parser().parse_args(data.prepare_argv(args, argv))
        check_outputs(args)
        with bars_hidden(getattr(args, "no_progress", False)):
            return args.handler(args)
    except MrhpError as error:
        print(f"mrhp {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a read-only output, a folder where a file is expected, a full disk: name the path
        print(f"mrhp {args.command}: error: {error}", file=sys.stderr)
        return 2
    except UnicodeEncodeError as error:  # a text or path (not UTF-8 on disk) that no writer escaped first
        print(f"mrhp {args.command}: error: cannot write text or a path as UTF-8 ({error})", file=sys.stderr)
        return 2
    except UnicodeError as error:  # a text that cannot be decoded that no reader caught first
        print(f"mrhp {args.command}: error: an input holds text that is not valid Unicode ({error})", file=sys.stderr)
        return 2
    except RecursionError:
        print(f"mrhp {args.command}: error: an input nests JSON arrays or objects too deeply to read", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mrhp {args.command}: interrupted", file=sys.stderr)
        return 130

