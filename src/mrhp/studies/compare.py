"""Comparing systems from their per-product metric files, like the paper's Tables 3-5 (SPEC 5, "Significance").

Input: files written by `mrhp evaluate --per-product FILE` (one JSON object per line: `product_id`, `split`,
`map`, `ndcg@3`, `ndcg@5`, values in [0, 1]), or run folders holding `{split}_per_product.jsonl`. Several files
of one system are runs with different seeds. Output, per system: the mean and sample standard deviation over
its seeds of each metric (x100), and a paired test of the system against a reference system per metric, over
the products of the split. With several seeds, each product's value is first averaged over the system's seeds,
so the test pairs one number per product and system (the sd column carries the seed-to-seed variation).

Every file must cover exactly the same products of the same split; anything else is an error that names the
file and the products that differ.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mrhp.data.records import parse_object_line
from mrhp.errors import DataError, MrhpError
from mrhp.objectives.metrics import METRICS, PAIRED_TESTS, paired_test

_SEED_SUFFIX = re.compile(r"[-_.](seed|s)\d+$")


@dataclass
class PerProductRun:
    """One run's per-product values on one split: `values[metric]` is `[P]`, aligned with `product_ids`."""

    path: Path
    split: str
    product_ids: list[str]
    values: dict[str, np.ndarray]


@dataclass
class SystemRow:
    seeds: int
    mean: dict[str, float]  # x100, mean over seeds of the split-level metric
    sd: dict[str, float]  # x100, sample sd over seeds (NaN with one seed)
    p_value: dict[str, float] = field(default_factory=dict)  # paired test against the reference; {} for it


@dataclass
class Comparison:
    split: str
    products: int
    reference: str
    test: str
    rows: dict[str, SystemRow]


def per_product_name(split: str) -> str:
    """The name of a run folder's per-product file for `split`."""
    return f"{split}_per_product.jsonl"


def file_identity(path: Path) -> tuple[int, int]:
    """(device, inode): the same for every name of one file or folder (symlinks and hard links included)."""
    info = os.stat(path)
    return info.st_dev, info.st_ino


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
            if not isinstance(record["split"], str):
                raise DataError(f"expected a split name, got {record['split']!r}", file=path, line=number,
                                field="split")
            splits.add(record["split"])
            for metric in METRICS:
                value = record[metric]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                    raise DataError(f"expected a number in [0, 1], got {value!r}", file=path, line=number, field=metric)
                values[metric].append(float(value))
            product_ids.append(product)
    if len(product_ids) < 2:  # a paired test over products needs two of them
        raise DataError(f"{len(product_ids) or 'no'} product{'s' if not product_ids else ''}: a comparison needs at "
                        "least 2", file=path)
    if len(splits) > 1:
        raise DataError(f"mixes splits {sorted(splits)}; one file per split", file=path, field="split")
    arrays = {metric: np.asarray(column) for metric, column in values.items()}
    return PerProductRun(path=path, split=splits.pop(), product_ids=product_ids, values=arrays)


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


def compare_systems(runs: dict[str, list[PerProductRun]], reference: str, test: str = "t") -> Comparison:
    """Mean +/- sd over seeds per system and metric, and a paired `test` of each system against `reference`
    on per-product values averaged over seeds. `runs` maps a system name to its runs (one per seed)."""
    if test not in PAIRED_TESTS:
        raise MrhpError(f"unknown test {test!r}; expected one of {PAIRED_TESTS}")
    if reference not in runs:
        raise MrhpError(f"unknown reference system {reference!r}; the systems are {', '.join(runs)}")
    if any(not system_runs for system_runs in runs.values()):
        raise MrhpError("every system needs at least one per-product file")
    first = next(iter(runs.values()))[0]
    for system_runs in runs.values():
        for run in system_runs:
            if run.split != first.split:
                raise MrhpError(f"{run.path} is on split {run.split!r} but {first.path} on split {first.split!r}")
    order = first.product_ids
    averaged: dict[str, dict[str, np.ndarray]] = {}
    rows: dict[str, SystemRow] = {}
    for system, system_runs in runs.items():
        aligned = [_aligned(run, order, first) for run in system_runs]
        seed_means = {metric: np.asarray([100.0 * values[metric].mean() for values in aligned]) for metric in METRICS}
        rows[system] = SystemRow(
            seeds=len(aligned),
            mean={metric: float(seed_means[metric].mean()) for metric in METRICS},
            sd={metric: float(seed_means[metric].std(ddof=1)) if len(aligned) > 1 else math.nan for metric in METRICS},
        )
        averaged[system] = {metric: np.mean([values[metric] for values in aligned], axis=0) for metric in METRICS}
    for system, row in rows.items():
        if system != reference:
            row.p_value = {
                metric: paired_test(averaged[system][metric], averaged[reference][metric], method=test)
                for metric in METRICS
            }
    return Comparison(split=first.split, products=len(order), reference=reference, test=test, rows=rows)


def format_comparison(comparison: Comparison) -> str:
    """The table: per system its seeds, mean +/- sd (x100) and the p-values against the reference."""
    name_width = max(len("system"), *(len(system) for system in comparison.rows)) + 2

    def cell(row: SystemRow, metric: str) -> str:
        sd = "-" if math.isnan(row.sd[metric]) else f"{row.sd[metric]:.2f}"
        return f"{row.mean[metric]:6.2f} ± {sd:<5}"

    test_name = {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test", "randomization": "randomization test"}
    lines = [
        f"split {comparison.split}, {comparison.products} products; mean ± sd over seeds (x100); "
        f"p: {test_name[comparison.test]} against {comparison.reference} per metric, over products "
        "(each product's value averaged over a system's seeds)",
        f"{'system':<{name_width}}{'seeds':>5}  " + "".join(f"{m.upper():<16}" for m in METRICS)
        + "".join(f"{'p ' + m.upper():>12}" for m in METRICS),
    ]
    lines.append("-" * len(lines[1]))
    for system, row in comparison.rows.items():
        p_values = (
            "".join(f"{row.p_value[m]:>12.3g}" for m in METRICS) if row.p_value else f"{'(reference)':>12}"
        )
        cells = "".join(f"{cell(row, m):<16}" for m in METRICS)
        lines.append(f"{system:<{name_width}}{row.seeds:>5}  {cells}{p_values}")
    return "\n".join(lines)


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
    # One file counted twice would pass for two seeds (and shrink every standard deviation).
    given: dict[tuple[int, int], str] = {}
    for system, members in runs.items():
        for run in members:
            identity = file_identity(run.path)  # also through a symlink or a hard link
            if identity in given:
                raise MrhpError(f"{run.path} is given twice (system {given[identity]!r} and {system!r}): each run "
                                "may count once")
            given[identity] = system
    return runs
