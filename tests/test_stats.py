"""Tests of mrhp.studies.stats: the paired tests against scipy and hand-computed values, Holm's adjustment by hand,
and the calibration of the tests `mrhp compare` and `mrhp report` print, by simulation under the null (products
that favour one system, runs that differ by a per-run offset) and under an alternative."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrhp.studies import stats as stats_module
from mrhp.studies.stats import (
    TESTS,
    check_test_data,
    holm,
    min_f_test,
    paired_test,
    product_means,
    system_test,
)

scipy_stats = pytest.importorskip("scipy.stats")

ALPHA = 0.05


class TestPairedTest:
    def test_identical_inputs_give_one(self) -> None:
        a = np.array([0.1, 0.5, 0.9, 0.3])
        for method in ("t", "wilcoxon", "randomization"):
            assert paired_test(a, a.copy(), method=method) == 1.0

    def test_clear_shift_gives_tiny_p(self) -> None:
        rng = np.random.default_rng(2)
        a = rng.normal(size=200)
        b = a - 1.0 + rng.normal(scale=0.1, size=200)
        assert paired_test(a, b, "t") < 1e-10
        assert paired_test(a, b, "wilcoxon") < 1e-10
        # The randomization p-value cannot go below 1 / (resamples + 1).
        assert paired_test(a, b, "randomization", resamples=2000) == pytest.approx(1 / 2001)

    def test_matches_scipy_and_randomization_agrees_with_t(self) -> None:
        stats = pytest.importorskip("scipy.stats")
        rng = np.random.default_rng(8)
        a = rng.normal(size=60)
        b = a - 0.3 + rng.normal(scale=0.9, size=60)  # t-test p is about 0.03 for this seed
        p_t = paired_test(torch.as_tensor(a), torch.as_tensor(b), "t")  # tensors are accepted
        assert p_t == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
        assert paired_test(a, b, "wilcoxon") == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-12)
        p_r = paired_test(a, b, "randomization", seed=7)
        assert 0.001 < p_t < 0.2  # a borderline case, where agreement is informative
        assert p_r == pytest.approx(p_t, abs=0.02)
        assert paired_test(a, b, "randomization", seed=7) == p_r  # seeded: reproducible

    def test_errors_and_conventions(self, monkeypatch: pytest.MonkeyPatch) -> None:
        with pytest.raises(ValueError, match="equal lengths"):
            paired_test([0.1, 0.2], [0.1, 0.2, 0.3])
        with pytest.raises(ValueError):
            paired_test([0.1], [0.2], "t")
        with pytest.raises(ValueError):
            paired_test([0.1], [0.2], "bootstrap")
        # Constant non-zero differences: zero variance, documented as p = 0 for the t-test.
        assert paired_test([1.0, 2.0, 3.0], [0.5, 1.5, 2.5], "t") == 0.0
        monkeypatch.setattr(stats_module.importlib.util, "find_spec", lambda name: None)
        with pytest.raises(ImportError, match="pip install scipy"):
            paired_test([0.1, 0.2], [0.3, 0.1], "t")
        # randomization needs only numpy
        assert 0.0 < paired_test([0.1, 0.2], [0.3, 0.1], "randomization", resamples=100) <= 1.0


def test_holm_by_hand():
    # Sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> kept at 0.06: monotone).
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # Capped at 1; a NaN (no test) stays NaN and does not count: m = 2.
    adjusted = holm([0.6, math.nan, 0.2])
    assert adjusted[0] == pytest.approx(0.6) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.4)
    assert holm([0.7, 0.8]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_a_product_tested_under_several_seeds_is_one_sample():
    # Seed 0 tests p1, p2; seed 1 tests p2, p3 (each seed with its own split).
    means = product_means([(["p1", "p2"], np.array([0.2, 0.4])), (["p2", "p3"], np.array([0.8, 0.5]))])
    assert means == pytest.approx({"p1": 0.2, "p2": 0.6, "p3": 0.5}) and list(means) == ["p1", "p2", "p3"]
    with pytest.raises(ValueError, match="2 product ids for 1 values"):
        product_means([(["p1", "p2"], np.array([0.2]))])


def test_min_f_by_hand_and_the_tests_over_products_and_seeds():
    a = np.array([[0.5, 0.7, 0.2, 0.9], [0.6, 0.6, 0.4, 0.8], [0.4, 0.9, 0.3, 0.7]])  # [S=3, P=4]
    b = np.array([[0.4, 0.6, 0.3, 0.6], [0.6, 0.4, 0.2, 0.8], [0.2, 0.8, 0.3, 0.5]])
    diff = a - b
    by_seed, by_product = diff.mean(axis=1), diff.mean(axis=0)  # [3], [4]
    t_seeds = scipy_stats.ttest_1samp(by_seed, 0.0).statistic
    t_products = scipy_stats.ttest_1samp(by_product, 0.0).statistic
    f1, f2 = t_seeds**2, t_products**2
    df = (f1 + f2) ** 2 / (f1**2 / 3 + f2**2 / 2)  # n1 = S - 1 = 2, n2 = P - 1 = 3
    expected = scipy_stats.f.sf(f1 * f2 / (f1 + f2), 1, df)
    assert system_test(a, b, "min-f") == pytest.approx(expected, rel=1e-12)
    assert system_test(a, b, "products-t") == pytest.approx(scipy_stats.ttest_rel(a.mean(0), b.mean(0)).pvalue)
    assert system_test(a, b, "seeds-t") == pytest.approx(scipy_stats.ttest_rel(a.mean(1), b.mean(1)).pvalue)
    assert system_test(a, b, "products-wilcoxon") == pytest.approx(scipy_stats.wilcoxon(a.mean(0), b.mean(0)).pvalue)
    assert system_test(a, a, "min-f") == 1.0
    assert min_f_test(np.full((3, 4), 0.1)) == 0.0  # a constant difference: no chance variation at all
    assert set(TESTS) >= {"min-f", "products-t", "seeds-t"}


def test_what_cannot_be_tested_is_said():
    assert "at least 2 products" in check_test_data("products-t", 3, 1)
    assert "at least 2 products" in check_test_data("min-f", 3, 1)
    assert "at least 2 seeds" in check_test_data("min-f", 1, 10)
    assert "at least 2 seeds" in check_test_data("seeds-t", 1, 10)
    assert check_test_data("seeds-t", 2, 1) is None and check_test_data("products-t", 1, 2) is None
    assert "unknown test" in check_test_data("pooled", 5, 5)
    with pytest.raises(ValueError, match="at least 2 products"):
        system_test(np.zeros((2, 1)), np.ones((2, 1)), "min-f")


# ---- calibration by simulation ------------------------------------------------------------------------------------

SEEDS, PRODUCTS, SIMULATIONS = 5, 30, 600


def simulate(kind: str, tests: tuple[str, ...], delta: float = 0.0, simulations: int = SIMULATIONS) -> dict:
    """The share of `simulations` comparisons where each test rejects at ALPHA. Each system's value of product p
    under seed s is a product difficulty shared by both systems + noise, and for `kind`:
    * "products": + a per-system product effect that persists over seeds (a system better on some products);
    * "runs": + a per-run offset shared by every product of the run (a seed that trained better or worse);
    * "both": both; system b is worse by `delta` (0: the null)."""
    rng = np.random.default_rng({"products": 1, "runs": 2, "both": 3}[kind] + int(100 * delta))
    rejected = dict.fromkeys(tests, 0)
    for _ in range(simulations):
        difficulty = rng.normal(size=PRODUCTS)  # [P]
        a = difficulty + rng.normal(size=(SEEDS, PRODUCTS))  # [S, P]
        b = difficulty + rng.normal(size=(SEEDS, PRODUCTS)) - delta  # [S, P]
        if kind in ("products", "both"):
            a, b = a + rng.normal(size=PRODUCTS), b + rng.normal(size=PRODUCTS)
        if kind in ("runs", "both"):
            a, b = a + rng.normal(scale=0.4, size=(SEEDS, 1)), b + rng.normal(scale=0.4, size=(SEEDS, 1))
        for test in tests:
            p = scipy_stats.ttest_rel(a.ravel(), b.ravel()).pvalue if test == "pooled" else system_test(a, b, test)
            rejected[test] += p < ALPHA
    return {test: count / simulations for test, count in rejected.items()}


# A calibrated test rejects Binomial(SIMULATIONS, ALPHA) times under the null: its rate stays within these bounds
# but for a chance of 1 in 10,000 on either side.
LOW, HIGH = (scipy_stats.binom.ppf(q, SIMULATIONS, ALPHA) / SIMULATIONS for q in (1e-4, 1 - 1e-4))


@pytest.mark.parametrize("kind", ["products", "runs", "both"])
def test_min_f_holds_its_level_under_the_null(kind: str):
    rates = simulate(kind, ("min-f", "products-t", "seeds-t", "pooled"))
    assert rates["min-f"] <= HIGH, rates
    # The simulation can tell: a test that ignores the source of chance at work here rejects far too often.
    if kind == "products":
        assert LOW <= rates["products-t"] <= HIGH, rates  # the unit is the product: calibrated here
        assert rates["pooled"] > HIGH and rates["seeds-t"] > HIGH, rates  # product x seed pairs; seeds only
    elif kind == "runs":
        assert LOW <= rates["seeds-t"] <= HIGH, rates  # runs paired by seed: calibrated under per-run offsets
        assert rates["products-t"] > HIGH and rates["pooled"] > HIGH, rates
    else:  # each of the two tests min F' combines misses one source
        assert rates["products-t"] > HIGH and rates["seeds-t"] > HIGH and rates["pooled"] > HIGH, rates


def test_min_f_rejects_under_an_alternative():
    rates = simulate("both", ("min-f",), delta=2.0, simulations=200)
    assert rates["min-f"] >= 0.9, rates
