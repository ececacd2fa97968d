"""`mrhp compare` as the statistics of issue 20 want it: runs paired by the seed of their config (not by folder
name), seed sets that differ refused, one run given twice refused (also through a symlink or a hard link), the
reference named explicitly, and clear errors where nothing can be tested."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mrhp.cli import main
from mrhp.errors import MrhpError
from mrhp.studies.compare import (
    compare_systems,
    format_comparison,
    group_runs,
    read_per_product,
)

stats = pytest.importorskip("scipy.stats")

PRODUCTS = ["p1", "p2", "p3"]


def write_run(folder: Path, seed: int | None, maps: list[float], split: object = "test",
              products: list[str] = PRODUCTS) -> Path:
    """A run folder: `test_per_product.jsonl` (NDCG@3 = NDCG@5 = MAP) and, unless `seed` is None, a config.json
    holding `train.seed`."""
    folder.mkdir(parents=True)
    rows = [{"product_id": p, "split": split, "map": v, "ndcg@3": v, "ndcg@5": v} for p, v in zip(products, maps)]
    (folder / "test_per_product.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if seed is not None:
        (folder / "config.json").write_text(json.dumps({"train": {"seed": seed}, "model": {"name": "mrhp"}}))
    return folder


def cli_error(capsys, argv: list[str], *expected: str) -> str:
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    line = next(line for line in err.splitlines() if line.startswith(f"mrhp {argv[0]}: error: "))
    for text in expected:
        assert text in line, line
    return line


def test_runs_are_paired_by_the_seed_in_their_config_not_by_folder_name(tmp_path: Path):
    # The folder names lie: a-seed0 holds the run of seed 1. Paired by config, a's seed-0 run (mean 0.5) meets
    # b's seed-0 run (mean 0.3) and a's seed-1 run (mean 0.8) meets b's seed-1 run (mean 0.75).
    a = [write_run(tmp_path / "a-seed0", 1, [0.7, 0.8, 0.9]), write_run(tmp_path / "a-seed1", 0, [0.4, 0.5, 0.6]),
         write_run(tmp_path / "a-seed2", 2, [0.2, 0.3, 0.4])]
    b = [write_run(tmp_path / "b-seed0", 0, [0.2, 0.3, 0.4]), write_run(tmp_path / "b-seed1", 1, [0.7, 0.75, 0.8]),
         write_run(tmp_path / "b-seed2", 2, [0.1, 0.3, 0.2])]
    runs = group_runs([*a, *b], [])
    seeds_t = compare_systems(runs, reference="b", test="seeds-t")
    # Seed means (seeds 0, 1, 2): a 0.5, 0.8, 0.3; b 0.3, 0.75, 0.2.
    expected = stats.ttest_rel([0.5, 0.8, 0.3], [0.3, 0.75, 0.2]).pvalue
    assert seeds_t.rows["a"].p_raw["map"] == pytest.approx(expected)
    assert seeds_t.rows["a"].seed_list == [0, 1, 2]
    by_folder_name = stats.ttest_rel([0.8, 0.5, 0.3], [0.3, 0.75, 0.2]).pvalue
    assert abs(by_folder_name - expected) > 0.1  # so that pairing by name would fail the line above
    # With 2+ seeds of known seed everywhere, the default is min F'; the table names it and the correction.
    default = compare_systems(runs, reference="b")
    diff = np.array([[0.2, 0.2, 0.2], [0.0, 0.05, 0.1], [0.1, 0.0, 0.2]])  # a - b, rows seeds 0, 1, 2
    f1 = stats.ttest_1samp(diff.mean(axis=1), 0.0).statistic ** 2
    f2 = stats.ttest_1samp(diff.mean(axis=0), 0.0).statistic ** 2
    min_f = stats.f.sf(f1 * f2 / (f1 + f2), 1, (f1 + f2) ** 2 / (f1**2 / 2 + f2**2 / 2))
    assert default.test == "min-f" and default.rows["a"].p_raw["map"] == pytest.approx(min_f)
    # Three metrics with the same values: three equal p-values, Holm multiplies each by 3.
    assert default.rows["a"].p_value["ndcg@5"] == pytest.approx(min(1.0, 3 * min_f))
    table = format_comparison(default)
    assert "min-f test" in table and "Holm-adjusted over the 3 p-values" in table and "seeds 0, 1, 2" in table
    assert next(line for line in table.splitlines() if line.startswith("a ")).split()[-4] == "min-f"


def test_different_seed_sets_and_a_seed_twice_are_refused(tmp_path: Path):
    a = [write_run(tmp_path / "a0", 0, [0.1, 0.2, 0.3]), write_run(tmp_path / "a1", 1, [0.2, 0.2, 0.3])]
    b = [write_run(tmp_path / "b0", 0, [0.1, 0.2, 0.3]), write_run(tmp_path / "b2", 2, [0.2, 0.2, 0.3])]
    c = [write_run(tmp_path / "c0", 0, [0.1, 0.2, 0.3])]
    read = {name: [read_per_product(path) for path in paths] for name, paths in (("a", a), ("b", b), ("c", c))}
    with pytest.raises(MrhpError, match=r"'b' ran under seeds \[0, 2\] but the reference 'a' under \[0, 1\]"):
        compare_systems({"a": read["a"], "b": read["b"]}, reference="a")
    with pytest.raises(MrhpError, match=r"seeds \[0\]"):  # fewer seeds: never silently cut to the smaller count
        compare_systems({"a": read["a"], "c": read["c"]}, reference="a", test="products-t")
    copy = [read_per_product(write_run(tmp_path / "a0-copy", 0, [0.1, 0.2, 0.3]))]
    with pytest.raises(MrhpError, match="both runs of seed 0"):
        compare_systems({"a": read["a"] + copy, "b": read["b"]}, reference="b")
    bare = tmp_path / "bare"
    write_run(bare / "x", None, [0.1, 0.2, 0.3])
    write_run(bare / "y", None, [0.3, 0.2, 0.3])
    no_seed = [read_per_product(bare / "x"), read_per_product(bare / "y")]
    with pytest.raises(MrhpError, match="no config.json beside it"):
        compare_systems({"a": read["a"], "n": no_seed}, reference="a", test="min-f")


def test_one_run_given_twice_through_a_symlink_or_a_hard_link_is_refused(tmp_path: Path, capsys):
    run = write_run(tmp_path / "mrhp-seed0", 0, [0.1, 0.2, 0.3])
    other = write_run(tmp_path / "mcr-seed0", 0, [0.2, 0.2, 0.3])
    (tmp_path / "link").symlink_to(run)
    cli_error(capsys, ["compare", str(run), str(tmp_path / "link"), str(other), "--reference", "mcr"], "given twice")
    hard = tmp_path / "hard"
    hard.mkdir()
    os.link(run / "test_per_product.jsonl", hard / "test_per_product.jsonl")
    cli_error(capsys, ["compare", str(other), "--system", f"x={hard}", "--system", f"y={run}", "--reference",
                       "mcr"], "given twice", "hard link")


def test_the_reference_is_named_and_untestable_data_is_a_clear_error(tmp_path: Path, capsys):
    one = [write_run(tmp_path / f"{name}-seed{seed}", seed, [0.1 + 0.1 * seed], products=["p1"])
           for name in ("mcr", "mrhp") for seed in (0, 1)]
    cli_error(capsys, ["compare", *map(str, one)], "--reference", "mcr, mrhp")
    cli_error(capsys, ["compare", *map(str, one), "--reference", "mcr"], "cannot test", "at least 2 products", "got 1")
    cli_error(capsys, ["compare", *map(str, one), "--reference", "mcr", "--test", "products-t"], "at least 2 products")
    single = [write_run(tmp_path / f"{name}-single", 0, [0.1, 0.2, 0.3]) for name in ("mcr", "mrhp")]
    cli_error(capsys, ["compare", *map(str, single), "--reference", "mcr-single", "--test", "min-f"],
              "at least 2 seeds per system")
    null_split = write_run(tmp_path / "nullsplit", 0, [0.1, 0.2, 0.3], split=None)
    cli_error(capsys, ["compare", str(null_split)], "line 1", "field 'split'", "None")
    # With one system nothing is tested and no reference is needed.
    assert main(["compare", str(single[0])]) == 0
    assert "(reference)" in capsys.readouterr().out
