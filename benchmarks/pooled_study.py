"""The pooled study of ``benchmarks/real_data.py --pooled`` (issue 19 item 4): one model trained jointly on the
train splits of every shared set, against the per-set models and the floors on the same splits; a new category
(one MDSD domain left out); new reviews (the split by time).

Per seed, every set is converted with its converter (split by product with that seed, 60/20/20; products with at
least 2 reviews and more than one level); MDSD is one set of three sources, one per domain (books, dvd,
electronics: the ``domain`` of each review line), each split on its own. One vocabulary is built from the train
splits of all sources together (min count 2) and every source is prepared against it
(``mrhp.data.prepare.SharedVocabulary``, what ``mrhp prepare --vocabulary-from`` does), with the
all-MiniLM-L6-v2 token states that ``configs/real-data.toml`` reads (computed once per text for all seeds). Then:

* the floors of every source: review length, age (oldest first) and LightGBM LambdaMART (cheap features with
  age, early stopping on dev), each fitted on its own source only;
* ``pooled model``: ``configs/real-data.toml`` trained on the train splits of all sources at once (the
  ``data.source_sampling`` of the config), selected on the pooled dev split, tested on every source;
* ``per-set model``: the same config trained on one set's sources (MDSD: its three domains);
* ``LambdaMART + pooled model``: what the model adds to the best cheap ranker: each source's LambdaMART floor
  blended with the pooled model, the model's share picked on pooled dev (``mrhp.studies.blend``);
* new category, for each MDSD domain: ``other domains`` (trained on the two other domains) against ``domain
  alone`` (trained on that domain), both tested on its test split;
* new reviews: every set split by review time instead (``--split-by time``, 60/20/20 of each set's reviews by
  time; the same split for every seed), the floors, the pooled model trained on those train splits and its
  blend with LambdaMART.

Statistics: a set's test values are its products' values (MDSD: the products of its three domains); each
product's value is averaged over the seeds in which it is tested, so a product is one sample
(``mrhp.studies.stats.product_means``), and a system is compared with another by a paired t-test over those
products (``products-t``; the sign-flip randomization test beside it). The p-values of one table are
Holm-adjusted across its rows (the sets, and the pooled row). The best floor of a set is the floor with the
highest mean dev MAP over the seeds (of all products pooled for the pooled row); it is printed beside the model.

``--smoke`` runs all of it in seconds on generated stand-in data (three small sets in the Amazon'23 layout, one
of them with three domains) with a tiny LSTM model: it checks the machinery, it measures nothing.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _real_sets import (  # the sibling module, found beside this script
    SETS,
    CachedStates,
    RealSet,
)

from mrhp.config import SOURCE_SAMPLING, Config, apply_overrides, load_config
from mrhp.data.dumps import read_dump
from mrhp.data.prepare import SharedVocabulary, prepare_dataset
from mrhp.data.prepared import PreparedDataset
from mrhp.data.records import RawDataset
from mrhp.data.text import Vocabulary, count_tokens
from mrhp.models.checkpoint import load_checkpoint
from mrhp.objectives.metrics import METRICS, summarize
from mrhp.scoring.evaluate import (
    evaluate_split,
    per_product_metrics,
    score_split,
    write_per_product,
)
from mrhp.studies.blend import BlendSource, blend, pick_weight, standardize_per_product
from mrhp.studies.floors import evaluate_floor, train_lambdamart
from mrhp.studies.stats import CORRECTION, TESTS, holm, paired_test, product_means
from mrhp.training.loop import train

FRACTIONS = (0.6, 0.2, 0.2)
FLOORS = ("length", "age", "lambdamart")
BLEND = "LambdaMART + pooled model"  # the floor blended with the model, mrhp.studies.blend
SYSTEMS = ("pooled model", "per-set model", BLEND)  # the columns of the split by product
TEST = "products-t"  # the test of every table; the randomization test is printed beside it


# The stand-in of --smoke: three sets in the Amazon'23 layout, written by `write_standin`.
SMOKE_SETS = {
    "set-a": RealSet("stand-in A", "amazon2023", "set-a/reviews.jsonl", "set-a/meta.jsonl"),
    "set-b": RealSet("stand-in B", "amazon2023", "set-b/reviews.jsonl", "set-b/meta.jsonl"),
    "domains": RealSet("stand-in with domains", "amazon2023", "domains/reviews.jsonl", "domains/meta.jsonl",
                         domains=("d1", "d2", "d3")),
}
SMOKE_MODEL = {
    "model": {"hidden_size": 16, "embedding_dim": 8, "num_heads": 2, "interaction_layers": 1,
              "feedforward_size": 16, "side_features": True, "checkpoint_activations": False},
    "data": {"batch_rows": 16, "max_tokens": 32},
    "train": {"epochs": 1, "lr": 3e-3, "threads": 1},
}


def write_standin(root: Path, seed: int = 0) -> Path:
    """Tiny review files in the Amazon'23 layout for `SMOKE_SETS` under `root`: 14 products per set (or domain)
    with 4 to 12 reviews, votes that grow with a review's length and age, times over 2010-2020."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(60)]
    for key, pset in SMOKE_SETS.items():
        folder = root / key
        folder.mkdir(parents=True, exist_ok=True)
        reviews, meta = [], []
        for domain in pset.domains or ("",):
            for p in range(14):
                asin = f"{key}-{domain}-{p}"
                meta.append({"parent_asin": asin, "title": " ".join(rng.choice(words, 4)), "description": []})
                for r in range(int(rng.integers(4, 13))):
                    length = int(rng.integers(3, 30))
                    timestamp = int(rng.integers(1_262_304_000, 1_577_836_800))
                    votes = int(max(0, length / 6 + (1_577_836_800 - timestamp) / 1e8 + rng.normal(0, 1)))
                    reviews.append({"rating": float(rng.integers(1, 6)), "title": "", "asin": asin,
                                    "text": " ".join(rng.choice(words, length)), "parent_asin": asin,
                                    "user_id": f"u{r}", "timestamp": 1000 * timestamp, "helpful_vote": votes,
                                    "verified_purchase": bool(rng.integers(0, 2)), "images": [],
                                    **({"domain": domain} if domain else {})})
        (folder / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reviews), encoding="utf-8")
        (folder / "meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta), encoding="utf-8")
    return root


@dataclass(frozen=True)
class Source:
    key: str  # the set
    domain: str | None

    @property
    def name(self) -> str:
        return self.key if self.domain is None else f"{self.key}-{self.domain}"


def sources_of(sets: dict[str, RealSet]) -> list[Source]:
    return [Source(key, domain) for key, pset in sets.items() for domain in (pset.domains or (None,))]


def read_source(shared: Path, pset: RealSet, source: Source, seed: int, split_by: str, work: Path) -> RawDataset:
    """One source converted by its set's converter; a domain is first cut out of the set's review lines."""
    reviews = shared / pset.reviews
    if source.domain is not None:
        reviews = work / f"{source.name}.jsonl"
        work.mkdir(parents=True, exist_ok=True)
        with (shared / pset.reviews).open(encoding="utf-8") as lines:
            kept = [line for line in lines if json.loads(line).get("domain") == source.domain]
        reviews.write_text("".join(kept), encoding="utf-8")
    return read_dump(pset.format, reviews, metadata=shared / pset.metadata if pset.metadata else None,
                     fractions=FRACTIONS, seed=seed, split_by=split_by, min_reviews=2, drop_single_level=True)


def prepare_sources(shared: Path, sets: dict[str, RealSet], seed: int, split_by: str, out: Path,
                    states) -> dict[str, PreparedDataset]:
    """Every source of `sets`, prepared against one vocabulary of all their train splits (a split left empty by
    the converter is not written)."""
    raws = {source.name: read_source(shared, sets[source.key], source, seed, split_by, out.parent / "domains")
            for source in sources_of(sets)}
    counts: Counter[str] = Counter()
    for raw in raws.values():
        train_split = raw.splits["train"]
        counts.update(count_tokens([p.text for p in train_split.products] + [r.text for r in train_split.reviews]))
    shared_vocabulary = SharedVocabulary(Vocabulary.from_counts(counts, min_count=2), None, vocabulary_origin(raws))
    prepared = {}
    for name, raw in raws.items():
        prepare_dataset(raw, out / name, relevance_threshold=1, text_encoder=states, overwrite=True,
                        shared=shared_vocabulary)
        prepared[name] = PreparedDataset.open(out / name)
    return prepared


def vocabulary_origin(names: Sequence[str]) -> str:
    """How the sources' one vocabulary is named in each prepared dataset's report (`vocabulary.from`)."""
    return f"the train splits of {', '.join(names)}"


def prepared_sources(shared: Path, sets: dict[str, RealSet], seed: int, split_by: str, out: Path, states,
                     reuse: bool) -> dict[str, PreparedDataset]:
    """`prepare_sources`, or with `reuse` the sources an earlier run of the same seed left in `out`: used only when
    every source is there with the vocabulary of exactly these sources (an earlier run over other sets built
    another one; its runs are then refused by `train`'s resume, which checks the vocabulary)."""
    names = [source.name for source in sources_of(sets)]
    if reuse and all((out / name / "dataset.json").is_file() for name in names):
        found = {name: PreparedDataset.open(out / name) for name in names}
        if all(d.meta["report"]["vocabulary"]["from"] == vocabulary_origin(names) for d in found.values()):
            return found
    return prepare_sources(shared, sets, seed, split_by, out, states)


def model_config(seed: int, epochs: int | None, smoke: bool, config_path: Path) -> Config:
    config = apply_overrides(Config(), SMOKE_MODEL, "smoke") if smoke else load_config(config_path)
    overrides = {"seed": seed, "threads": 1, **({"epochs": epochs} if epochs else {})}
    return apply_overrides(config, {"train": overrides}, "seed").validate()


class Results:
    """Per system and source, one `(product ids, {metric: values}, dev MAP, dev products)` per seed."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, list[tuple[list[str], dict[str, np.ndarray], float, int]]]] = {}
        self.blend_weights: list[float] = []  # the model's share in `BLEND`, per seed

    def add(self, system: str, source: str, ids: list[str], values: dict, dev_map: float, dev_products: int) -> None:
        # Product ids are named by their source, so that two sources' products never merge.
        self.runs.setdefault(system, {}).setdefault(source, []).append(
            ([f"{source}/{p}" for p in ids], {m: np.asarray(values[m]) for m in METRICS}, dev_map, dev_products))

    def means(self, system: str, sources: Sequence[str], metric: str) -> dict[str, float]:
        """Each product of `sources` averaged over the seeds that test it."""
        return product_means([(ids, values[metric]) for source in sources
                              for ids, values, _, _ in self.runs[system].get(source, [])])

    def dev_map(self, system: str, sources: Sequence[str]) -> float:
        """Mean over seeds of the dev MAP of all products of `sources` pooled."""
        present = [s for s in sources if s in self.runs[system]]
        per_seed = []
        for k in range(len(self.runs[system][present[0]])):
            entries = [self.runs[system][s][k] for s in present]
            per_seed.append(sum(e[2] * e[3] for e in entries) / max(1, sum(e[3] for e in entries)))
        return statistics.mean(per_seed)


def evaluate_run(run_dir: Path, datasets: dict[str, PreparedDataset], results: Results, system: str,
                 dev_map: float) -> dict[str, np.ndarray]:
    """The best dev checkpoint of `run_dir` once on the test split of every source of `datasets`; returns each
    source's test scores."""
    checkpoint = load_checkpoint(run_dir / "best.safetensors")
    scores = {}
    for name, dataset in datasets.items():
        evaluation = evaluate_split(checkpoint.model, dataset.split("test"), data=checkpoint.config.data,
                                    feature_dim=dataset.feature_dim, threshold=dataset.relevance_threshold,
                                    ties=checkpoint.config.train.ties, progress=False)
        write_per_product(run_dir / f"test_{name}.jsonl", evaluation.product_ids, evaluation.values, "test")
        results.add(system, name, evaluation.product_ids, evaluation.values, dev_map,
                    dataset.split("dev").num_products)
        scores[name] = evaluation.scores
    return scores


def train_or_resume(config: Config, train_on: dict[str, PreparedDataset], run_dir: Path, reuse: bool) -> dict:
    """`train` into `run_dir`; with `reuse`, what an earlier run left there is resumed by `train`'s own resume,
    which refuses a different config and returns at once from a finished run. Returns the best epoch's record."""
    resume = reuse and (run_dir / "last.safetensors").is_file()
    return train(config, [d.path for d in train_on.values()], run_dir, resume=resume, progress=False)


def train_and_test(config: Config, train_on: dict[str, PreparedDataset], test_on: dict[str, PreparedDataset],
                   run_dir: Path, results: Results, system: str, reuse: bool) -> dict[str, np.ndarray]:
    best = train_or_resume(config, train_on, run_dir, reuse)
    return evaluate_run(run_dir, test_on, results, system, float(best.get("dev_map", float("nan"))))


def floors(datasets: dict[str, PreparedDataset], results: Results, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Every floor of `FLOORS` on the test split of every source; returns each source's LambdaMART scores of its dev
    and test splits (`{source: {split: [N]}}`), for the blend."""
    ties = Config().train.ties  # the floors are scored as the models are
    lambdamart = {}
    for name, dataset in datasets.items():
        threshold = dataset.relevance_threshold
        for method in FLOORS:
            if method == "lambdamart":  # trained once, scored on dev and test
                ranker = train_lambdamart(dataset, threshold=threshold, ties=ties, seed=seed)
                lambdamart[name] = {split: ranker.scores(dataset.split(split)) for split in ("dev", "test")}
                dev_ids, dev = per_product_metrics(dataset.split("dev"), lambdamart[name]["dev"], threshold, ties)
                ids, values = per_product_metrics(dataset.split("test"), lambdamart[name]["test"], threshold, ties)
                dev_summary = summarize(dev)
            else:
                dev_summary, dev_ids, _ = evaluate_floor(dataset, method, "dev", threshold=threshold, ties=ties,
                                                         seed=seed)
                _, ids, values = evaluate_floor(dataset, method, "test", threshold=threshold, ties=ties, seed=seed)
            results.add(f"{method} floor", name, ids, values, dev_summary["map"], len(dev_ids))
    return lambdamart


def blend_with_floor(run_dir: Path, datasets: dict[str, PreparedDataset], test_scores: dict[str, np.ndarray],
                     lambdamart: dict[str, dict[str, np.ndarray]], results: Results, system: str) -> None:
    """`system`: each source's LambdaMART floor (its scores, from `floors`) blended with the model of `run_dir`
    (`mrhp.studies.blend`), the weight picked on the dev split of every source pooled, then scored once on every
    test split (`test_scores`: the model's, from `evaluate_run`)."""
    checkpoint = load_checkpoint(run_dir / "best.safetensors")
    ties = checkpoint.config.train.ties
    parts: dict[str, dict[str, BlendSource]] = {"dev": {}, "test": {}}
    for name, dataset in datasets.items():
        for split_name, sources in parts.items():
            split = dataset.split(split_name)
            model = test_scores[name] if split_name == "test" else score_split(
                checkpoint.model, split, checkpoint.config.data, dataset.feature_dim, progress=False)
            sources[name] = BlendSource(split, standardize_per_product(split, lambdamart[name][split_name]),
                                        standardize_per_product(split, model), dataset.relevance_threshold)
    weight, dev_maps = pick_weight(list(parts["dev"].values()), ties)
    results.blend_weights.append(weight)
    for name, source in parts["test"].items():
        ids, values = per_product_metrics(source.split, blend(source.floor, source.model, weight), source.threshold,
                                          ties)
        dev = parts["dev"][name]
        _, dev_values = per_product_metrics(dev.split, blend(dev.floor, dev.model, weight), dev.threshold, ties)
        results.add(system, name, ids, values, 100.0 * float(dev_values["map"].mean()), dev.split.num_products)
    print(f"{system}: model share {weight} (pooled dev MAP by share: "
          + ", ".join(f"{w}: {m:.2f}" for w, m in dev_maps.items()) + ")", flush=True)


def run_seed(shared: Path, sets: dict[str, RealSet], seed: int, out: Path, config: Config, states,
             product_split: Results, time_split: Results, with_time: bool, reuse: bool) -> None:
    seed_dir = out / f"seed{seed}"
    datasets = prepared_sources(shared, sets, seed, "product", seed_dir / "prepared", states, reuse)
    lambdamart = floors(datasets, product_split, seed)
    scores = train_and_test(config, datasets, datasets, seed_dir / "pooled-model", product_split, "pooled model",
                            reuse)
    blend_with_floor(seed_dir / "pooled-model", datasets, scores, lambdamart, product_split, BLEND)
    for key, pset in sets.items():
        own = {s.name: datasets[s.name] for s in sources_of({key: pset})}
        train_and_test(config, own, own, seed_dir / f"per-set-{key}", product_split, "per-set model", reuse)
        domains = pset.domains
        for domain in domains if len(domains) > 1 else ():
            left_out = {Source(key, domain).name: datasets[Source(key, domain).name]}
            others = {n: d for n, d in own.items() if n not in left_out}
            train_and_test(config, others, left_out, seed_dir / f"without-{domain}", product_split,
                           "other domains", reuse)
            train_and_test(config, left_out, left_out, seed_dir / f"alone-{domain}", product_split,
                           "domain alone", reuse)
    if with_time:
        timed = prepared_sources(shared, sets, seed, "time", seed_dir / "prepared-time", states, reuse)
        # A source whose newest reviews leave no rankable list (MDSD: mostly 2-3 reviews per product) has no dev
        # or test split by time; it is left out of the time study, and the report says which.
        timed = {name: d for name, d in timed.items() if {"train", "dev", "test"} <= set(d.splits)}
        lambdamart = floors(timed, time_split, seed)
        scores = train_and_test(config, timed, timed, seed_dir / "pooled-model-time", time_split, "pooled model",
                                reuse)
        blend_with_floor(seed_dir / "pooled-model-time", timed, scores, lambdamart, time_split, BLEND)


def compare(results: Results, rows: dict[str, list[str]], systems: Sequence[str], against: dict[str, str],
            metric: str) -> list[list[str]]:
    """One table: per row (a set or the pooled row, by its sources) each system against `against[row]`; the
    p-values of each system's column are Holm-adjusted across the rows."""
    cells: dict[str, list[tuple[float, float, float, int]]] = {}
    for system in systems:
        for row, sources in rows.items():
            ours = results.means(system, sources, metric)
            theirs = results.means(against[row], sources, metric)
            assert ours.keys() == theirs.keys(), f"{system} and {against[row]} were tested on other products"
            a, b = np.asarray(list(ours.values())), np.asarray([theirs[p] for p in ours])
            enough = a.size >= 2 and np.ptp(a - b) > 0
            cells.setdefault(system, []).append((
                100 * float(a.mean() - b.mean()), paired_test(a, b, "t") if enough else float("nan"),
                paired_test(a, b, "randomization", seed=0) if enough else float("nan"), int(a.size)))
    table = []
    adjusted = {system: (holm([c[1] for c in cells[system]]), holm([c[2] for c in cells[system]]))
                for system in systems}
    for i, row in enumerate(rows):
        line = [row]
        for system in systems:
            difference, _, _, size = cells[system][i]
            value = 100 * statistics.mean(results.means(system, rows[row], metric).values())
            t_p, r_p = adjusted[system][0][i], adjusted[system][1][i]
            tests = (f"{TEST} p = {t_p:.3g}; randomization p = {r_p:.3g}" if not np.isnan(t_p) else
                     "no test: one product" if size < 2 else "no test: no product differs")
            line += [f"{value:.2f}", f"{difference:+.2f}", tests]
        floor = against[row]
        line += [f"{floor} {100 * statistics.mean(results.means(floor, rows[row], metric).values()):.2f}",
                 str(size)]
        table.append(line)
    return table


def markdown(header: list[str], table: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(row) + " |" for row in table)])


def best_floors(results: Results, rows: dict[str, list[str]]) -> dict[str, str]:
    """The floor with the highest mean dev MAP for each row."""
    return {row: max((f"{m} floor" for m in FLOORS), key=lambda floor: results.dev_map(floor, sources))
            for row, sources in rows.items()}


def floor_summary(results: Results, rows: dict[str, list[str]]) -> str:
    header = ["set", *(f"{m} floor test MAP" for m in FLOORS), *(f"{m} floor dev MAP" for m in FLOORS)]
    table = [[row, *(f"{100 * statistics.mean(results.means(f'{m} floor', s, 'map').values()):.2f}" for m in FLOORS),
              *(f"{results.dev_map(f'{m} floor', s):.2f}" for m in FLOORS)] for row, s in rows.items()]
    return markdown(header, table)


def system_header(systems: Sequence[str], metric: str) -> list[str]:
    return ["set", *(cell for system in systems for cell in (f"{system} {metric.upper()}", f"{system} - best floor",
                                                             f"p ({system})")),
            "best floor (by dev MAP)", "products"]


def blend_note(results: Results) -> str:
    return (f"`{BLEND}`: each source's LambdaMART floor and the pooled model, both standardized within each "
            "product's list, mixed as (1 - a) x floor + a x model, the model's share a picked on pooled dev "
            f"(`mrhp.studies.blend`); a by seed: {', '.join(f'{w:g}' for w in results.blend_weights)}.")


def report(sets: dict[str, RealSet], product_split: Results, time_split: Results, seeds: list[int],
           with_time: bool) -> str:
    rows = {key: [s.name for s in sources_of({key: pset})] for key, pset in sets.items()}
    rows["pooled"] = [s.name for s in sources_of(sets)]
    test_note = (f"{TEST}: {TESTS[TEST]}; randomization: sign-flip randomization test over the same products. "
                 f"p-values {CORRECTION}-adjusted across the rows of each system's column.")
    parts = [f"Seeds: {', '.join(map(str, seeds))}. MAP / NDCG@3 x100 on test: the mean over products of each "
             "product's mean over the seeds that test it. Difference = system - best floor (the floor with the "
             "highest dev MAP for that row). " + test_note]
    against = best_floors(product_split, rows)
    for metric in ("map", "ndcg@3"):
        table = compare(product_split, rows, SYSTEMS, against, metric)
        parts += [f"## Split by product: pooled model and per-set models vs the best floor ({metric.upper()})",
                  markdown(system_header(SYSTEMS, metric), table)]
    parts += [blend_note(product_split)]
    parts += ["Floors, split by product:", floor_summary(product_split, rows)]
    domain_rows = {s.name: [s.name] for key, pset in sets.items() if len(pset.domains) > 1
                   for s in sources_of({key: pset})}
    if domain_rows:
        table = compare(product_split, domain_rows, ["other domains"], {r: "domain alone" for r in domain_rows},
                        "map")
        floor_of = best_floors(product_split, domain_rows)
        for line, row in zip(table, domain_rows):
            line[-2] = (f"domain alone {line[-2].split()[-1]}; {floor_of[row]} "
                        f"{100 * statistics.mean(product_split.means(floor_of[row], domain_rows[row], 'map').values()):.2f}")
        parts += ["## New category: one domain left out (MAP)",
                  ("`other domains` is trained on the other domains of its set and tested on this one; it is "
                   "compared with `domain alone`, trained on this domain's train split (same test split)."),
                  markdown(["left-out domain", "other domains MAP", "other - alone", "p",
                            "domain alone MAP; best floor", "products"], table)]
    if with_time:
        tested = set(time_split.runs.get("pooled model", {}))
        left_out = [name for sources in list(rows.values())[:-1] for name in sources if name not in tested]
        rows = {row: [s for s in sources if s in tested] for row, sources in rows.items()}
        rows = {row: sources for row, sources in rows.items() if sources}
        time_against = best_floors(time_split, rows)
        table = compare(time_split, rows, ["pooled model", BLEND], time_against, "map")
        parts += ["## New reviews: split by time (MAP)",
                  "Every set split by review time (the oldest 60% of its reviews train, the next 20% dev, the "
                  "newest 20% test; the same split under every seed, only training differs)."
                  + (f" Left out (no rankable dev or test list by time): {', '.join(left_out)}." if left_out else ""),
                  markdown(system_header(["pooled model", BLEND], "map"), table), blend_note(time_split),
                  "Floors, split by time:", floor_summary(time_split, rows)]
    return "\n\n".join(parts)


# Issue 19 item 6: what more data might allow, each tried alone over configs/real-data.toml and measured on pooled
# dev only (the test split is never scored): what wins is kept in the config.
CANDIDATES = {
    "configs/real-data.toml": {},
    "listwise loss (loss.listwise_weight = 1)": {"loss": {"listwise_weight": 1.0}},
    "more lists per batch (data.batch_rows = 64)": {"data": {"batch_rows": 64}},
    "score anchored on length (model.length_anchor = 1)": {"model": {"length_anchor": 1.0}},
    "top encoder layer tuned (model.text_tuned_layers = 1)": {"model": {"text_tuned_layers": 1}},
}
SAMPLINGS = {f"data.source_sampling = {s}": {"data": {"source_sampling": s}} for s in SOURCE_SAMPLING}
# Issue 19 item 3: the stored side features, each kept only if pooled dev shows it helps. Those a review's
# quality may show (verified purchase, images, rating against the product's mean) together, and the age rank,
# which predicts votes through exposure, apart.
SIDE_FEATURES = {
    "configs/real-data.toml": {},
    "verified, has_images, rating_deviation": {"model": {"extra_side_features": "verified,has_images,rating_deviation"}},
    "age_rank": {"model": {"extra_side_features": "age_rank"}},
}
STUDIES = {"sampling": ("source sampling", SAMPLINGS), "candidates": ("candidates beyond configs/real-data.toml",
                                                                      CANDIDATES),
           "side": ("stored side features", SIDE_FEATURES)}


def dev_study(shared: Path, sets: dict[str, RealSet], seeds: list[int], out: Path, epochs: int | None,
              smoke: bool, config_path: Path, study: str, variants: dict[str, dict], states_for,
              reuse: bool = False) -> str:
    """The dev study `study`: the pooled model under each of `variants` (config overrides; the first is the
    reference), on the split by
    product, scored on pooled dev only: dev MAP pooled and per source of the selected epoch, and each variant
    against the first by a paired t-test over the pooled dev products (each product averaged over the seeds),
    Holm-adjusted across the variants. `states_for(tuned_layers)` gives the token states a variant reads (None
    for the LSTM); sources are prepared once per distinct states. With `reuse`, what an earlier study of the same
    seed left in `out` is used: its prepared sources, and its runs (resumed, `train_or_resume`)."""
    dev = Results()
    epochs_of: dict[str, list[int]] = {}
    for seed in seeds:
        prepared: dict[int, dict[str, PreparedDataset]] = {}
        for label, overrides in variants.items():
            config = apply_overrides(model_config(seed, epochs, smoke, config_path), overrides, label).validate()
            tuned = config.model.text_tuned_layers
            if tuned not in prepared:
                folder = out / f"seed{seed}" / ("prepared" if tuned == 0 else f"prepared-tuned{tuned}")
                prepared[tuned] = prepared_sources(shared, sets, seed, "product", folder, states_for(tuned), reuse)
            datasets = prepared[tuned]
            run_dir = out / f"seed{seed}" / f"{study}-{list(STUDIES[study][1]).index(label)}"
            best = train_or_resume(config, datasets, run_dir, reuse)
            epochs_of.setdefault(label, []).append(int(best["epoch"]))
            checkpoint = load_checkpoint(run_dir / "best.safetensors")
            for name, dataset in datasets.items():
                evaluation = evaluate_split(checkpoint.model, dataset.split("dev"), data=checkpoint.config.data,
                                            feature_dim=dataset.feature_dim, threshold=dataset.relevance_threshold,
                                            ties=checkpoint.config.train.ties, progress=False)
                dev.add(label, name, evaluation.product_ids, evaluation.values, float("nan"),
                        dataset.split("dev").num_products)
            print(f"dev study: seed {seed} {label}: pooled dev MAP {best['dev_map']:.2f} (epoch {best['epoch']})",
                  flush=True)
    reference = next(iter(variants))
    names = list(dev.runs[reference])
    cells = []
    for label in variants:
        ours, theirs = dev.means(label, names, "map"), dev.means(reference, names, "map")
        a, b = np.asarray(list(ours.values())), np.asarray([theirs[p] for p in ours])
        tested = label != reference and a.size >= 2 and np.ptp(a - b) > 0
        cells.append((label, 100 * float(a.mean()), 100 * float(a.mean() - b.mean()),
                      paired_test(a, b, "t") if tested else float("nan"), a.size))
    adjusted = holm([c[3] for c in cells[1:]]) if len(cells) > 1 else []
    header = ["variant", "pooled dev MAP", f"- {reference}", "p", *(f"{n} dev MAP" for n in names), "best epochs"]
    table = []
    for i, (label, value, difference, _, size) in enumerate(cells):
        p = "reference" if i == 0 else f"{TEST} p = {adjusted[i - 1]:.3g} (Holm, {len(cells) - 1} variants)"
        per_source = [f"{100 * statistics.mean(dev.means(label, [n], 'map').values()):.2f}" for n in names]
        table.append([label, f"{value:.2f}", f"{difference:+.2f}" if i else "", p, *per_source,
                      ", ".join(map(str, epochs_of[label]))])
    products = cells[0][4]
    return markdown(header, table) + (f"\n\n{products} pooled dev products; MAP x100, each product averaged over "
                                      f"seeds {', '.join(map(str, seeds))}.")


def run_pooled(shared: Path, seeds: list[int], out: Path, *, smoke: bool, epochs: int | None, config_path: Path,
               datasets: Sequence[str] | None, with_time: bool, command: str, study: str | None = None,
               reuse: bool = False, variants: Sequence[int] | None = None) -> int:
    """The whole study, or with `study` one of the dev studies of `STUDIES` (`dev_study`; with `reuse` on the
    sources an earlier study prepared in `out`); writes `out/pooled.md` (or `out/STUDY.md`) and prints it.
    Returns the exit status."""
    if smoke:
        shared, sets = write_standin(out / "standin"), SMOKE_SETS
        states_for = {0: None}.get
    else:
        sets = {key: pset for key, pset in SETS.items() if datasets is None or key in datasets}
        for key in list(sets):
            if not (shared / sets[key].reviews).exists():
                print(f"real_data --pooled: {key} skipped: {shared / sets[key].reviews} not found")
                del sets[key]
        if not sets:
            return 0
        config = load_config(config_path)
        cached: dict[int, CachedStates] = {}

        def states_for(tuned: int):
            if config.model.text_encoder != "minilm":
                return None
            if tuned not in cached:  # one encoder (and one cache of states) per layer
                cached[tuned] = CachedStates(config.data.max_tokens, tuned_layers=tuned)
            return cached[tuned]

    states = states_for(0)
    started = time.perf_counter()
    if study is not None:
        title, known = STUDIES[study]
        picked = sorted({0, *(variants if variants is not None else range(len(known)))})
        if picked[-1] >= len(known):
            raise SystemExit(f"--variants: the {study} study has variants 0..{len(known) - 1}")
        variants = {label: known[label] for k, label in enumerate(known) if k in picked}
        if smoke:  # the stand-in's LSTM model has no encoder layer to tune
            variants = {k: v for k, v in variants.items() if "text_tuned_layers" not in v.get("model", {})}
        table = dev_study(shared, sets, seeds, out, epochs, smoke, config_path, study, variants, states_for, reuse)
        text = (f"# Pooled training: {title}, on pooled dev\n\nCommand: `{command}`; "
                f"{(time.perf_counter() - started) / 60:.1f} min\n\n{table}")
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{study}.md").write_text(text + "\n", encoding="utf-8")
        print(text)
        return 0
    product_split, time_split = Results(), Results()
    for seed in seeds:
        config = model_config(seed, epochs, smoke, config_path)
        run_seed(shared, sets, seed, out, config, states, product_split, time_split, with_time, reuse)
        print(f"pooled study: seed {seed} done ({(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    text = "\n\n".join([
        "# Real data pooled: one model for every set, per-set models, floors, new category, new reviews",
        f"Command: `{command}`; {(time.perf_counter() - started) / 60:.1f} min"
        + (" (smoke: generated stand-in data and a tiny model; the numbers mean nothing)" if smoke else ""),
        report(sets, product_split, time_split, seeds, with_time)])
    out.mkdir(parents=True, exist_ok=True)
    (out / "pooled.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"\nwritten: {out / 'pooled.md'}")
    return 0
