"""The paper's tables from finished runs (`mrhp report`): one Markdown report with plots, from run folders of
several systems and seeds trained on one prepared dataset.

A run folder is what `mrhp train` + `mrhp evaluate --per-product` (or `mrhp.studies.experiment.run_system`) leave:
`best.safetensors` and `{split}_per_product.jsonl`. Runs are grouped into systems as `mrhp compare` groups them
(`mrhp.studies.compare.system_name`: the folder name without its `-seedN` suffix), and every number that `mrhp compare`
also prints comes from `mrhp.studies.compare.compare_systems` on the same files. What a system is comes from its
checkpoint's config: the model name, and for the paper's model which ablation switch is off.

* Tables 3-4: every system that is not an ablation, MAP / NDCG@3 / NDCG@5 mean ± sd over seeds (x100), in the
  paper's order (`PAPER_ORDER`), with the paired test against MCR over products.
* Table 5: the paper's model against MCR per metric: the paired test over products (each product's value averaged
  over seeds, as `mrhp compare`), the same test over product x seed pairs, and a paired t-test over seeds (the
  i-th seed of one system against the i-th of the other, runs in name order).
* Table 6: the paper's model and its ablations (`ABLATIONS`), with the difference to the full model.
* Tables 7-8 (paper section 4.7): distances between the max-pooled representations of the four components
  (`h^p, h^r, v^p, v^r`, the vectors of eqs. 30-31 the contrastive loss acts on; for MCR the same places,
  `MCR.modality_vectors`) of each test review: cosine distance `1 - cos` and L2, per pair of components where
  the review has both, averaged over the reviews of each label, then mean ± sd over seeds; grouped as the paper
  groups them (intra-modal, inter-modal, intra-review), and all six pairs.
* Table 1: a case study: the test product and two of its reviews with the largest label gap on which the paper's
  model (mean score over seeds) orders the pair correctly and MCR does not (else the largest gap), with the
  true levels and every system's mean score.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mrhp.config import Config
from mrhp.data.batching import (
    chunk_product_reviews,
    collate,
    pack_groups,
    split_item_lists,
)
from mrhp.data.prepared import PreparedDataset, PreparedSplit
from mrhp.errors import MrhpError
from mrhp.models.checkpoint import Checkpoint, load_checkpoint
from mrhp.objectives.losses import MODALITY_KEYS
from mrhp.objectives.metrics import METRICS, paired_test
from mrhp.outputs import write_atomically
from mrhp.scoring.evaluate import check_fits, score_split
from mrhp.studies.compare import (
    Comparison,
    PerProductRun,
    compare_systems,
    file_identity,
    read_per_product,
    system_name,
)

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
# Section 4.7's groups of the six component pairs (names as in losses.MODALITY_KEYS).
PT, RT, PI, RI = MODALITY_KEYS
DISTANCE_GROUPS = {
    "intra-modal": ((PT, RT), (PI, RI)),
    "inter-modal": ((PT, RI), (PI, RT)),
    "intra-review": ((PT, PI), (RT, RI)),
}
CASE_WORDS = 40  # words of each text shown in the case study


def ablation_of(config: Config) -> str | None:
    """Which of `ABLATIONS` a run of the paper's model is (None for the full model or a baseline)."""
    if config.model.name != PAPER_MODEL:
        return None
    switched = []
    if not config.model.use_interaction:
        switched.append("w/o cross-modal module")
    if config.loss.contrastive_weight == 0:
        switched.append("w/o contrastive objective")
    elif config.loss.weighting == "none":
        switched.append("w/o adaptive weighting")
    if len(switched) > 1:
        raise MrhpError(f"a run switches off several parts at once ({', '.join(switched)}); Table 6 takes one")
    return switched[0] if switched else None


@dataclass
class System:
    name: str  # the group name (run folder without -seedN)
    model: str  # config.model.name
    ablation: str | None
    runs: list[PerProductRun]
    checkpoints: list[Path]


def read_systems(paths: list[Path], split: str) -> dict[str, System]:
    """Group run folders into systems (as `mrhp compare`), each with its per-product files and checkpoints."""
    systems: dict[str, System] = {}
    seen: dict[tuple[int, int], Path] = {}
    for path in sorted(Path(p) for p in paths):
        if not path.is_dir():
            raise MrhpError(f"{path}: not a run folder (mrhp report reads run folders with best.safetensors)")
        identity = file_identity(path)  # one run through a symlink would pass for a second seed
        if identity in seen:
            raise MrhpError(f"{path} is the run {seen[identity]} given twice: each run may count once")
        seen[identity] = path
        checkpoint = path / "best.safetensors"
        config = load_checkpoint(checkpoint).config
        name = system_name(path)
        system = systems.setdefault(name, System(name, config.model.name, ablation_of(config), [], []))
        if (config.model.name, ablation_of(config)) != (system.model, system.ablation):
            raise MrhpError(f"{path}: a {config.model.name} run among the runs of {name} ({system.model})")
        system.runs.append(read_per_product(path, split))
        system.checkpoints.append(checkpoint)
    return systems


def _fmt(mean: float, sd: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {'-' if math.isnan(sd) else f'{sd:.{digits}f}'}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main_table(systems: dict[str, System]) -> tuple[Comparison, str]:
    """Tables 3-4: the systems that are not ablations, in the paper's order, tested against MCR."""
    main = sorted((s for s in systems.values() if s.ablation is None),
                  key=lambda s: (PAPER_ORDER.index(s.model), s.name))
    if not main:
        raise MrhpError("no run of a non-ablated system to tabulate")
    reference = next((s.name for s in main if s.model == MCR_NAME), main[0].name)
    comparison = compare_systems({s.name: s.runs for s in main}, reference=reference)
    rows = []
    for system in main:
        row = comparison.rows[system.name]
        p = "(reference)" if system.name == reference else ", ".join(f"{row.p_value[m]:.3g}" for m in METRICS)
        rows.append([system.name, str(row.seeds), *(_fmt(row.mean[m], row.sd[m]) for m in METRICS), p])
    header = ["system", "seeds", *(m.upper() for m in METRICS), f"p vs {reference} (MAP, N@3, N@5)"]
    return comparison, _table(header, rows)


def _seed_arrays(runs: list[PerProductRun], order: list[str]) -> list[dict[str, np.ndarray]]:
    out = []
    for run in runs:
        index = {product: i for i, product in enumerate(run.product_ids)}
        rows = np.asarray([index[product] for product in order])
        out.append({metric: run.values[metric][rows] for metric in METRICS})
    return out


def significance_table(systems: dict[str, System], comparison: Comparison) -> str:
    """Table 5: the paper's model against MCR per metric, over products, product x seed pairs and seeds."""
    ours = next((s for s in systems.values() if s.model == PAPER_MODEL and s.ablation is None), None)
    mcr = next((s for s in systems.values() if s.model == MCR_NAME), None)
    if ours is None or mcr is None:
        return "_needs runs of the paper's model and of MCR._"
    order = ours.runs[0].product_ids
    a, b = _seed_arrays(ours.runs, order), _seed_arrays(mcr.runs, order)
    pairs = min(len(a), len(b))
    rows = []
    for metric in METRICS:
        diff = comparison.rows[ours.name].mean[metric] - comparison.rows[mcr.name].mean[metric]
        over_products = paired_test(np.mean([x[metric] for x in a], axis=0), np.mean([x[metric] for x in b], axis=0))
        pooled = paired_test(np.concatenate([x[metric] for x in a[:pairs]]),
                             np.concatenate([x[metric] for x in b[:pairs]]))
        seeds = (paired_test([x[metric].mean() for x in a[:pairs]], [x[metric].mean() for x in b[:pairs]])
                 if pairs > 1 else math.nan)
        rows.append([metric.upper(), f"{diff:+.2f}", f"{over_products:.3g}", f"{pooled:.3g}",
                     "-" if math.isnan(seeds) else f"{seeds:.3g}"])
    header = ["metric", f"{ours.name} - {mcr.name} (x100)", f"p over {len(order)} products (seed means)",
              f"p over {len(order)} x {pairs} product-seed pairs", f"p over {pairs} seeds"]
    return _table(header, rows) + "\n\nAll p-values: two-sided paired t-tests (`mrhp.objectives.metrics.paired_test`)."


def ablation_table(systems: dict[str, System]) -> tuple[dict[str, dict], str]:
    """Table 6: the paper's model and its ablations, with the difference to the full model."""
    full = next((s for s in systems.values() if s.model == PAPER_MODEL and s.ablation is None), None)
    ablated = sorted((s for s in systems.values() if s.ablation is not None),
                     key=lambda s: ABLATION_ORDER.index(s.ablation))
    if full is None or not ablated:
        return {}, "_needs runs of the paper's model and of at least one ablation._"
    comparison = compare_systems({full.name: full.runs, **{s.name: s.runs for s in ablated}}, reference=full.name)
    rows = [[f"{full.name} (full)", str(comparison.rows[full.name].seeds),
             *(_fmt(comparison.rows[full.name].mean[m], comparison.rows[full.name].sd[m]) for m in METRICS), "", ""]]
    for system in ablated:
        row = comparison.rows[system.name]
        delta = ", ".join(f"{row.mean[m] - comparison.rows[full.name].mean[m]:+.2f}" for m in METRICS)
        rows.append([f"{system.name} ({system.ablation})", str(row.seeds),
                     *(_fmt(row.mean[m], row.sd[m]) for m in METRICS),
                     delta, ", ".join(f"{row.p_value[m]:.3g}" for m in METRICS)])
    header = ["system", "seeds", *(m.upper() for m in METRICS), "- full (MAP, N@3, N@5)", "p vs full"]
    return {name: vars(row) for name, row in comparison.rows.items()}, _table(header, rows)


@torch.no_grad()
def component_vectors(
    checkpoint: Checkpoint, split: PreparedSplit, feature_dim: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Per test review: the pooled component vectors {name: [N, d]}, their presence {name: [N]} and labels [N],
    in split order. The paper's model gives them in its output; MCR through `modality_vectors`."""
    model, data = checkpoint.model.eval(), checkpoint.config.data
    groups = chunk_product_reviews(split, data.max_list_size, rng=None)
    vectors: dict[str, list[torch.Tensor]] = {k: [] for k in MODALITY_KEYS}
    present: dict[str, list[torch.Tensor]] = {k: [] for k in MODALITY_KEYS}
    labels = []
    for packed in pack_groups(groups, data.eval_batch_rows):
        batch = collate(split_item_lists(split, packed), data.max_tokens, data.max_regions, feature_dim)
        if hasattr(model, "modality_vectors"):
            pooled, has = model.modality_vectors(batch)
        else:
            output = model(batch)
            pooled, has = output.pooled, output.present
        for key in MODALITY_KEYS:
            vectors[key].append(pooled[key].float())
            present[key].append(has[key])
        labels.append(batch.review_labels)
    return ({k: torch.cat(v) for k, v in vectors.items()}, {k: torch.cat(v) for k, v in present.items()},
            torch.cat(labels))


def distances(vectors: dict, present: dict, labels: torch.Tensor) -> dict[tuple[int, str, str], float]:
    """Mean cosine distance ("cs") and L2 ("l2") per label and pair (and per section 4.7 group, the mean over the
    reviews and both pairs of the group), over the reviews that have both components of a pair."""
    out: dict[tuple[int, str, str], float] = {}
    for label in sorted(set(labels.tolist())):
        rows = labels == label
        for group, pairs in DISTANCE_GROUPS.items():
            collected: dict[str, list[torch.Tensor]] = {"cs": [], "l2": []}
            for first, second in pairs:
                keep = rows & present[first] & present[second]
                a, b = vectors[first][keep], vectors[second][keep]
                cs = 1 - torch.nn.functional.cosine_similarity(a, b, dim=1)  # [n]
                l2 = (a - b).norm(dim=1)  # [n]
                pair = f"{first}-{second}"
                out[(label, pair, "cs")] = float(cs.mean()) if len(cs) else math.nan
                out[(label, pair, "l2")] = float(l2.mean()) if len(l2) else math.nan
                collected["cs"].append(cs)
                collected["l2"].append(l2)
            for kind, parts in collected.items():
                joined = torch.cat(parts)
                out[(label, group, kind)] = float(joined.mean()) if len(joined) else math.nan
    return out


def distance_tables(systems: dict[str, System], dataset: PreparedDataset, split: str) -> tuple[dict, str]:
    """Tables 7-8: the section 4.7 distances by label for MCR and the paper's model, mean ± sd over seeds."""
    chosen = [s for s in systems.values() if s.ablation is None and s.model in (MCR_NAME, PAPER_MODEL)]
    if not chosen:
        return {}, "_needs runs of MCR or of the paper's model._"
    results: dict[str, dict] = {}
    for system in sorted(chosen, key=lambda s: PAPER_ORDER.index(s.model)):
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


def case_study(systems: dict[str, System], dataset: PreparedDataset, split: str) -> str:
    """Table 1: one product, two of its reviews, their levels and every system's mean score over seeds."""
    test = dataset.split(split)
    main = sorted((s for s in systems.values() if s.ablation is None), key=lambda s: PAPER_ORDER.index(s.model))
    scores = {s.name: np.mean([score_split(c.model, test, c.config.data, dataset.feature_dim, progress=False)
                               for c in map(load_checkpoint, s.checkpoints)], axis=0) for s in main}
    ours = next((s.name for s in main if s.model == PAPER_MODEL), None)
    mcr = next((s.name for s in main if s.model == MCR_NAME), None)
    best, best_key = None, None
    for product in range(test.num_products):
        for i, j in itertools.combinations(test.reviews_of(product), 2):
            hi, lo = (i, j) if test.labels[i] > test.labels[j] else (j, i)
            gap = int(test.labels[hi] - test.labels[lo])
            if gap == 0:
                continue
            right = ours is not None and scores[ours][hi] > scores[ours][lo]
            wrong = mcr is not None and scores[mcr][hi] <= scores[mcr][lo]
            key = (right and wrong, right, gap, -product)
            if best_key is None or key > best_key:
                best, best_key = (product, hi, lo), key
    if best is None:
        return "_no test product has two reviews of different levels._"
    product, hi, lo = best
    vocab = dataset.vocab.tokens
    how = ("the paper's model orders them correctly and MCR does not" if best_key[0] else
           "the paper's model orders them correctly (MCR too)" if best_key[1] else "no system pair fits better")
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
    write_atomically(path, buffer.getvalue())


def write_report(paths: list[Path], data: Path, out: Path, split: str = "test", title: str | None = None) -> Path:
    """Write `out/report.md` (and its PNG plots) from the run folders `paths` on the prepared dataset `data`."""
    dataset = PreparedDataset.open(data)
    systems = read_systems(paths, split)
    _check_runs_fit(systems, dataset, split)
    out.mkdir(parents=True, exist_ok=True)
    comparison, main = main_table(systems)
    ablations, ablation_text = ablation_table(systems)
    distance_results, distance_text = distance_tables(systems, dataset, split)
    plots = _plots(out, comparison, ablations, distance_results)
    runs = "\n".join(f"* {s.name}: {', '.join(str(c.parent) for c in s.checkpoints)}" for s in systems.values())
    sections = [
        f"# {title or 'The paper' + chr(39) + 's tables'}",
        f"Prepared dataset `{data}`, split `{split}`, {comparison.products} products. Metrics x100, mean ± sd over "
        "seeds; every system selected on dev by its own run.\n\nRuns:\n\n" + runs,
        "## Tables 3-4: systems\n\n" + main
        + f"\n\np: paired t-tests against {comparison.reference} over products (each product's value averaged over "
        "a system's seeds), exactly as `mrhp compare`.",
        "## Table 5: significance of the paper's model against MCR\n\n" + significance_table(systems, comparison),
        "## Table 6: ablations\n\n" + ablation_text,
        "## Tables 7-8: distances between components, by label\n\n"
        "Cosine distance (CS, `1 - cos`) and L2 between the max-pooled component vectors of each review (paper "
        "section 4.7), averaged over the reviews of a label that have both components, mean ± sd over seeds; n/a "
        "where no review of the label has both (a set without images has only the product text - review text "
        "pair).\n\n"
        + distance_text,
        "## Table 1: case study\n\n" + case_study(systems, dataset, split),
    ]
    if plots:
        sections.append("## Plots\n\n" + "\n\n".join(f"![{name}]({name})" for name in plots))
    path = out / "report.md"
    write_atomically(path, "\n\n".join(sections) + "\n")
    log.info("wrote %s", path)
    return path
