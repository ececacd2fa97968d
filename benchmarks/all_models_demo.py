"""Every model of the registry on the synthetic demo data, with the same data, pairs, seeds and metrics.

The data and settings are those of `mrhp demo` (`mrhp.synthetic`, `mrhp.demo.demo_config`: width 64, 8 epochs,
learning rate 2e-3, selection on dev by MAP); each model is trained once per seed, evaluated once on test, and
its per-product values are written to `OUT/runs/{model}-seed{seed}/test_per_product.jsonl`. The table is that
of `mrhp compare` over those files (mean +/- sd over seeds, paired t-test against the reference), plus the
training time of each model.

    python benchmarks/all_models_demo.py [--out all-models-demo] [--seeds 0 1 2] [--models mcr mrhp ...]
        [--reference mcr] [--threads 1] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from mrhp.checkpoint import load_checkpoint
from mrhp.compare import compare_systems, format_comparison, group_runs
from mrhp.config import MODEL_NAMES, apply_overrides, parse_set
from mrhp.data.official import read_official
from mrhp.data.prepare import prepare_dataset
from mrhp.data.prepared import PreparedDataset
from mrhp.demo import CATEGORY, demo_config
from mrhp.evaluate import evaluate_split, format_metrics, write_per_product
from mrhp.synthetic import SyntheticSpec, write_official_dataset
from mrhp.train import train

log = logging.getLogger("all_models_demo")


def prepare_demo_data(out_dir: Path, seed: int) -> Path:
    """The demo's synthetic dataset, written in the official format and prepared as `mrhp demo` does."""
    raw_dir = out_dir / "official"
    features = write_official_dataset(raw_dir, CATEGORY, SyntheticSpec(seed=seed))
    raw = read_official(raw_dir, CATEGORY, product_features=features, review_features=features)
    prepared_dir = out_dir / "prepared"
    prepare_dataset(raw, prepared_dir, min_count=1, relevance_threshold=1, overwrite=True)
    return prepared_dir


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
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if args.reference not in args.models:
        parser.error(f"--reference {args.reference} is not among --models")

    prepared_dir = prepare_demo_data(args.out, seed=0)
    dataset = PreparedDataset.open(prepared_dir)
    test = dataset.split("test")
    base = apply_overrides(demo_config(), parse_set(args.set), "--set").validate()
    seconds: dict[str, list[float]] = {}
    run_dirs = []
    for name in args.models:
        for seed in args.seeds:
            began = time.perf_counter()
            overrides = {"model": {"name": name}, "train": {"seed": seed, "threads": args.threads}}
            config = apply_overrides(base, overrides, name).validate()
            run_dir = args.out / "runs" / f"{name}-seed{seed}"
            log.info("training %s, seed %d", name, seed)
            train(config, prepared_dir, run_dir, progress=not args.no_progress)
            checkpoint = load_checkpoint(run_dir / "best.safetensors")
            summary, product_ids, values, _ = evaluate_split(
                checkpoint.model, test, checkpoint.config.data, dataset.feature_dim, dataset.relevance_threshold,
                checkpoint.config.train.ties, progress=not args.no_progress,
            )
            write_per_product(run_dir / "test_per_product.jsonl", product_ids, values, "test")
            seconds.setdefault(name, []).append(time.perf_counter() - began)
            run_dirs.append(run_dir)
            log.info("%s seed %d: test %s (%.0f s)", name, seed, format_metrics(summary), seconds[name][-1])

    comparison = compare_systems(group_runs(run_dirs, []), reference=args.reference, test="t")
    print()
    print("Test split of the synthetic demo data, every model with the demo's settings (selected on dev)")
    print(format_comparison(comparison))
    print()
    print("training + test evaluation time per run (s): "
          + ", ".join(f"{name} {sum(times) / len(times):.0f}" for name, times in seconds.items()))


if __name__ == "__main__":
    main()
