"""Every model of the registry on the synthetic demo data, with the same data, pairs, seeds and metrics.

The data and settings are those of `mrhp demo` (`mrhp.studies.synthetic`, `mrhp.studies.demo.demo_config`: width 64, 8 epochs,
learning rate 2e-3, selection on dev by MAP); each model is trained once per seed, evaluated once on test, and
its per-product values are written to `OUT/runs/{model}-seed{seed}/test_per_product.jsonl`. The table is that
of `mrhp compare` over those files (mean +/- sd over seeds, its default test against the reference), plus the
training time of each model.

    python benchmarks/all_models_demo.py [--out all-models-demo] [--seeds 0 1 2] [--models mcr mrhp ...]
        [--reference mcr] [--threads 1] [--set section.key=value ...] [--smoke]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from _common import add_smoke, demo_data, smoke_config

from mrhp.config import MODEL_NAMES, apply_overrides, parse_set
from mrhp.studies.compare import compare_systems, format_comparison, group_runs
from mrhp.studies.demo import demo_config
from mrhp.studies.experiment import run_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("all-models-demo"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (the data seed is 0)")
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    parser.add_argument("--reference", default="mcr", help="system the others are tested against")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override the demo settings for every model")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (train.threads); at these sizes extra threads mostly wait")
    parser.add_argument("--no-progress", action="store_true")
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:  # two models (the reference and the paper's), toy sizes
        args.models, args.reference, args.seeds, args.no_progress = ["mcr", "mrhp"], "mcr", [0], True
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if args.reference not in args.models:
        parser.error(f"--reference {args.reference} is not among --models")

    dataset = demo_data(args.out, args.smoke)
    base = apply_overrides(smoke_config(demo_config(), args.smoke), parse_set(args.set), "--set").validate()
    seconds: dict[str, list[float]] = {}
    run_dirs = []
    for name in args.models:
        for seed in args.seeds:
            overrides = {"model": {"name": name}, "train": {"seed": seed, "threads": args.threads}}
            config = apply_overrides(base, overrides, name).validate()
            result = run_system(f"{name}-seed{seed}", config, dataset, args.out / "runs", progress=not args.no_progress)
            seconds.setdefault(name, []).append(result.seconds)
            run_dirs.append(result.run_dir)

    comparison = compare_systems(group_runs(run_dirs, []), reference=args.reference)
    print()
    print("Test split of the synthetic demo data, every model with the demo's settings (selected on dev)")
    print(format_comparison(comparison))
    print()
    print("training + test evaluation time per run (s): "
          + ", ".join(f"{name} {sum(times) / len(times):.0f}" for name, times in seconds.items()))


if __name__ == "__main__":
    main()
