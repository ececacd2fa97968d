"""Sum or mean in the contrastive loss (SPEC 4: "decide sum vs mean by experiment on a dev split").

Trains the full model on the synthetic demo data (the demo's settings) with `loss.contrastive_reduction` = sum
and = mean, for several seeds, and prints the best dev metrics of each run and their means. Only dev is used.

    python benchmarks/contrastive_reduction.py [--seeds 0 1 2] [--out /tmp/contrastive-reduction] [--smoke]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path

from _common import add_smoke, demo_data, smoke_config

from mrhp.config import apply_overrides
from mrhp.objectives.losses import REDUCTIONS
from mrhp.objectives.metrics import METRICS
from mrhp.studies.demo import demo_config
from mrhp.training.loop import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="contrastive-reduction-")))
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.seeds = [0]
    logging.basicConfig(level=logging.WARNING)
    dataset = demo_data(args.out, args.smoke)
    results: dict[str, list[dict]] = {}
    for reduction in REDUCTIONS:
        for seed in args.seeds:
            config = apply_overrides(smoke_config(demo_config(), args.smoke),
                                     {"loss": {"contrastive_reduction": reduction}, "train": {"seed": seed}},
                                     "experiment")
            # Dev only: this experiment chose a default, so it must never see test (no run_system here).
            best = train(config, dataset.path, args.out / f"{reduction}-{seed}", progress=False)
            results.setdefault(reduction, []).append(best)
            print(f"{reduction:>4} seed {seed}: best dev epoch {best['epoch']:>2}  "
                  + "  ".join(f"{k.upper()} {best[f'dev_{k}']:.2f}" for k in METRICS), flush=True)
    for reduction, runs in results.items():
        means = {k: statistics.mean(run[f"dev_{k}"] for run in runs) for k in METRICS}
        sds = {k: statistics.stdev(run[f"dev_{k}"] for run in runs) if len(runs) > 1 else 0.0 for k in means}
        print(f"{reduction:>4} mean over {len(runs)} seeds: "
              + "  ".join(f"{k.upper()} {means[k]:.2f} +/- {sds[k]:.2f}" for k in means))


if __name__ == "__main__":
    main()
