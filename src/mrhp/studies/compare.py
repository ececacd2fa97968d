"""Comparing systems from their per-product metric files, like the paper's Tables 3-5 (SPEC 5, "Significance").

Input: files written by `mrhp evaluate --per-product FILE` (one JSON object per line: `product_id`, `split`,
`map`, `ndcg@3`, `ndcg@5`, values in [0, 1]), or run folders holding `{split}_per_product.jsonl`. Several files
of one system are runs with different seeds; a run's seed is `train.seed` of the `config.json` beside its file
(what `mrhp train` writes into a run folder). Output, per system: the mean and sample standard deviation over its
seeds of each metric (x100), and a test of the system against an explicitly named reference system per metric
(`mrhp.studies.stats.TESTS`; with 2 or more seeds `min-f`, which counts both the products and the runs as
samples, else `products-t`), its p-values adjusted by Holm's method over all the p-values of the table.

Every file must cover exactly the same products of the same split, and every system must have run under the same
seeds, each once (runs are paired by seed); anything else is an error that names the files.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mrhp.data.records import parse_object_line
from mrhp.errors import DataError, MrhpError
from mrhp.objectives.metrics import METRICS
from mrhp.studies.stats import (
    CORRECTION,
    SEED_TESTS,
    TESTS,
    check_test_data,
    holm,
    system_test,
)

_SEED_SUFFIX = re.compile(r"[-_.](seed|s)\d+$")


@dataclass
class PerProductRun:
    """One run's per-product values on one split: `values[metric]` is `[P]`, aligned with `product_ids`; its
    resolved config and seed from the `config.json` beside the file (None without one)."""

    path: Path
    split: str
    product_ids: list[str]
    values: dict[str, np.ndarray]
    config: dict | None = None
    seed: int | None = None


@dataclass
class SystemRow:
    seeds: int
    mean: dict[str, float]  # x100, mean over seeds of the split-level metric
    sd: dict[str, float]  # x100, sample sd over seeds (NaN with one seed)
    seed_list: list[int] | None = None  # the seeds of its runs (None when a run has no config.json)
    p_value: dict[str, float] = field(default_factory=dict)  # Holm-adjusted p against the reference; {} for it
    p_raw: dict[str, float] = field(default_factory=dict)  # the same before the adjustment


@dataclass
class Comparison:
    split: str
    products: int
    reference: str
    test: str  # one of mrhp.studies.stats.TESTS
    rows: dict[str, SystemRow]
    family: int = 0  # how many p-values the Holm adjustment counted


def per_product_name(split: str) -> str:
    """The name of a run folder's per-product file for `split`."""
    return f"{split}_per_product.jsonl"


def per_product_file(path: Path, split: str = "test") -> Path:
    """A per-product file, or a run folder's `per_product_name(split)`."""
    path = Path(path)
    if path.is_dir():
        candidate = path / per_product_name(split)
        if not candidate.is_file():
            found = ", ".join(sorted(p.name for p in path.glob("*.jsonl"))) or "no .jsonl file"
            raise MrhpError(f"{path}: no {candidate.name} in this run folder ({found}); name the file itself")
        return candidate
    if not path.is_file():
        raise MrhpError(f"per-product file not found: {path}")
    return path


def system_name(path: Path) -> str:
    """The system a run belongs to when no `--system` is given: the run folder's name (for a folder, or for a
    file named `*_per_product.jsonl` inside one), else the file's stem; a trailing seed suffix such as `-seed2`,
    `_s0` or `.seed1` is removed, so `runs/mcr-seed0` and `runs/mcr-seed1` are two seeds of `mcr`."""
    path = Path(path)
    name = path.name if path.is_dir() or path.suffix == "" else path.stem
    if path.is_file() and path.name.endswith("_per_product.jsonl"):
        name = path.parent.name
    return _SEED_SUFFIX.sub("", name)


def read_per_product(path: Path, split: str = "test") -> PerProductRun:
    """Read and check one per-product file (or run folder, see `per_product_file`)."""
    path = per_product_file(path, split)
    product_ids: list[str] = []
    values: dict[str, list[float]] = {metric: [] for metric in METRICS}
    splits: set[str] = set()
    seen: dict[str, int] = {}
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            record = parse_object_line(raw, path, number)
            if record is None:
                continue
            for key in ("product_id", "split", *METRICS):
                if key not in record:
                    raise DataError("missing (expected the output of mrhp evaluate --per-product)", file=path,
                                    line=number, field=key)
            product = str(record["product_id"])
            if product in seen:
                raise DataError(f"product {product!r} already on line {seen[product]}", file=path, line=number,
                                field="product_id")
            seen[product] = number
            if not isinstance(record["split"], str) or not record["split"]:
                raise DataError(f"expected the split's name, got {record['split']!r}", file=path, line=number,
                                field="split")
            splits.add(record["split"])
            for metric in METRICS:
                value = record[metric]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                    raise DataError(f"expected a number in [0, 1], got {value!r}", file=path, line=number, field=metric)
                values[metric].append(float(value))
            product_ids.append(product)
    if not product_ids:  # (one product is refused by the test that needs two: mrhp.studies.stats)
        raise DataError("no products: an empty per-product file", file=path)
    if len(splits) > 1:
        raise DataError(f"mixes splits {sorted(splits)}; one file per split", file=path, field="split")
    arrays = {metric: np.asarray(column) for metric, column in values.items()}
    config, seed = run_config(path)
    return PerProductRun(path=path, split=splits.pop(), product_ids=product_ids, values=arrays, config=config,
                         seed=seed)


def run_config(per_product: Path) -> tuple[dict | None, int | None]:
    """The resolved config (`config.json`, as `mrhp train` writes it into a run folder) beside a per-product file,
    and its `train.seed`; (None, None) when there is none."""
    path = Path(per_product).parent / "config.json"
    if not path.is_file():
        return None, None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 and bad JSON are ValueErrors
        raise DataError(f"not a readable run config ({exc})", file=path) from None
    train = config.get("train") if isinstance(config, dict) else None
    seed = train.get("seed") if isinstance(train, dict) else None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"expected a run config with an integer train.seed, got seed {seed!r}", file=path,
                        field="train.seed")
    return config, seed


def _aligned(run: PerProductRun, order: list[str], first: PerProductRun) -> dict[str, np.ndarray]:
    """The run's values in the product order of `first`, after checking both cover the same products."""
    mine, theirs = set(run.product_ids), set(order)
    if mine != theirs:
        missing, extra = sorted(theirs - mine), sorted(mine - theirs)
        parts = []
        if missing:
            parts.append(f"{len(missing)} products of {first.path} are missing (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} products are not in {first.path} (e.g. {', '.join(extra[:3])})")
        detail = "; ".join(parts)
        raise MrhpError(f"{run.path} does not cover the same products: {detail}")
    index = {product: row for row, product in enumerate(run.product_ids)}
    rows = np.asarray([index[product] for product in order])
    return {metric: run.values[metric][rows] for metric in METRICS}


def default_test(runs: dict[str, list[PerProductRun]]) -> str:
    """`min-f` when every system has 2 or more runs of known seed (it counts products and runs as samples), else
    `products-t` (with one run per system nothing can be said about seed-to-seed variation)."""
    known = all(len(members) > 1 and all(run.seed is not None for run in members) for members in runs.values())
    return "min-f" if known else "products-t"


def _seed_order(system: str, members: list[PerProductRun], test: str) -> list[int] | None:
    """The system's seeds in ascending order after checking each occurs once; None when a run has no config
    (allowed only for the tests over products, which average the runs without pairing them)."""
    missing = [run for run in members if run.seed is None]
    if missing:
        if test in SEED_TESTS:
            raise MrhpError(f"{missing[0].path}: no config.json beside it, so its seed is unknown; the {test} test "
                            "pairs runs by the seed of their config (give run folders, or --test products-t)")
        return None
    by_seed: dict[int, Path] = {}
    for run in members:
        if run.seed in by_seed:
            raise MrhpError(f"system {system!r}: {by_seed[run.seed]} and {run.path} are both runs of seed {run.seed}; "
                            "each seed may count once")
        by_seed[run.seed] = run.path
    return sorted(by_seed)


def compare_systems(runs: dict[str, list[PerProductRun]], reference: str, test: str | None = None) -> Comparison:
    """Mean +/- sd over seeds per system and metric, and `test` (`mrhp.studies.stats.TESTS`, default
    `default_test`) of each system against `reference` on its `[seeds, products]` values, runs paired by seed;
    the p-values Holm-adjusted over the whole table. `runs` maps a system name to its runs (one per seed)."""
    if any(not system_runs for system_runs in runs.values()):
        raise MrhpError("every system needs at least one per-product file")
    test = test or default_test(runs)
    if test not in TESTS:
        raise MrhpError(f"unknown test {test!r}; expected one of {', '.join(TESTS)}")
    if reference not in runs:
        raise MrhpError(f"unknown reference system {reference!r}; the systems are {', '.join(runs)}")
    first = next(iter(runs.values()))[0]
    for system_runs in runs.values():
        for run in system_runs:
            if run.split != first.split:
                raise MrhpError(f"{run.path} is on split {run.split!r} but {first.path} on split {first.split!r}")
    order = first.product_ids
    seeds = {system: _seed_order(system, members, test) for system, members in runs.items()}
    for system, seed_list in seeds.items():
        if seed_list is not None and seeds[reference] is not None and seed_list != seeds[reference]:
            raise MrhpError(f"system {system!r} ran under seeds {seed_list} but the reference {reference!r} under "
                            f"{seeds[reference]}; runs are paired by seed, so give both systems the same seeds")
    if len(runs) > 1:
        problem = check_test_data(test, min(len(members) for members in runs.values()), len(order))
        if problem:
            raise MrhpError(f"cannot test: {problem}")
    matrices: dict[str, dict[str, np.ndarray]] = {}  # system -> metric -> [S, P], rows in seed order
    rows: dict[str, SystemRow] = {}
    for system, system_runs in runs.items():
        if seeds[system] is not None:
            system_runs = sorted(system_runs, key=lambda run: run.seed)
        aligned = [_aligned(run, order, first) for run in system_runs]
        matrices[system] = {metric: np.stack([values[metric] for values in aligned]) for metric in METRICS}
        seed_means = {metric: 100.0 * matrices[system][metric].mean(axis=1) for metric in METRICS}  # [S]
        rows[system] = SystemRow(
            seeds=len(aligned),
            mean={metric: float(seed_means[metric].mean()) for metric in METRICS},
            sd={metric: float(seed_means[metric].std(ddof=1)) if len(aligned) > 1 else math.nan for metric in METRICS},
            seed_list=seeds[system],
        )
    if test not in SEED_TESTS:  # the unit is the product: each product's value averaged over the system's seeds
        matrices = {system: {metric: values.mean(axis=0, keepdims=True) for metric, values in by_metric.items()}
                    for system, by_metric in matrices.items()}  # [1, P] each
    tested = [(system, metric) for system in runs if system != reference for metric in METRICS]
    raw = [system_test(matrices[system][metric], matrices[reference][metric], test) for system, metric in tested]
    for (system, metric), p, adjusted in zip(tested, raw, holm(raw)):
        rows[system].p_raw[metric] = p
        rows[system].p_value[metric] = adjusted
    return Comparison(split=first.split, products=len(order), reference=reference, test=test, rows=rows,
                      family=len(tested))


def describe_test(comparison: Comparison) -> str:
    """One sentence naming the test, what it pairs and the correction, for the notes under a table."""
    return (f"p: {comparison.test} test, {TESTS[comparison.test]}, against {comparison.reference} per metric; "
            f"{CORRECTION}-adjusted over the {comparison.family} p-values of the table")


def format_comparison(comparison: Comparison) -> str:
    """The table: per system its seeds, mean +/- sd (x100) and the adjusted p-values against the reference, the
    test's name beside them."""
    name_width = max(len("system"), *(len(system) for system in comparison.rows)) + 2
    test_width = max(len("test"), len(comparison.test)) + 2

    def cell(row: SystemRow, metric: str) -> str:
        sd = "-" if math.isnan(row.sd[metric]) else f"{row.sd[metric]:.2f}"
        return f"{row.mean[metric]:6.2f} ± {sd:<5}"

    seeds = next(iter(comparison.rows.values())).seed_list
    lines = [
        f"split {comparison.split}, {comparison.products} products; mean ± sd over seeds (x100)"
        + (f", seeds {', '.join(map(str, seeds))}" if seeds is not None else ""),
        describe_test(comparison),
        f"{'system':<{name_width}}{'seeds':>5}  " + "".join(f"{m.upper():<16}" for m in METRICS)
        + f"{'test':>{test_width}}" + "".join(f"{'p ' + m.upper():>12}" for m in METRICS),
    ]
    lines.append("-" * len(lines[2]))
    for system, row in comparison.rows.items():
        p_values = (
            f"{comparison.test:>{test_width}}" + "".join(f"{row.p_value[m]:>12.3g}" for m in METRICS)
            if row.p_value else f"{'(reference)':>{test_width}}"
        )
        cells = "".join(f"{cell(row, m):<16}" for m in METRICS)
        lines.append(f"{system:<{name_width}}{row.seeds:>5}  {cells}{p_values}")
    return "\n".join(lines)


def same_file_key(path: Path) -> tuple[int, int]:
    """What identifies a file whatever path, symlink or hard link names it: its device and inode."""
    status = Path(path).stat()
    return status.st_dev, status.st_ino


def group_runs(paths: list[Path], systems: list[str], split: str = "test") -> dict[str, list[PerProductRun]]:
    """Read the runs of the command line: `paths` grouped by `system_name`, then `systems` items of the form
    `NAME=FILE_OR_RUN,FILE_OR_RUN,...` (one system each). Systems keep their order of first appearance."""
    runs: dict[str, list[PerProductRun]] = {}
    for path in paths:
        runs.setdefault(system_name(Path(path)), []).append(read_per_product(Path(path), split))
    for item in systems:
        name, sep, listed = item.partition("=")
        members = [Path(part) for part in listed.split(",") if part.strip()]
        if not sep or not name.strip() or not members:
            raise MrhpError(f"--system {item!r}: expected NAME=FILE_OR_RUN[,FILE_OR_RUN...]")
        if name.strip() in runs:
            raise MrhpError(f"--system {item!r}: system {name.strip()!r} is already given")
        runs[name.strip()] = [read_per_product(member, split) for member in members]
    if not runs:
        raise MrhpError("nothing to compare: give per-product files or run folders, or --system NAME=FILE,...")
    refuse_repeated_runs(runs)
    return runs


def refuse_repeated_runs(runs: dict[str, list[PerProductRun]]) -> None:
    """One file counted twice would pass for two seeds (and shrink every standard deviation): refuse a file given
    twice, also under another path, through a symlink or as a hard link."""
    given: dict[tuple[int, int], tuple[str, Path]] = {}
    for system, members in runs.items():
        for run in members:
            key = same_file_key(run.path)
            if key in given:
                other_system, other = given[key]
                raise MrhpError(f"{run.path} is given twice (as {other} of system {other_system!r} and in system "
                                f"{system!r}; the same file, path, symlink or hard link): each run may count once")
            given[key] = (system, run.path)
