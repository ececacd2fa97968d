"""Sum or mean in the contrastive loss (SPEC 4: "decide sum vs mean by experiment on a dev split").

Trains the full model on the synthetic demo data (the demo's settings) with `loss.contrastive_reduction` = sum
and = mean, for several seeds, and prints the best dev metrics of each run and their means. Only dev is used.

    python benchmarks/contrastive_reduction.py [--seeds 0 1 2] [--out /tmp/contrastive-reduction]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path

from mrhp.config import apply_overrides
from mrhp.data.official import read_official
from mrhp.data.prepare import prepare_dataset
from mrhp.demo import CATEGORY, demo_config
from mrhp.synthetic import SyntheticSpec, write_official_dataset
from mrhp.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="contrastive-reduction-")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    features = write_official_dataset(args.out / "official", CATEGORY, SyntheticSpec(seed=0))
    raw = read_official(args.out / "official", CATEGORY, product_features=features, review_features=features)
    prepare_dataset(raw, args.out / "prepared", min_count=1, overwrite=True)
    results: dict[str, list[dict]] = {}
    for reduction in ("sum", "mean"):
        for seed in args.seeds:
            config = apply_overrides(
                demo_config(), {"loss": {"contrastive_reduction": reduction}, "train": {"seed": seed}}, "experiment"
            )
            best = train(config, args.out / "prepared", args.out / f"{reduction}-{seed}", progress=False)
            results.setdefault(reduction, []).append(best)
            print(f"{reduction:>4} seed {seed}: best dev epoch {best['epoch']:>2}  MAP {best['dev_map']:.2f}  "
                  f"NDCG@3 {best['dev_ndcg@3']:.2f}  NDCG@5 {best['dev_ndcg@5']:.2f}", flush=True)
    for reduction, runs in results.items():
        means = {k: statistics.mean(run[f"dev_{k}"] for run in runs) for k in ("map", "ndcg@3", "ndcg@5")}
        sds = {k: statistics.stdev(run[f"dev_{k}"] for run in runs) if len(runs) > 1 else 0.0 for k in means}
        print(f"{reduction:>4} mean over {len(runs)} seeds: "
              + "  ".join(f"{k.upper()} {means[k]:.2f} +/- {sds[k]:.2f}" for k in means))


if __name__ == "__main__":
    main()
