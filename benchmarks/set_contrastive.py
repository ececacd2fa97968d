"""Set-level contrastive learning (issue 15, the paper's Limitation 2): the paper's loss alone against the paper's
loss plus the set-level loss of `mrhp.objectives.losses.set_contrastive_loss` (eqs. S1-S4, `loss.set_contrastive_weight`).

Sets of data (one prepared dataset each, the same for every seed, so that per-product values pair up):

* ``demo``: the demo's synthetic multimodal data (`mrhp.studies.demo.prepare_demo_data`, data seed 0) with the demo's
  settings (`mrhp.studies.demo.demo_config`);
* ``amazon2023-magazine``: the Amazon Reviews'23 Magazine sample with product title and description, converted
  and prepared as `benchmarks/real_data.py` does (split by product 60/20/20 with split seed 0, single-level
  products dropped, all-MiniLM-L6-v2 token states), trained with `configs/real-data.toml` as a user runs it.

Per set and training seed: the baseline (`paper loss`) and, for each weight of ``--weights``, the same config with
``loss.set_contrastive_weight`` at that weight; every run is selected on dev MAP (early stopping on dev). The
weight is chosen by the mean dev MAP over the seeds (or over ``--select-seeds`` only; the other seeds then train
the baseline and the chosen weight alone); the test split is then evaluated once, for the baseline and the chosen
weight only (the other weights never see test). The table has dev and test MAP / NDCG@3 / NDCG@5 (x100,
mean ± sd over seeds) and the tests of `mrhp.studies.compare` (its default, min F' with 2+ seeds, and the
randomization test over products) of the chosen weight against the baseline, on dev and on test.

Resumable: a finished run keeps its result in its folder (``OUT/{set}/{system}-seed{N}/``), and a rerun skips it,
so the work can be cut into pieces of a few minutes, each under the shared CPU lock:

    flock /tmp/mrhp-cpu.lock python benchmarks/set_contrastive.py --sets demo
    flock /tmp/mrhp-cpu.lock python benchmarks/set_contrastive.py --sets amazon2023-magazine --seeds 0
    ...
    python benchmarks/set_contrastive.py          # every run done: selects the weight, tests, prints the table
    python benchmarks/set_contrastive.py --smoke  # a tiny run in seconds (tests/test_benchmarks.py): measures nothing

``--shared`` is the folder of the real samples (default ../shared/data); an absent one is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import add_smoke, demo_data, smoke_config

from mrhp.config import Config, apply_overrides, load_config
from mrhp.data.prepared import PreparedDataset
from mrhp.objectives.metrics import METRICS
from mrhp.studies.compare import compare_systems, format_comparison, read_per_product
from mrhp.studies.demo import demo_config
from mrhp.studies.experiment import evaluate_best
from mrhp.training.loop import train

REPO = Path(__file__).resolve().parents[1]
REAL_SET = "amazon2023-magazine"
SETS = ("demo", REAL_SET)
BASELINE = "paper loss"
RESULT = "result.json"  # in a run folder: the best dev epoch's record and the training time


def system_name(weight: float) -> str:
    return f"+ set-level {weight:g}"


def folder(out: Path, key: str, system: str, seed: int) -> Path:
    slug = "paper-loss" if system == BASELINE else f"set-level-{system.rsplit(' ', 1)[1]}"
    return out / key / f"{slug}-seed{seed}"


def open_dataset(key: str, shared: Path, out: Path, smoke: bool = False) -> tuple[PreparedDataset, Config]:
    """The set's prepared dataset (prepared once, reused by later runs) and its baseline config; with `smoke`,
    toy data and settings."""
    if key == "demo":
        prepared = out / key / "data" / "prepared"
        dataset = PreparedDataset.open(prepared) if prepared.is_dir() else demo_data(out / key / "data", smoke)
        return dataset, smoke_config(demo_config(), smoke)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _real_sets import CachedStates
    from real_data import MODEL_OVERRIDES, prepare_seed

    base = load_config(REPO / "configs" / "real-data.toml")
    prepared = out / key / "data" / "prepared"
    if prepared.is_dir():
        return PreparedDataset.open(prepared), base
    began = time.perf_counter()
    dataset = prepare_seed(shared, key, 0, out / key / "data", CachedStates(MODEL_OVERRIDES["data"]["max_tokens"]))
    print(f"{key}: prepared in {time.perf_counter() - began:.0f} s", flush=True)
    return dataset, base


def train_runs(key: str, dataset: PreparedDataset, base: Config, weights: list[float], seeds: list[int],
               out: Path) -> None:
    """Train the baseline and each weight for every seed that has no result yet (dev only: the test split is not
    read here)."""
    systems = {BASELINE: base, **{system_name(w): apply_overrides(
        base, {"loss": {"set_contrastive_weight": w}}, "set-level") for w in weights}}
    for seed in seeds:
        for system, config in systems.items():
            run_dir = folder(out, key, system, seed)
            if (run_dir / RESULT).is_file():
                continue
            config = apply_overrides(config, {"train": {"seed": seed, "threads": 1}}, "seed").validate()
            began = time.perf_counter()
            best = train(config, dataset.path, run_dir, progress=False)
            seconds = time.perf_counter() - began
            evaluate_best(run_dir, dataset, "dev", progress=False)  # dev per-product values for the paired test
            (run_dir / RESULT).write_text(json.dumps({"best": best, "seconds": seconds}) + "\n", encoding="utf-8")
            print(f"{key} seed {seed} {system:<20} best epoch {best['epoch']}  dev MAP {best['dev_map']:6.2f}  "
                  f"{seconds:5.0f} s", flush=True)


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def results_of(out: Path, key: str, systems: list[str], seeds: list[int]) -> dict[str, list[dict]] | None:
    """The saved results of `systems` x `seeds`; None (with a message) while one is missing."""
    results: dict[str, list[dict]] = {}
    for system in systems:
        for seed in seeds:
            path = folder(out, key, system, seed) / RESULT
            if not path.is_file():
                print(f"{key}: {system} seed {seed} not trained yet; rerun to train it")
                return None
            results.setdefault(system, []).append(json.loads(path.read_text()))
    return results


def choose_weight(out: Path, key: str, weights: list[float], select_seeds: list[int]) -> tuple[float, str] | None:
    """The weight with the highest mean dev MAP over `select_seeds` (never test), and a line saying so."""
    results = results_of(out, key, [BASELINE, *(system_name(w) for w in weights)], select_seeds)
    if results is None:
        return None
    dev_map = {system: statistics.mean(r["best"]["dev_map"] for r in runs) for system, runs in results.items()}
    chosen = max(weights, key=lambda w: dev_map[system_name(w)])
    choice = ", ".join(f"{system} {value:.2f}" for system, value in dev_map.items())
    seeds = " ".join(map(str, select_seeds))
    return chosen, f"Mean dev MAP over seeds {seeds} (the choice of weight): {choice} -> **{system_name(chosen)}**"


def report(key: str, dataset: PreparedDataset, chosen: str, choice: str, seeds: list[int], out: Path) -> str | None:
    """Evaluate the baseline and the chosen weight once on test, and format the table and paired tests; None
    while some run is missing."""
    results = results_of(out, key, [BASELINE, chosen], seeds)
    if results is None:
        return None
    dev_products, test_products = dataset.split("dev").num_products, dataset.split("test").num_products
    lines = [f"### {key}: {dev_products} dev and {test_products} test products, seeds {' '.join(map(str, seeds))}",
             "", choice, "",
             "| system | split | MAP | NDCG@3 | NDCG@5 | best epochs | train s / run |",
             "|---|---|---|---|---|---|---|"]
    runs: dict[str, dict[str, list]] = {}
    for system in (BASELINE, chosen):
        for split in ("dev", "test"):
            per_seed = []
            for seed in seeds:
                run_dir = folder(out, key, system, seed)
                if split == "test" and not (run_dir / "test_per_product.jsonl").is_file():
                    evaluate_best(run_dir, dataset, "test", progress=False)  # once: the file is kept
                per_seed.append(read_per_product(run_dir, split))
            runs.setdefault(split, {})[system] = per_seed
            cells = [mean_sd([100 * float(run.values[m].mean()) for run in per_seed]) for m in METRICS]
            epochs = ", ".join(str(r["best"]["epoch"]) for r in results[system])
            seconds = statistics.mean(r["seconds"] for r in results[system])
            lines.append(f"| {system} | {split} | " + " | ".join(cells) + f" | {epochs} | {seconds:.0f} |")
    for split in ("dev", "test"):
        for test in (None, "products-randomization"):  # None: compare's default (min-f with 2+ seeds)
            comparison = compare_systems(runs[split], reference=BASELINE, test=test)
            lines += ["", "```", format_comparison(comparison), "```"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO / ".." / "shared" / "data",
                        help="the folder of the real samples (default ../shared/data)")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--all-seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="the seeds of the report (a run with fewer --seeds trains only those)")
    parser.add_argument("--select-seeds", type=int, nargs="+",
                        help="the seeds on whose dev split every weight is trained and the weight chosen (default: "
                             "all); the other seeds train only the baseline and the chosen weight")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.1, 1.0],
                        help="candidate loss.set_contrastive_weight values, chosen on dev")
    parser.add_argument("--out", type=Path, default=Path("runs/set-contrastive"))
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:  # the demo set only, one seed and weight, toy sizes, in a fresh folder
        args.sets, args.seeds, args.all_seeds, args.weights = ["demo"], [0], [0], [1.0]
        args.out = Path(tempfile.mkdtemp(prefix="set-contrastive-smoke-"))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    started = time.perf_counter()
    sections = []
    for key in args.sets:
        if key == REAL_SET and not (args.shared / REAL_SET).is_dir():
            print(f"set_contrastive: {key} skipped: {args.shared / REAL_SET} not found")
            continue
        dataset, base = open_dataset(key, args.shared, args.out, args.smoke)
        select_seeds = args.select_seeds or args.all_seeds
        train_runs(key, dataset, base, args.weights, [s for s in args.seeds if s in select_seeds], args.out)
        selected = choose_weight(args.out, key, args.weights, select_seeds)
        if selected is None:
            continue
        weight, choice = selected
        train_runs(key, dataset, base, [weight], [s for s in args.seeds if s not in select_seeds], args.out)
        section = report(key, dataset, system_name(weight), choice, args.all_seeds, args.out)
        if section is not None:
            sections.append(section)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    print(f"\n{command}: {(time.perf_counter() - started) / 60:.1f} min in this invocation\n")
    print("\n\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
