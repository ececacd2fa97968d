"""The paper's tables from finished runs (`mrhp report`): one Markdown report with plots, from run folders of
several systems and seeds trained on one prepared dataset.

A run folder is what `mrhp train` + `mrhp evaluate --per-product` (or `mrhp.studies.experiment.run_system`) leave:
`config.json`, `best.safetensors` and `{split}_per_product.jsonl`. Runs are grouped into systems as `mrhp compare`
groups them (`mrhp.studies.compare.system_name`: the folder name without its `-seedN` suffix), paired by the seed in
their `config.json`, and every number that `mrhp compare` also prints comes from
`mrhp.studies.compare.compare_systems` on the same files. Two systems have a role, named explicitly where more
than one system could take it: the paper's model ("ours", `--reference`; by default the only system running the
paper's model) and the baseline of Tables 3-5 (`--baseline`; by default the only MCR system). Every other system
running the paper's model is a variant of the reference, named by every resolved setting in which its config
differs from the reference's (`variant_label`; `RUN_SETTINGS` such as the seed excepted).

Statistics (`mrhp.studies.stats`): with 2 or more seeds the tests of Tables 3-4 and 6 are Clark's min F', which
takes both the products and the runs (seeds) as samples; with one seed, the paired t-test over products. Every
table's p-values are adjusted by Holm's method over that table (21 in Tables 3-4 with the paper's eight systems,
9 in Table 5), and the test's name stands beside them.

* Tables 3-4: the reference and every system of another model, MAP / NDCG@3 / NDCG@5 mean ± sd over seeds
  (x100), in the paper's order (`PAPER_ORDER`), tested against the baseline.
* Table 5: the reference against the baseline per metric, by the three tests of `TABLE5_TESTS`: over products
  (each product's value averaged over seeds), over seeds (paired by seed) and min F' (both).
* Table 6: the reference and its variants (the paper's ablations, `ABLATIONS`, by their paper names), with the
  difference to the reference and the test against it.
* Tables 7-8 (paper section 4.7): distances between the max-pooled representations of the four components
  (`h^p, h^r, v^p, v^r`, the vectors of eqs. 30-31 the contrastive loss acts on; for MCR the same places,
  `MCR.modality_vectors`) of each test review: cosine distance `1 - cos` and L2, per pair of components where
  the review has both, averaged over the reviews of each label, then mean ± sd over seeds; grouped as the paper
  groups them (intra-modal, inter-modal, intra-review), and all six pairs; for the baseline and the reference.
* Table 1: a case study: the test product and two of its reviews with the largest label gap on which the
  reference (mean score over seeds) orders the pair correctly and the baseline does not (else the largest gap),
  with the true levels and the mean score of every system of Tables 3-4.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrhp.data.prepared import PreparedDataset, PreparedSplit
from mrhp.errors import MrhpError
from mrhp.models.checkpoint import load_checkpoint
from mrhp.objectives.metrics import METRICS
from mrhp.outputs import write_atomic, write_text_atomic
from mrhp.scoring.evaluate import check_fits, score_split
from mrhp.studies.compare import (
    Comparison,
    PerProductRun,
    compare_systems,
    describe_test,
    group_runs,
)
from mrhp.studies.distances import DISTANCE_GROUPS, component_vectors, distances
from mrhp.studies.stats import CORRECTION, SEED_TESTS, TESTS, holm

log = logging.getLogger(__name__)

PAPER_MODEL, MCR_NAME = "mrhp", "mcr"
# Tables 3-4 list the text-only systems first, then the multimodal ones, the paper's model last.
PAPER_ORDER = ("bimpm", "eg-cnn", "conv-knrm", "prh-net", "sse-cross", "dr-net", "mcr", "mrhp")
# Table 6: each ablation of the paper's model and the settings that make it (README "Training", Ablations).
ABLATIONS = {
    "w/o adaptive weighting": {"loss": {"weighting": "none"}},
    "w/o contrastive objective": {"loss": {"contrastive_weight": 0.0}},
    "w/o cross-modal module": {"model": {"use_interaction": False}},
}
ABLATION_ORDER = tuple(ABLATIONS)
# Settings that say how a run was executed, not which system it is: the runs of one system may differ in them.
RUN_SETTINGS = ("train.seed", "train.threads", "train.device", "train.loader_workers", "data.eval_batch_rows")
# Table 5's tests, in its column order (names of mrhp.studies.stats.TESTS).
TABLE5_TESTS = ("products-t", "seeds-t", "min-f")
CASE_WORDS = 40  # words of each text shown in the case study


def settings(config: dict) -> dict[str, object]:
    """A resolved config (`Config.to_dict()`, or a run's config.json) as `{"section.key": value}`, without
    `RUN_SETTINGS`."""
    flat = {f"{section}.{key}": value for section, values in config.items() if isinstance(values, dict)
            for key, value in values.items()}
    return {key: value for key, value in flat.items() if key not in RUN_SETTINGS}


def differences(config: dict, reference: dict) -> dict[str, object]:
    """Every setting (of `settings`) in which `config` differs from `reference`, with `config`'s value."""
    mine, theirs = settings(config), settings(reference)
    return {key: mine.get(key) for key in sorted(mine.keys() | theirs.keys()) if mine.get(key) != theirs.get(key)}


def variant_label(config: dict, reference: dict) -> str:
    """What makes a run of the paper's model differ from the reference: every differing setting as `key=value`,
    led by the paper's name where the differences are exactly one of `ABLATIONS`; "" when there is none."""
    changed = differences(config, reference)
    listed = ", ".join(f"{key}={value}" for key, value in changed.items())
    for label, overrides in ABLATIONS.items():
        if changed and changed == settings(overrides):
            return f"{label}: {listed}"
    return listed


@dataclass
class System:
    name: str  # the group name (run folder without -seedN)
    model: str  # config.model.name
    config: dict  # the resolved config of its runs (the first run's config.json)
    runs: list[PerProductRun]
    checkpoints: list[Path]


@dataclass
class Roles:
    reference: System  # "ours": the paper's model whose variants Table 6 lists
    baseline: System | None  # what Tables 3-5 test against (MCR); None without a run of MCR
    main: list[System]  # Tables 3-4: the reference and every system of another model, in the paper's order
    variants: list[tuple[System, str]]  # Table 6: each other system of the paper's model, its `variant_label`


def read_systems(paths: list[Path], split: str) -> dict[str, System]:
    """Group run folders into systems (as `mrhp compare`, with its checks), each with its per-product files,
    checkpoints and config; the runs of one system must have the same config but for `RUN_SETTINGS`."""
    for path in paths:
        if not Path(path).is_dir() or not (Path(path) / "best.safetensors").is_file():
            raise MrhpError(f"{path}: not a run folder (mrhp report reads run folders with best.safetensors)")
    systems: dict[str, System] = {}
    for name, runs in group_runs(sorted(Path(p) for p in paths), [], split).items():
        for run in runs:
            if run.config is None:
                raise MrhpError(f"{run.path.parent}: no config.json (mrhp train writes one into every run folder)")
            changed = differences(run.config, runs[0].config)
            if changed:
                raise MrhpError(f"{run.path.parent} and {runs[0].path.parent} are grouped as system {name!r} but "
                                f"their configs differ in {', '.join(changed)}; name the folders apart")
        model = str(settings(runs[0].config).get("model.name"))
        systems[name] = System(name, model, runs[0].config, runs, [run.path.parent / "best.safetensors" for run in runs])
    return systems


def _named(systems: dict[str, System], name: str | None, candidates: list[System], role: str,
           option: str) -> System | None:
    if name is not None:
        if name not in systems:
            raise MrhpError(f"{option} {name!r} is not one of the systems ({', '.join(systems)})")
        return systems[name]
    if len(candidates) > 1:
        raise MrhpError(f"several systems could be {role} ({', '.join(s.name for s in candidates)}): name it with "
                        f"{option}")
    return candidates[0] if candidates else None


def assign_roles(systems: dict[str, System], reference: str | None = None, baseline: str | None = None) -> Roles:
    """The reference (the only system running the paper's model unless named), the baseline (the only MCR system
    unless named), the systems of Tables 3-4 and the variants of Table 6."""
    ours = _named(systems, reference, [s for s in systems.values() if s.model == PAPER_MODEL],
                  "the paper's full model", "--reference")
    if ours is None or ours.model != PAPER_MODEL:
        raise MrhpError(f"--reference names the paper's full model, and {ours.name!r} runs {ours.model}" if ours else
                        f"no run of the paper's model ({PAPER_MODEL}) to report on")
    other = _named(systems, baseline, [s for s in systems.values() if s.model == MCR_NAME], "the baseline",
                   "--baseline")
    if other is ours:
        raise MrhpError(f"--baseline and --reference name the same system {ours.name!r}")
    main = [ours, *(s for s in systems.values() if s.model != PAPER_MODEL)]
    if other is not None and other not in main:
        main.append(other)
    main.sort(key=lambda s: (PAPER_ORDER.index(s.model), s is ours, s.name))
    variants = []
    for system in systems.values():
        if system.model == PAPER_MODEL and system is not ours and system is not other:
            label = variant_label(system.config, ours.config)
            if not label:
                raise MrhpError(f"system {system.name!r} has the same config as the reference {ours.name!r} (but for "
                                f"{', '.join(RUN_SETTINGS)}): give its runs as runs of {ours.name!r}")
            variants.append((system, label))
    variants.sort(key=lambda item: (_ablation_rank(item[1]), item[0].name))
    return Roles(ours, other, main, variants)


def _fmt(mean: float, sd: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {'-' if math.isnan(sd) else f'{sd:.{digits}f}'}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _p_cell(comparison: Comparison, system: str) -> str:
    row = comparison.rows[system]
    return ", ".join(f"{row.p_value[m]:.3g}" for m in METRICS)


def main_table(roles: Roles) -> tuple[Comparison, str]:
    """Tables 3-4: the reference and the systems of other models, in the paper's order, tested against the
    baseline (the reference without one)."""
    against = roles.baseline or roles.reference
    comparison = compare_systems({s.name: s.runs for s in roles.main}, reference=against.name)
    rows = []
    for system in roles.main:
        row = comparison.rows[system.name]
        tested = ["(reference)", ""] if system is against else [comparison.test, _p_cell(comparison, system.name)]
        rows.append([system.name, str(row.seeds), *(_fmt(row.mean[m], row.sd[m]) for m in METRICS), *tested])
    header = ["system", "seeds", *(m.upper() for m in METRICS), "test",
              f"p vs {against.name}, {CORRECTION} (MAP, N@3, N@5)"]
    return comparison, _table(header, rows) + "\n\n" + describe_test(comparison) + "."


def significance_table(roles: Roles) -> str:
    """Table 5: the reference against the baseline per metric, by each test of `TABLE5_TESTS` that the seeds
    allow, all p-values Holm-adjusted together."""
    ours, other = roles.reference, roles.baseline
    if other is None:
        return "_needs runs of MCR (or a system named by --baseline)._"
    pair = {ours.name: ours.runs, other.name: other.runs}
    seeds = min(len(ours.runs), len(other.runs))
    tests = [test for test in TABLE5_TESTS if seeds > 1 or test not in SEED_TESTS]
    comparisons = {test: compare_systems(pair, reference=other.name, test=test) for test in tests}
    raw = [comparisons[test].rows[ours.name].p_raw[metric] for metric in METRICS for test in tests]
    adjusted = iter(holm(raw))
    first = comparisons[tests[0]]
    rows = []
    for metric in METRICS:
        diff = first.rows[ours.name].mean[metric] - first.rows[other.name].mean[metric]
        rows.append([metric.upper(), f"{diff:+.2f}", *(f"{next(adjusted):.3g}" for _ in tests)])
    header = ["metric", f"{ours.name} - {other.name} (x100)",
              *(f"p {test} ({CORRECTION})" for test in tests)]
    seed_list = ", ".join(map(str, first.rows[ours.name].seed_list or []))
    notes = [(f"{first.products} products, seeds {seed_list}; p-values {CORRECTION}-adjusted over the {len(raw)} "
              "of this table. Tests (`mrhp.studies.stats`):")]
    notes += [f"* {test}: {TESTS[test]}" for test in tests]
    if seeds < 2:
        notes.append("* one seed: nothing can be said about seed-to-seed variation (no seeds-t, no min-f).")
    return _table(header, rows) + "\n\n" + "\n".join(notes)


def ablation_table(roles: Roles) -> tuple[dict[str, dict], str]:
    """Table 6: the reference and its variants, with the difference to the reference and the test against it."""
    full = roles.reference
    if not roles.variants:
        return {}, "_needs runs of at least one variant of the paper's model (such as an ablation)._"
    comparison = compare_systems({full.name: full.runs, **{s.name: s.runs for s, _ in roles.variants}},
                                 reference=full.name)
    reference_row = comparison.rows[full.name]
    rows = [[f"{full.name} (reference)", str(reference_row.seeds),
             *(_fmt(reference_row.mean[m], reference_row.sd[m]) for m in METRICS), "", "(reference)", ""]]
    for system, label in roles.variants:
        row = comparison.rows[system.name]
        delta = ", ".join(f"{row.mean[m] - reference_row.mean[m]:+.2f}" for m in METRICS)
        rows.append([f"{system.name} ({label})", str(row.seeds), *(_fmt(row.mean[m], row.sd[m]) for m in METRICS),
                     delta, comparison.test, _p_cell(comparison, system.name)])
    header = ["system", "seeds", *(m.upper() for m in METRICS), f"- {full.name} (MAP, N@3, N@5)", "test",
              f"p vs {full.name}, {CORRECTION} (MAP, N@3, N@5)"]
    text = (_table(header, rows) + "\n\nEach variant is named by every setting of its config that differs from "
            f"{full.name}'s (the paper's name first for its ablations). " + describe_test(comparison) + ".")
    return {name: vars(row) for name, row in comparison.rows.items()}, text


def _ablation_rank(label: str) -> int:
    """The paper's ablations first, in its order, then the other variants."""
    return next((k for k, name in enumerate(ABLATION_ORDER) if label.startswith(name + ":")), len(ABLATION_ORDER))


def distance_tables(roles: Roles, dataset: PreparedDataset, split: str) -> tuple[dict, str]:
    """Tables 7-8: the section 4.7 distances by label for the baseline and the reference, mean ± sd over seeds."""
    results: dict[str, dict] = {}
    for system in (s for s in (roles.baseline, roles.reference) if s is not None):
        per_seed = [distances(*component_vectors(load_checkpoint(path), dataset.split(split), dataset.feature_dim))
                    for path in system.checkpoints]
        results[system.name] = {
            key: (float(np.mean([d[key] for d in per_seed])),
                  float(np.std([d[key] for d in per_seed], ddof=1)) if len(per_seed) > 1 else math.nan)
            for key in per_seed[0]
        }
    labels = sorted({key[0] for values in results.values() for key in values})
    grouped, detailed = [], []
    for label in labels:
        for name, values in results.items():
            grouped.append([str(label), name,
                            *(_fmt(*values[(label, g, k)], 3) for g in DISTANCE_GROUPS for k in ("cs", "l2"))])
            pairs = [f"{a}-{b}" for g in DISTANCE_GROUPS.values() for a, b in g]
            detailed.append([str(label), name, *(_fmt(*values[(label, p, "cs")], 3) for p in pairs)])
    header = ["label", "system", *(f"{g} {k.upper()}" for g in DISTANCE_GROUPS for k in ("cs", "l2"))]
    pairs = [f"{a}-{b}" for g in DISTANCE_GROUPS.values() for a, b in g]
    text = (_table(header, grouped) + "\n\nCosine distance of each of the six pairs (mean ± sd over seeds):\n\n"
            + _table(["label", "system", *pairs], detailed))
    return results, text


def _words(tokens: np.ndarray, vocab: list[str]) -> str:
    words = [vocab[t] for t in tokens[:CASE_WORDS]]
    return " ".join(words) + (" ..." if len(tokens) > CASE_WORDS else "")


def case_pair(split: PreparedSplit, ours: np.ndarray, baseline: np.ndarray | None) -> tuple[int, int, int, str] | None:
    """Table 1's pair: over the split's products and their pairs of reviews of different labels, the pair that
    `ours` (scores per review, in split order) orders correctly and `baseline` does not, else one `ours` orders
    correctly, else any; among those the largest label gap, then the first product. Returns (product, review of
    the higher label, review of the lower label, how it was chosen), or None without such a pair."""
    best, best_key = None, None
    for product in range(split.num_products):
        for i, j in itertools.combinations(split.reviews_of(product), 2):
            hi, lo = (i, j) if split.labels[i] > split.labels[j] else (j, i)
            gap = int(split.labels[hi] - split.labels[lo])
            if gap == 0:
                continue
            right = bool(ours[hi] > ours[lo])
            wrong = baseline is not None and bool(baseline[hi] <= baseline[lo])
            key = (right and wrong, right, gap, -product)
            if best_key is None or key > best_key:
                best, best_key = (product, hi, lo), key
    if best is None:
        return None
    how = ("the reference orders them correctly and the baseline does not" if best_key[0] else
           "the reference orders them correctly" if best_key[1] else "no system pair fits better")
    return (*best, how)


def case_study(roles: Roles, dataset: PreparedDataset, split: str) -> str:
    """Table 1: one product, two of its reviews, their levels and the mean score over seeds of every system of
    Tables 3-4."""
    test = dataset.split(split)
    scores = {s.name: np.mean([score_split(c.model, test, c.config.data, dataset.feature_dim, progress=False)
                               for c in map(load_checkpoint, s.checkpoints)], axis=0) for s in roles.main}
    chosen = case_pair(test, scores[roles.reference.name],
                       scores[roles.baseline.name] if roles.baseline is not None else None)
    if chosen is None:
        return "_no test product has two reviews of different levels._"
    product, hi, lo, how = chosen
    vocab = dataset.vocab.tokens
    lines = [f"Product `{test.product_ids[product]}` (largest label gap among the pairs where {how}):", "",
             f"> {_words(test.product_tokens(product), vocab)}", ""]
    for tag, review in (("Review 1", hi), ("Review 2", lo)):
        lines += [f"**{tag}** (`{test.review_ids[review]}`): {_words(test.review_tokens(review), vocab)}", ""]
    rows = [["label", str(int(test.labels[hi])), str(int(test.labels[lo]))]]
    rows += [[f"{name} score", f"{values[hi]:.3f}", f"{values[lo]:.3f}"] for name, values in scores.items()]
    return "\n".join(lines) + "\n" + _table(["", "Review 1", "Review 2"], rows)


def _plots(out: Path, comparison: Comparison, ablations: dict, distance_results: dict) -> list[str]:
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'mrhp[floors]'): the report has no plots")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def bars(name: str, rows: dict[str, tuple[dict, dict]], title: str) -> None:
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 3.5))
        width = 0.8 / len(METRICS)
        for k, metric in enumerate(METRICS):
            x = np.arange(len(rows)) + k * width
            ax.bar(x, [r[0][metric] for r in rows.values()], width, label=metric.upper(), capsize=2,
                   yerr=[np.nan_to_num(r[1][metric]) for r in rows.values()])
        ax.set_xticks(np.arange(len(rows)) + width * (len(METRICS) - 1) / 2, list(rows), rotation=30, ha="right")
        ax.set_ylabel("x100 (mean ± sd over seeds)")
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        _save_figure(fig, out / name)
        plt.close(fig)
        written.append(name)

    bars("systems.png", {n: (r.mean, r.sd) for n, r in comparison.rows.items()}, "Tables 3-4")
    if ablations:
        bars("ablations.png", {n: (r["mean"], r["sd"]) for n, r in ablations.items()}, "Table 6")
    if distance_results:
        labels = sorted({key[0] for values in distance_results.values() for key in values})
        fig, axes = plt.subplots(1, len(DISTANCE_GROUPS), figsize=(11, 3.2), sharey=True)
        for ax, group in zip(np.atleast_1d(axes), DISTANCE_GROUPS):
            for name, values in distance_results.items():
                ax.errorbar(labels, [values[(y, group, "cs")][0] for y in labels],
                            yerr=[np.nan_to_num(values[(y, group, "cs")][1]) for y in labels], marker="o", label=name)
            ax.set_title(f"{group} cosine distance")
            ax.set_xlabel("helpfulness label")
        np.atleast_1d(axes)[0].legend(fontsize=8)
        fig.tight_layout()
        _save_figure(fig, out / "distances.png")
        plt.close(fig)
        written.append("distances.png")
    return written


def _check_runs_fit(systems: dict[str, System], dataset: PreparedDataset, split: str) -> None:
    """Every run was trained on `dataset` (vocabulary, image width, text states) and evaluated on its `split`."""
    products = set(dataset.split(split).product_ids)
    for system in systems.values():
        for checkpoint, run in zip(system.checkpoints, system.runs):
            check_fits(load_checkpoint(checkpoint), dataset)
            missing = [product for product in run.product_ids if product not in products]
            if missing:
                raise MrhpError(f"{run.path}: {len(missing)} products are not in split {split!r} of {dataset.path} "
                                f"(e.g. {', '.join(missing[:3])}): give the dataset the run was evaluated on")


def _save_figure(fig, path: Path) -> None:
    """A plot as PNG, written atomically (a full disk leaves no empty file)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=120, format="png")
    data = buffer.getvalue()
    write_atomic(path, lambda temporary: temporary.write_bytes(data))


def write_report(paths: list[Path], data: Path, out: Path, split: str = "test", title: str | None = None,
                 reference: str | None = None, baseline: str | None = None) -> Path:
    """Write `out/report.md` (and its PNG plots) from the run folders `paths` on the prepared dataset `data`;
    `reference` and `baseline` name the systems of those roles (`assign_roles`)."""
    dataset = PreparedDataset.open(data)
    systems = read_systems(paths, split)
    _check_runs_fit(systems, dataset, split)
    roles = assign_roles(systems, reference, baseline)
    comparison, main = main_table(roles)
    table5 = significance_table(roles)
    ablations, ablation_text = ablation_table(roles)
    out.mkdir(parents=True, exist_ok=True)
    distance_results, distance_text = distance_tables(roles, dataset, split)
    plots = _plots(out, comparison, ablations, distance_results)
    runs = "\n".join(f"* {s.name}: {', '.join(str(c.parent) for c in s.checkpoints)}" for s in systems.values())
    against = roles.baseline or roles.reference
    sections = [
        f"# {title or 'The paper' + chr(39) + 's tables'}",
        f"Prepared dataset `{data}`, split `{split}`, {comparison.products} products. Metrics x100, mean ± sd over "
        f"seeds; every system selected on dev by its own run. Reference (the paper's model): `{roles.reference.name}`"
        f"; baseline: `{against.name}`.\n\nRuns:\n\n" + runs,
        "## Tables 3-4: systems\n\n" + main,
        f"## Table 5: significance of {roles.reference.name} against {against.name}\n\n" + table5,
        "## Table 6: ablations and other variants of the paper's model\n\n" + ablation_text,
        "## Tables 7-8: distances between components, by label\n\n"
        "Cosine distance (CS, `1 - cos`) and L2 between the max-pooled component vectors of each review (paper "
        "section 4.7), averaged over the reviews of a label that have both components, mean ± sd over seeds; n/a "
        "where no review of the label has both (a set without images has only the product text - review text "
        "pair).\n\n"
        + distance_text,
        "## Table 1: case study\n\n" + case_study(roles, dataset, split),
    ]
    if plots:
        sections.append("## Plots\n\n" + "\n\n".join(f"![{name}]({name})" for name in plots))
    path = out / "report.md"
    write_text_atomic(path, "\n\n".join(sections) + "\n")
    log.info("wrote %s", path)
    return path
