"""`mrhp compare`, `mrhp report` and `mrhp demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

from mrhp.cli.options import SEED, config_options, progress_option
from mrhp.studies.stats import TESTS


def _compare(args: argparse.Namespace) -> int:
    from mrhp.errors import MrhpError
    from mrhp.studies.compare import compare_systems, format_comparison, group_runs

    runs = group_runs(args.runs, args.system or [], args.split)
    reference = args.reference
    if reference is None:
        if len(runs) > 1:  # any of them could be the reference: never guess one from the order of the paths
            raise MrhpError(f"name the system the others are tested against with --reference (one of: "
                            f"{', '.join(runs)})")
        reference = next(iter(runs))
    for system, members in runs.items():
        print(f"{system}: {', '.join(str(run.path) for run in members)}")
    print()
    print(format_comparison(compare_systems(runs, reference, args.test)))
    return 0


def _report(args: argparse.Namespace) -> int:
    from mrhp.studies.report import write_report

    print(write_report(args.runs, args.data, args.out, args.split, args.title, args.reference, args.baseline))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from mrhp.config import load_config
    from mrhp.studies.demo import demo_config, format_table, run_demo

    base = load_config(args.config, args.set, base=demo_config())
    results, example = run_demo(args.out, seed=args.seed, base=base, progress=not args.no_progress)
    print()
    print("Test split of the synthetic demo data (MAP / NDCG@3 / NDCG@5, x100; model selected on dev)")
    print(format_table(results))
    print()
    print(example)
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The study commands."""
    compare = commands.add_parser("compare", help="table and paired tests of systems from per-product metric files")
    compare.add_argument("runs", nargs="*", type=Path, metavar="FILE_OR_RUN",
                         help="per-product files or run folders; grouped into systems by folder name without -seedN")
    compare.add_argument("--system", action="append", metavar="NAME=FILE_OR_RUN,...", help="one system's runs; repeatable")
    compare.add_argument("--reference", help="system the others are tested against (required with several systems)")
    compare.add_argument("--test", choices=tuple(TESTS),
                         help="the test (default: min-f with 2+ seeds per system, else products-t); p-values are "
                              "Holm-adjusted over the table")
    compare.add_argument("--split", default="test", help="run folders are read as FOLDER/{split}_per_product.jsonl")
    compare.set_defaults(handler=_compare)

    report = commands.add_parser("report", help="the paper's tables (3-8 and the case study) from runs, as Markdown with plots")
    report.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                        help="run folders (best.safetensors + {split}_per_product.jsonl); grouped as mrhp compare groups them")
    report.add_argument("--data", type=Path, required=True, help="the prepared dataset the runs were trained on")
    report.add_argument("--out", type=Path, required=True, help="folder for report.md and its PNG plots")
    report.add_argument("--split", default="test", help="the evaluated split (default test)")
    report.add_argument("--title", help="the report's title")
    report.add_argument("--reference", help="the system of the paper's full model: Table 5 tests it, Table 6 lists "
                                            "its variants (required when several systems run the paper's model)")
    report.add_argument("--baseline", help="the system Tables 3-5 test against (default: the only MCR system)")
    report.set_defaults(handler=_report)

    demo = commands.add_parser("demo", help="synthetic data -> prepare -> train 3 systems -> test table")
    demo.add_argument("--out", type=Path, default=Path("demo-run"))
    demo.add_argument("--seed", type=SEED, default=0)
    config_options(demo, reads=", applied over the demo's own settings")
    progress_option(demo)
    demo.set_defaults(handler=_demo)