"""benchmarks/real_data.py --pooled: the smoke run on generated stand-in data, the clean skip without the shared
data, and the unit of its tests (a product tested under several seeds is one sample)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from pooled_study import SMOKE_SETS, Results, compare, prepared_sources, write_standin


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "real_data.py"), "--pooled", *args],
                          capture_output=True, text=True, env=env, timeout=300, check=False)


def test_smoke_runs_every_part_and_names_its_tests(tmp_path):
    done = _run("--smoke", "--seeds", "0", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "pooled.md").read_text()
    for heading in ("Split by product: pooled model and per-set models vs the best floor (MAP)",
                    "New category: one domain left out (MAP)", "New reviews: split by time (MAP)"):
        assert heading in report
    for row in ("| set-a |", "| set-b |", "| domains |", "| pooled |", "| domains-d1 |", "| domains-d3 |"):
        assert row in report
    assert "products-t p = " in report and "randomization p = " in report and "Holm-adjusted" in report
    assert "floor (by dev MAP)" in report
    # The blend of LambdaMART and the pooled model is a column of the split by product and of the split by time,
    # with the model's share picked on dev for every seed.
    assert report.count("| LambdaMART + pooled model MAP |") == 2 and report.count("a by seed: ") == 2


def test_reuse_finishes_seeds_run_apart_without_training_again(tmp_path):
    """--reuse-prepared on the whole study: seed 0 run alone, then seeds 0 and 1 reported together. Seed 0's sources
    and runs are read, not made again, and its tables are the same as when it ran alone (a different config is
    refused by `train`'s resume: tests/test_training.py)."""
    done = _run("--smoke", "--seeds", "0", "--no-time-split", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    alone = (tmp_path / "pooled.md").read_text()
    kept = [tmp_path / "seed0" / "prepared" / "set-a" / "dataset.json",
            tmp_path / "seed0" / "pooled-model" / "best.safetensors",
            tmp_path / "seed0" / "alone-d1" / "last.safetensors"]
    written = [path.stat().st_mtime_ns for path in kept]
    done = _run("--smoke", "--seeds", "0", "--no-time-split", "--reuse-prepared", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert [path.stat().st_mtime_ns for path in kept] == written
    again = (tmp_path / "pooled.md").read_text()
    assert again.split("\n", 3)[3] == alone.split("\n", 3)[3]  # every line after the command and its time
    done = _run("--smoke", "--seeds", "0", "1", "--no-time-split", "--reuse-prepared", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "seed1" / "pooled-model" / "best.safetensors").is_file()
    assert [path.stat().st_mtime_ns for path in kept] == written
    assert "Seeds: 0, 1." in (tmp_path / "pooled.md").read_text()
    # A run that cannot be resumed is one named error, exit 2, and the other runs stay as they were.
    damaged = tmp_path / "seed1" / "pooled-model" / "last.safetensors"
    damaged.write_bytes(b"not a checkpoint")
    done = _run("--smoke", "--seeds", "0", "1", "--no-time-split", "--reuse-prepared", "--out", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.startswith("real_data: error: ") and str(damaged) in done.stderr
    assert [path.stat().st_mtime_ns for path in kept] == written


def test_reuse_takes_prepared_sources_only_with_the_vocabulary_of_the_same_sets(tmp_path):
    """Sources prepared for all three stand-in sets share the vocabulary of all of them: asked for one set, reuse
    must prepare it again with that set's own vocabulary, not silently read the larger one."""
    shared = write_standin(tmp_path / "standin")
    everything = prepared_sources(shared, SMOKE_SETS, 0, "product", tmp_path / "prepared", None, reuse=True)
    manifest = tmp_path / "prepared" / "set-a" / "dataset.json"
    written = manifest.stat().st_mtime_ns
    again = prepared_sources(shared, SMOKE_SETS, 0, "product", tmp_path / "prepared", None, reuse=True)
    assert manifest.stat().st_mtime_ns == written
    assert again["set-a"].vocab_fingerprint == everything["set-a"].vocab_fingerprint
    alone = prepared_sources(shared, {"set-a": SMOKE_SETS["set-a"]}, 0, "product", tmp_path / "prepared", None,
                             reuse=True)
    assert manifest.stat().st_mtime_ns != written
    assert alone["set-a"].meta["report"]["vocabulary"]["from"] == "the train splits of set-a"
    assert alone["set-a"].vocab_fingerprint != everything["set-a"].vocab_fingerprint


def test_candidate_study_scores_dev_only_against_the_config(tmp_path):
    """--candidate-study: one row per candidate (the tuned encoder layer needs MiniLM states, which the smoke's LSTM
    model has not), each against the reference on dev products with Holm over the candidates; no test split."""
    done = _run("--smoke", "--candidate-study", "--seeds", "0", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "candidates.md").read_text()
    for label in ("listwise loss (loss.listwise_weight = 1)", "more lists per batch (data.batch_rows = 64)",
                  "score anchored on length (model.length_anchor = 1)"):
        assert f"| {label} |" in report
    assert "| configs/real-data.toml |" in report and "| reference |" in report
    assert report.count("(Holm, 3 variants)") == 3 and "pooled dev products" in report
    # The test split is never scored: no per-product test file, no test column, no pooled.md.
    assert not list(tmp_path.rglob("test_*.jsonl")) and "test MAP" not in report
    assert not (tmp_path / "pooled.md").exists()
    # The side-feature study on the sources the candidate study prepared (reused, not prepared again).
    prepared = tmp_path / "seed0" / "prepared" / "set-a" / "dataset.json"
    written = prepared.stat().st_mtime_ns
    done = _run("--smoke", "--side-study", "--reuse-prepared", "--seeds", "0", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    side = (tmp_path / "side.md").read_text()
    assert "| verified, has_images, rating_deviation |" in side and "| age_rank |" in side
    assert side.count("(Holm, 2 variants)") == 2 and prepared.stat().st_mtime_ns == written
    # One candidate again, on what the first study left: its finished runs are read, not trained again.
    trained = tmp_path / "seed0" / "candidates-1" / "best.safetensors"
    before = trained.stat().st_mtime_ns
    done = _run("--smoke", "--candidate-study", "--variants", "1", "--reuse-prepared", "--seeds", "0",
                "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    again = (tmp_path / "candidates.md").read_text()
    assert "(Holm, 1 variants)" in again and "more lists per batch" not in again
    assert trained.stat().st_mtime_ns == before
    first_row = next(line for line in report.splitlines() if line.startswith("| listwise"))
    assert first_row.split("|")[2] == next(line for line in again.splitlines()
                                           if line.startswith("| listwise")).split("|")[2]


def test_skips_cleanly_without_the_shared_data(tmp_path):
    done = _run("--shared", str(tmp_path / "absent"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("skipped") == 6 and not (tmp_path / "out" / "pooled.md").exists()


def test_a_product_tested_under_several_seeds_is_one_sample():
    results = Results()

    def values(*v: float) -> dict[str, np.ndarray]:
        return {m: np.array(v, dtype=float) for m in ("map", "ndcg@3", "ndcg@5")}

    # Seed 0 tests products x and y, seed 1 tests x and z (each seed its own split).
    results.add("model", "s", ["x", "y"], values(1.0, 0.0), 50.0, 2)
    results.add("model", "s", ["x", "z"], values(0.5, 1.0), 50.0, 2)
    results.add("floor", "s", ["x", "y"], values(0.0, 0.0), 40.0, 2)
    results.add("floor", "s", ["x", "z"], values(0.5, 0.5), 40.0, 2)
    # x is averaged over its two seeds (0.75 vs 0.25); 3 samples, not 4 product-seed pairs.
    assert results.means("model", ["s"], "map") == {"s/x": 0.75, "s/y": 0.0, "s/z": 1.0}
    ((_, value, difference, p_cell, floor, products),) = compare(results, {"s": ["s"]}, ["model"],
                                                                   {"s": "floor"}, "map")
    assert (value, floor, products) == ("58.33", "floor 25.00", "3")
    # Differences 0.5, 0, 0.5: mean 1/3, sd 0.2887, t = 2 on 2 degrees of freedom -> p = 0.1835.
    assert difference == "+33.33" and p_cell.startswith("products-t p = 0.184")
