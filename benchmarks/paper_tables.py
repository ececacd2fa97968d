"""The paper's comparison end to end: every system of Tables 3-4 and the three ablations of Table 6, each trained
with several seeds on one prepared dataset, selected on dev and tested once, then `mrhp report` over the runs
(Tables 1 and 3-8 with plots in OUT/report/report.md).

    python benchmarks/paper_tables.py --demo --out runs/paper-tables-demo [--seeds 0 1 2]
    python benchmarks/paper_tables.py --data prepared/amazon2023-magazine --config configs/real-data.toml \\
        --out runs/paper-tables-amazon2023 [--seeds 0 1 2] [--set train.epochs=3]
    python benchmarks/paper_tables.py --smoke

`--demo` writes and prepares the synthetic data of `mrhp demo` (under OUT) and starts from the demo's settings
(`mrhp.studies.demo.demo_config`); `--data` takes a prepared dataset and starts from the defaults, or `--config FILE`.
`--set` applies to every system. Baselines ignore the settings they have no use for (the contrastive loss, the
side channel, a pretrained text encoder's states). A run whose folder already holds its per-product file and
best checkpoint is not trained again, so an interrupted benchmark continues where it stopped. Prints the training
time of each run and the total.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch
from _common import add_smoke, demo_data, smoke_config

from mrhp.config import MODEL_NAMES, Config, apply_overrides, load_config, parse_set
from mrhp.data.prepared import PreparedDataset
from mrhp.studies.compare import per_product_name
from mrhp.studies.demo import demo_config
from mrhp.studies.experiment import run_folder, run_system
from mrhp.studies.report import ABLATIONS, PAPER_MODEL, write_report


def systems(models: list[str], ablations: list[str]) -> dict[str, dict]:
    """Run-folder name (without the seed) -> the overrides that make the system."""
    out = {name: {"model": {"name": name}} for name in models}
    for label in ablations:
        folder = PAPER_MODEL + "-" + label.replace("w/o ", "wo-").replace(" ", "-")
        out[folder] = {**ABLATIONS[label], "model": {**ABLATIONS[label].get("model", {}), "name": PAPER_MODEL}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--demo", action="store_true", help="the synthetic data and settings of mrhp demo")
    source.add_argument("--data", type=Path, help="a prepared dataset")
    parser.add_argument("--config", type=Path, help="config overrides for every system (with --data)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    parser.add_argument("--ablations", nargs="*", choices=list(ABLATIONS), default=list(ABLATIONS))
    parser.add_argument("--title", help="the report's title")
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:  # two systems and one ablation, two seeds, toy sizes, in a fresh folder
        args.demo, args.data, args.models, args.ablations, args.seeds = True, None, ["mcr", "mrhp"], \
            list(ABLATIONS)[:1], [0, 1]
        args.out = args.out or Path(tempfile.mkdtemp(prefix="paper-tables-smoke-"))
    if not (args.demo or args.data) or args.out is None:
        parser.error("give --demo or --data, and --out")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    torch.set_num_threads(1)

    if args.demo:
        dataset, base = demo_data(args.out, args.smoke), smoke_config(demo_config(), args.smoke)
    else:
        dataset, base = PreparedDataset.open(args.data), load_config(args.config) if args.config else Config()
    base = apply_overrides(base, parse_set(args.set), "--set")
    runs_dir, times = args.out / "runs", {}
    began = time.perf_counter()
    for system, overrides in systems(args.models, args.ablations).items():
        for seed in args.seeds:
            name = f"{system}-seed{seed}"
            folder = run_folder(runs_dir, name)
            if (folder / per_product_name("test")).exists() and (folder / "best.safetensors").exists():
                continue
            config = apply_overrides(base, {**overrides, "train": {"seed": seed, "threads": 1}}, name).validate()
            times[name] = round(run_system(name, config, dataset, runs_dir, progress=False).seconds, 1)
            print(f"{name}: {times[name]} s", flush=True)
    (args.out / "times.json").write_text(json.dumps(times, indent=1) + "\n")
    folders = sorted(run_folder(runs_dir, f"{s}-seed{seed}") for s in systems(args.models, args.ablations)
                     for seed in args.seeds)
    report = write_report(folders, dataset.path, args.out / "report", title=args.title,
                          reference=PAPER_MODEL if PAPER_MODEL in args.models else None)
    print(f"trained {len(times)} runs in {time.perf_counter() - began:.0f} s; report: {report}")


if __name__ == "__main__":
    main()
