"""`mrhp report`: the paper's tables from two tiny runs per system, every table present, and the numbers of
Tables 3-4 equal to those `mrhp compare` prints for the same files."""

from __future__ import annotations

import re

import pytest
from conftest import prepare_tiny_dataset

from mrhp.cli import main
from mrhp.config import MODEL_NAMES, Config, apply_overrides
from mrhp.data.prepared import PreparedDataset
from mrhp.studies.experiment import run_system
from mrhp.studies.report import ABLATIONS, PAPER_ORDER, ablation_of
from mrhp.studies.synthetic import SyntheticSpec

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "model": {"hidden_size": 16, "embedding_dim": 8, "num_heads": 2, "interaction_layers": 1,
              "feedforward_size": 16, "checkpoint_activations": False},
    "data": {"batch_rows": 16},
    "train": {"epochs": 1, "lr": 3e-3, "threads": 1},
}


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


def test_paper_order_names_every_model():
    assert sorted(PAPER_ORDER) == sorted(MODEL_NAMES)
    for label, overrides in ABLATIONS.items():
        assert ablation_of(apply_overrides(Config(), overrides, label)) == label
    assert ablation_of(Config()) is None


def test_report_has_every_table_and_the_numbers_of_compare(tiny_runs, capsys):
    root, dataset, folders = tiny_runs
    assert main(["report", *map(str, folders), "--data", str(dataset.path), "--out", str(root / "report")]) == 0
    report = (root / "report" / "report.md").read_text()
    for heading in ("## Tables 3-4", "## Table 5", "## Table 6", "## Tables 7-8", "## Table 1"):
        assert heading in report
    assert "_needs" not in report and "_no test product" not in report
    for label in ABLATIONS:
        assert f"({label})" in report
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
        if name != "mcr":  # the p-values against MCR, to the digits compare prints
            p_values = line.split()[-3:]
            assert ", ".join(f"{float(p):.3g}" for p in p_values) in row
    distances = report[report.index("## Tables 7-8"):report.index("## Table 1")]
    assert "| mcr |" in distances and "| mrhp |" in distances
