"""`mrhp report`: Tables 3-6 against hand-computed values from tiny per-product runs (no training), the naming of
variants by every setting that differs, the roles named explicitly, the case study's choice and the section 4.7
distances by hand; and, from two tiny trained runs per system, every table present, the numbers of Tables 3-4
equal to those `mrhp compare` prints, and Tables 7-8 and Table 1 equal to what their parts compute."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from support import prepare_tiny_dataset

from mrhp.cli import main
from mrhp.config import MODEL_NAMES, Config, apply_overrides
from mrhp.data.prepared import PreparedDataset
from mrhp.errors import MrhpError
from mrhp.models.checkpoint import load_checkpoint
from mrhp.scoring.evaluate import score_split
from mrhp.studies.distances import component_vectors, distances
from mrhp.studies.experiment import run_system
from mrhp.studies.report import (
    ABLATIONS,
    PAPER_ORDER,
    ablation_table,
    assign_roles,
    case_pair,
    main_table,
    read_systems,
    significance_table,
    variant_label,
)
from mrhp.studies.stats import holm
from mrhp.studies.synthetic import SyntheticSpec

stats = pytest.importorskip("scipy.stats")
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "model": {"hidden_size": 16, "embedding_dim": 8, "num_heads": 2, "interaction_layers": 1,
              "feedforward_size": 16, "checkpoint_activations": False},
    "data": {"batch_rows": 16},
    "train": {"epochs": 1, "lr": 3e-3, "threads": 1},
}


# ---- variants and roles ------------------------------------------------------------------------------------------


def test_paper_order_names_every_model_and_variants_are_named_by_every_setting_that_differs():
    assert sorted(PAPER_ORDER) == sorted(MODEL_NAMES)
    full = Config().to_dict()

    def label(overrides: dict) -> str:
        return variant_label(apply_overrides(Config(), overrides, "test").to_dict(), full)

    assert label(ABLATIONS["w/o adaptive weighting"]) == "w/o adaptive weighting: loss.weighting=none"
    assert label(ABLATIONS["w/o cross-modal module"]) == "w/o cross-modal module: model.use_interaction=False"
    assert label(ABLATIONS["w/o contrastive objective"]).startswith("w/o contrastive objective: ")
    # What the old switch-based naming missed: set-level loss, text encoder, side features.
    assert label({"loss": {"set_contrastive_weight": 0.5}}) == "loss.set_contrastive_weight=0.5"
    assert label({"model": {"side_features": True}}) == "model.side_features=True"
    assert label({"model": {"text_encoder": "minilm", "text_tuned_layers": 2}}) == (
        "model.text_encoder=minilm, model.text_tuned_layers=2")
    # An ablation plus another change is not the paper's ablation: every difference is listed, no paper name.
    assert label({"model": {"use_interaction": False, "side_features": True}}) == (
        "model.side_features=True, model.use_interaction=False")
    # How a run was executed is not a difference of system.
    assert label({"train": {"seed": 7, "threads": 3}}) == ""


PRODUCTS = ["p1", "p2", "p3", "p4"]
# MAP per system, seed and product; NDCG@3 = MAP^2 and NDCG@5 = 1 - MAP, so that the metrics differ.
MAPS = {
    "mcr": {0: [0.2, 0.4, 0.6, 0.8], 1: [0.3, 0.3, 0.5, 0.6]},  # seed means 0.5, 0.425
    "conv-knrm": {0: [0.1, 0.2, 0.3, 0.4], 1: [0.2, 0.2, 0.2, 0.2]},  # 0.25, 0.2
    "mrhp": {0: [0.5, 0.6, 0.6, 0.9], 1: [0.4, 0.5, 0.7, 0.8]},  # 0.65, 0.6
    "mrhp-wocm": {0: [0.4, 0.5, 0.5, 0.8], 1: [0.3, 0.5, 0.5, 0.6]},  # 0.55, 0.475
    "mrhp-set": {0: [0.6, 0.6, 0.6, 0.6], 1: [0.5, 0.7, 0.7, 0.9]},  # 0.6, 0.7
}
OVERRIDES = {
    "mcr": {"model": {"name": "mcr"}}, "conv-knrm": {"model": {"name": "conv-knrm"}}, "mrhp": {},
    "mrhp-wocm": ABLATIONS["w/o cross-modal module"], "mrhp-set": {"loss": {"set_contrastive_weight": 0.5}},
}


def metric_values(maps: list[float]) -> dict[str, np.ndarray]:
    array = np.asarray(maps)
    return {"map": array, "ndcg@3": array**2, "ndcg@5": 1 - array}


def write_folder(root: Path, system: str, seed: int, maps: list[float], overrides: dict) -> Path:
    """A run folder as mrhp train + evaluate leave it, but for the checkpoint's contents (Tables 3-6 read only the
    per-product file and config.json)."""
    folder = root / f"{system}-seed{seed}"
    folder.mkdir(parents=True)
    config = apply_overrides(Config(), {**overrides, "train": {"seed": seed}}, system)
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    (folder / "best.safetensors").write_bytes(b"not read by Tables 3-6")
    values = metric_values(maps)
    rows = [{"product_id": p, "split": "test", **{m: float(v[k]) for m, v in values.items()}}
            for k, p in enumerate(PRODUCTS[:len(maps)])]
    (folder / "test_per_product.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@pytest.fixture
def hand_runs(tmp_path: Path) -> list[Path]:
    return [write_folder(tmp_path, system, seed, maps, OVERRIDES[system])
            for system, by_seed in MAPS.items() for seed, maps in by_seed.items()]


def matrix(system: str, metric: str) -> np.ndarray:
    return np.stack([metric_values(MAPS[system][seed])[metric] for seed in (0, 1)])  # [S, P]


def min_f(a: np.ndarray, b: np.ndarray) -> float:
    diff = a - b
    f1 = stats.ttest_1samp(diff.mean(axis=1), 0.0).statistic ** 2
    f2 = stats.ttest_1samp(diff.mean(axis=0), 0.0).statistic ** 2
    n1, n2 = diff.shape[0] - 1, diff.shape[1] - 1
    return stats.f.sf(f1 * f2 / (f1 + f2), 1, (f1 + f2) ** 2 / (f1**2 / n2 + f2**2 / n1))


def row_of(table: str, start: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {start}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_roles_are_named_explicitly_where_several_systems_could_take_them(hand_runs: list[Path]):
    systems = read_systems(hand_runs, "test")
    with pytest.raises(MrhpError, match=r"several systems could be the paper's full model \(mrhp, mrhp-set, "
                                        r"mrhp-wocm\): name it with --reference"):
        assign_roles(systems)
    roles = assign_roles(systems, reference="mrhp")
    assert roles.baseline.name == "mcr" and [s.name for s in roles.main] == ["conv-knrm", "mcr", "mrhp"]
    assert [(s.name, label) for s, label in roles.variants] == [
        ("mrhp-wocm", "w/o cross-modal module: model.use_interaction=False"),
        ("mrhp-set", "loss.set_contrastive_weight=0.5")]
    # Taking another system as the reference turns the full model into one of its variants.
    other = assign_roles(systems, reference="mrhp-set")
    assert ("mrhp", "loss.set_contrastive_weight=0.0") in [(s.name, label) for s, label in other.variants]
    with pytest.raises(MrhpError, match="--reference 'nope' is not one of the systems"):
        assign_roles(systems, reference="nope")
    with pytest.raises(MrhpError, match="--reference names the paper's full model, and 'mcr' runs mcr"):
        assign_roles(systems, reference="mcr")


def test_tables_3_to_6_equal_hand_computed_values(hand_runs: list[Path]):
    roles = assign_roles(read_systems(hand_runs, "test"), reference="mrhp")
    comparison, table34 = main_table(roles)
    # Tables 3-4: mean ± sample sd of the seed means (x100); min F' against MCR, Holm over 2 systems x 3 metrics.
    assert row_of(table34, "mrhp |")[:3] == ["mrhp", "2", "62.50 ± 3.54"]
    assert row_of(table34, "conv-knrm |")[2] == "22.50 ± 3.54"
    assert row_of(table34, "mcr |")[5:] == ["(reference)", ""]
    raw = [min_f(matrix(system, metric), matrix("mcr", metric)) for system in ("conv-knrm", "mrhp")
           for metric in ("map", "ndcg@3", "ndcg@5")]
    adjusted = holm(raw)
    assert row_of(table34, "conv-knrm |")[5:] == ["min-f", ", ".join(f"{p:.3g}" for p in adjusted[:3])]
    assert row_of(table34, "mrhp |")[5:] == ["min-f", ", ".join(f"{p:.3g}" for p in adjusted[3:])]
    assert "Holm-adjusted over the 6 p-values" in table34 and comparison.family == 6

    # Table 5: the differences, and products-t, seeds-t, min-f per metric, Holm over all 9.
    table5 = significance_table(roles)
    raw5 = []
    for metric in ("map", "ndcg@3", "ndcg@5"):
        ours, theirs = matrix("mrhp", metric), matrix("mcr", metric)
        raw5 += [stats.ttest_rel(ours.mean(axis=0), theirs.mean(axis=0)).pvalue,
                 stats.ttest_rel(ours.mean(axis=1), theirs.mean(axis=1)).pvalue, min_f(ours, theirs)]
    adjusted5 = [f"{p:.3g}" for p in holm(raw5)]
    ndcg3 = 100 * (matrix("mrhp", "ndcg@3").mean() - matrix("mcr", "ndcg@3").mean())
    assert row_of(table5, "MAP") == ["MAP", "+16.25", *adjusted5[:3]]
    assert row_of(table5, "NDCG@3") == ["NDCG@3", f"{ndcg3:+.2f}", *adjusted5[3:6]]
    assert row_of(table5, "NDCG@5") == ["NDCG@5", "-16.25", *adjusted5[6:]]
    assert "p products-t (Holm) | p seeds-t (Holm) | p min-f (Holm)" in table5
    assert "adjusted over the 9 of this table" in table5 and "seeds 0, 1" in table5

    # Table 6: each variant minus the reference, its label, and min F' against the reference, Holm over 6.
    _, table6 = ablation_table(roles)
    wocm, variant = row_of(table6, "mrhp-wocm"), row_of(table6, "mrhp-set")
    assert wocm[0] == "mrhp-wocm (w/o cross-modal module: model.use_interaction=False)"
    ndcg3_wocm = 100 * (matrix("mrhp-wocm", "ndcg@3").mean() - matrix("mrhp", "ndcg@3").mean())
    assert wocm[5] == f"-11.25, {ndcg3_wocm:+.2f}, +11.25"
    assert variant[0] == "mrhp-set (loss.set_contrastive_weight=0.5)" and variant[2] == "65.00 ± 7.07"
    assert variant[5].startswith("+2.50, ") and variant[5].endswith(", -2.50")
    raw6 = [min_f(matrix(system, metric), matrix("mrhp", metric)) for system in ("mrhp-wocm", "mrhp-set")
            for metric in ("map", "ndcg@3", "ndcg@5")]
    adjusted6 = holm(raw6)
    assert wocm[6:] == ["min-f", ", ".join(f"{p:.3g}" for p in adjusted6[:3])]
    assert variant[6:] == ["min-f", ", ".join(f"{p:.3g}" for p in adjusted6[3:])]


def test_report_refuses_seed_sets_that_differ_and_a_run_given_twice(hand_runs: list[Path], tmp_path: Path):
    extra = write_folder(tmp_path / "more", "conv-knrm", 5, MAPS["conv-knrm"][0], OVERRIDES["conv-knrm"])
    roles = assign_roles(read_systems([*hand_runs, extra], "test"), reference="mrhp")
    with pytest.raises(MrhpError, match=r"'conv-knrm' ran under seeds \[0, 1, 5\]"):
        main_table(roles)
    one = [write_folder(tmp_path / "one", system, seed, [0.5], OVERRIDES[system]) for system in ("mcr", "mrhp")
           for seed in (0, 1)]
    with pytest.raises(MrhpError, match="cannot test: the min-f test needs at least 2 products per file, got 1"):
        main_table(assign_roles(read_systems(one, "test")))
    (tmp_path / "alias").symlink_to(hand_runs[0])
    with pytest.raises(MrhpError, match="given twice"):
        read_systems([*hand_runs, tmp_path / "alias"], "test")


# ---- the case study and the distances by hand --------------------------------------------------------------------


def test_case_pair_prefers_what_the_reference_orders_right_and_the_baseline_wrong():
    # Product 0: reviews 0, 1 (labels 3, 0); product 1: reviews 2, 3, 4 (labels 1, 0, 2).
    split = SimpleNamespace(num_products=2, labels=np.array([3, 0, 1, 0, 2]),
                            reviews_of=lambda i: [np.array([0, 1]), np.array([2, 3, 4])][i])
    ours = np.array([0.9, 0.1, 0.5, 0.2, 0.6])  # every pair right
    baseline = np.array([0.9, 0.1, 0.5, 0.2, 0.1])  # wrong only on (4, 3) and (4, 2)
    # The largest gap among the pairs the baseline gets wrong: (4, 3) of gap 2, not (0, 1) of gap 3.
    how = "the reference orders them correctly and the baseline does not"
    assert case_pair(split, ours, baseline) == (1, 4, 3, how)
    assert case_pair(split, ours, None)[:3] == (0, 0, 1)  # no baseline: the largest gap the reference gets right
    assert case_pair(split, -ours, None)[:3] == (0, 0, 1) and "no system pair" in case_pair(split, -ours, None)[3]
    flat = SimpleNamespace(num_products=1, labels=np.array([1, 1]), reviews_of=lambda i: np.array([0, 1]))
    assert case_pair(flat, np.zeros(2), None) is None


def test_distances_by_hand():
    # Reviews 0 and 1 of label 0, review 2 of label 1; only review 0 has images.
    vectors = {"product_text": torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]]),
               "review_text": torch.tensor([[0.0, 1.0], [2.0, 0.0], [-1.0, -1.0]]),
               "product_image": torch.tensor([[0.0, 1.0], [9.0, 9.0], [9.0, 9.0]]),
               "review_image": torch.tensor([[0.0, -1.0], [9.0, 9.0], [9.0, 9.0]])}
    present = {"product_text": torch.tensor([True, True, True]), "review_text": torch.tensor([True, True, True]),
               "product_image": torch.tensor([True, False, False]), "review_image": torch.tensor([True, False, False])}
    out = distances(vectors, present, torch.tensor([0, 0, 1]))
    text, image = "product_text-review_text", "product_image-review_image"
    assert out[(0, text, "cs")] == pytest.approx(0.5)  # 1 - cos: 1 (orthogonal) and 0 (parallel)
    assert out[(0, text, "l2")] == pytest.approx((math.sqrt(2) + 1) / 2)
    assert out[(0, image, "cs")] == pytest.approx(2.0) and out[(0, image, "l2")] == pytest.approx(2.0)
    # The group is the mean over every review of both pairs (1, 0, 2), not the mean of the two pair means (1.25).
    assert out[(0, "intra-modal", "cs")] == pytest.approx(1.0)
    assert out[(1, text, "cs")] == pytest.approx(2.0) and math.isnan(out[(1, image, "cs")])
    assert out[(1, "intra-modal", "cs")] == pytest.approx(2.0)
    assert out[(1, "intra-modal", "l2")] == pytest.approx(math.sqrt(8)) and math.isnan(out[(1, "inter-modal", "l2")])


# ---- end to end, from trained runs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    spec = SyntheticSpec(products=(6, 3, 4), reviews_per_product=(3, 4), num_topics=3, feature_dim=6)
    dataset = PreparedDataset.open(prepare_tiny_dataset(root, spec))
    base = apply_overrides(Config(), TINY, "tiny")
    systems = {name: {"model": {"name": name}} for name in MODEL_NAMES}
    for k, (label, overrides) in enumerate(ABLATIONS.items()):
        systems[f"ablation{k}"] = overrides
    folders = []
    for system, overrides in systems.items():
        for seed in (0, 1):
            config = apply_overrides(base, {**overrides, "train": {"seed": seed}}, system).validate()
            folders.append(run_system(f"{system}-seed{seed}", config, dataset, root / "runs", progress=False).run_dir)
    return root, dataset, folders


def test_report_has_every_table_and_the_numbers_of_compare(tiny_runs, capsys):
    root, dataset, folders = tiny_runs
    argv = ["report", *map(str, folders), "--data", str(dataset.path), "--out", str(root / "report")]
    assert main(argv) == 2 and "--reference" in capsys.readouterr().err  # four systems run the paper's model
    assert main([*argv, "--reference", "mrhp"]) == 0
    report = (root / "report" / "report.md").read_text()
    for heading in ("## Tables 3-4", "## Table 5", "## Table 6", "## Tables 7-8", "## Table 1"):
        assert heading in report
    assert "_needs" not in report and "_no test product" not in report
    for label in ABLATIONS:
        assert f"({label}: " in report
    assert (root / "report" / "systems.png").stat().st_size > 0 and (root / "report" / "distances.png").exists()
    main_folders = [str(f) for f in folders if not f.name.startswith("ablation")]
    capsys.readouterr()
    assert main(["compare", *main_folders, "--reference", "mcr"]) == 0
    compared = capsys.readouterr().out
    table = report[report.index("## Tables 3-4"):report.index("## Table 5")]
    for name in MODEL_NAMES:
        line = next(row for row in compared.splitlines() if row.startswith(name + " "))
        numbers = re.findall(r"(\d+\.\d\d) ± (\d+\.\d\d)", line)
        row = next(r for r in table.splitlines() if r.startswith(f"| {name} |"))
        assert len(numbers) == 3 and [f"{m} ± {s}" for m, s in numbers] == re.findall(r"\d+\.\d\d ± \d+\.\d\d", row)
        if name != "mcr":  # the adjusted p-values against MCR and the test's name, to the digits compare prints
            assert line.split()[-4] == "min-f" and "| min-f |" in row
            assert ", ".join(f"{float(p):.3g}" for p in line.split()[-3:]) in row


def test_report_tables_7_8_and_the_case_study_hold_what_their_parts_compute(tiny_runs):
    root, dataset, folders = tiny_runs
    report = (root / "report" / "report.md").read_text()  # written by the test above
    test = dataset.split("test")
    runs = {name: [f for f in folders if f.name.startswith(name + "-seed")] for name in ("mrhp", "mcr")}
    distances_text = report[report.index("## Tables 7-8"):report.index("## Table 1")]
    for name, members in runs.items():
        per_seed = [distances(*component_vectors(load_checkpoint(f / "best.safetensors"), test, dataset.feature_dim))
                    for f in members]
        for label in sorted({int(y) for y in test.labels}):
            cells = row_of(distances_text, f"{label} | {name} |")
            values = [d[(label, "intra-modal", "cs")] for d in per_seed]
            assert cells[2] == f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
    case = report[report.index("## Table 1"):]
    hi_id, lo_id = re.findall(r"\*\*Review \d\*\* \(`([^`]+)`\)", case)
    hi, lo = (test.review_ids.index(hi_id), test.review_ids.index(lo_id))
    scores = {name: np.mean([score_split(load_checkpoint(f / "best.safetensors").model, test,
                                         load_checkpoint(f / "best.safetensors").config.data, dataset.feature_dim,
                                         progress=False) for f in members], axis=0)
              for name, members in runs.items()}
    assert case_pair(test, scores["mrhp"], scores["mcr"])[1:3] == (hi, lo)
    assert row_of(case, "label |")[1:] == [str(int(test.labels[hi])), str(int(test.labels[lo]))]
    for name in ("mrhp", "mcr"):
        assert row_of(case, f"{name} score |")[1:] == [f"{scores[name][hi]:.3f}", f"{scores[name][lo]:.3f}"]
