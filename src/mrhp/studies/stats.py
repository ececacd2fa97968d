"""The statistics of `mrhp compare` and `mrhp report` (the paper's Table 5): paired tests of two systems evaluated
on the same products under the same seeds, and Holm's correction for the many comparisons of one table.

The data of one comparison: per system a matrix `[S, P]` of per-product metric values, one row per run, the rows
of the two systems paired by the seed in each run's config. Two sources of chance make the numbers of two equally
good systems differ:

* the products: the test split is a sample of products, and a system can be better on some products and worse
  on others (a product x system interaction that persists over seeds);
* the runs: each trained run is one draw of initialisation and data order, and its quality moves as a whole with
  the seed (a per-run offset shared by every product of the run).

The tests (`TESTS` is the one vocabulary of their names):

* `products-t`, `products-wilcoxon`, `products-randomization`: the unit is the product. Each product's value is
  first averaged over the seeds of each system, so a product tested under several seeds is one sample (then a
  paired t-test, a Wilcoxon signed-rank test or a sign-flip randomization test over the products). They take the
  runs as fixed: their null is "these runs, averaged, do equally well on the population of products". A per-run
  offset is a real difference between two sets of runs for them, so they reject too often when runs differ by
  chance (26% false positives at alpha 0.05 in issue 20's simulation with 100 products and 5 seeds).
* `seeds-t`: the unit is the seed. Each run's value is its mean over the products, and a paired t-test pairs the
  two systems' runs of the same seed. It takes the products as fixed: calibrated under per-run offsets, but a
  product x system interaction of this sample of products is a real difference for it.
* `min-f` (the default with two or more seeds): Clark's (1973) min F', the conservative combination of the two
  paired t-tests above and the classical test for a design with two crossed random factors (there subjects and
  items, here seeds and products). With `F1 = t_seeds^2` (n1 = S - 1 degrees of freedom) and
  `F2 = t_products^2` (n2 = P - 1): `min F' = F1 F2 / (F1 + F2)`, on 1 and `(F1 + F2)^2 / (F1^2 / n2 + F2^2 / n1)`
  degrees of freedom. As min F' <= min(F1, F2), it holds its level whichever source of chance dominates, and it
  approaches the calibrated one of the two tests when the other source is negligible; `tests/test_stats.py`
  checks both nulls by simulation. Why not the alternatives: a quasi-F with Satterthwaite's degrees of freedom
  estimates the variance of the mean difference as `(MS_products + MS_seeds - MS_residual) / (P S)`, which can be
  negative with few seeds; a permutation test that swaps the two systems' runs within a seed has only 2^S
  arrangements (no two-sided p below 1/16 with 5 seeds); a bootstrap over 5 runs is anti-conservative. The price:
  with few seeds the test has little power (S - 1 degrees of freedom bound it), which is what 2-5 runs can show.

Product x seed pairs are never counted as independent samples: a product appears under every seed, so such a test
sees S times the evidence there is (21.5% false positives at alpha 0.05 in issue 20's simulation).

`holm` adjusts the p-values of one table for their number (`CORRECTION`).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence

import numpy as np

PAIRED_METHODS = ("t", "wilcoxon", "randomization")
"""Methods of :func:`paired_test` (one value per pair)."""

TESTS = {
    "min-f": "min F' (Clark 1973) of the paired t-tests over products and over seeds",
    **{f"products-{method}": f"paired {name} over products (each product's value averaged over the seeds)"
       for method, name in zip(PAIRED_METHODS, ("t-test", "Wilcoxon signed-rank test", "randomization test"))},
    "seeds-t": "paired t-test over seeds (runs paired by their config's seed; each run's mean over products)",
}
"""The tests of two systems' `[S, P]` values (:func:`system_test`), by name, with what each pairs."""

SEED_TESTS = ("min-f", "seeds-t")
"""The tests that pair runs by seed: they need at least 2 seeds, known from each run's config."""

CORRECTION = "Holm"
"""The correction for multiple comparisons applied to every table of p-values (:func:`holm`)."""


def _as_numpy_1d(values, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one value per pair (1-D), got shape {array.shape}")
    return array


def _require_scipy(what: str) -> None:
    if importlib.util.find_spec("scipy") is None:
        raise ImportError(
            f"{what} needs scipy, which is not a core dependency of mrhp: pip install scipy "
            "(or use the randomization test, which needs only numpy)"
        )


def _randomization_p(diff: np.ndarray, resamples: int, seed: int) -> float:
    """Two-sided sign-flip permutation p-value of the mean difference, with the add-one (never 0) estimate."""
    n = diff.size
    observed = abs(diff.mean())
    # Relative slack so that resamples equal to the observed statistic up to float rounding count as extreme.
    slack = 1e-12 * max(1.0, float(np.abs(diff).max()))
    rng = np.random.Generator(np.random.PCG64(seed))
    chunk = max(1, 2_000_000 // n)  # bounds memory at about 16 MB of signs per step
    extreme = 0
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        signs = rng.integers(0, 2, size=(size, n), dtype=np.int8) * 2 - 1  # [size, n]
        means = np.abs(signs @ diff) / n  # [size]
        extreme += int((means >= observed - slack).sum())
        done += size
    return (extreme + 1) / (resamples + 1)


def paired_test(a, b, method: str = "t", *, resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value of a paired test between two systems' values, one pair per unit (paper Table 5).

    Args:
        a, b: ``[n]`` values of the two systems (tensors, arrays or lists), pair ``i`` at position ``i``.
        method: ``"t"`` (paired t-test, scipy), ``"wilcoxon"`` (signed-rank test, scipy, zero differences dropped as
            in Wilcoxon's original method), or ``"randomization"`` (sign-flip permutation test of the mean
            difference, numpy only).
        resamples: number of sign-flip resamples for ``"randomization"``.
        seed: seed of the numpy Generator for ``"randomization"``; same seed, same p-value.

    Returns:
        The p-value in ``[0, 1]``. Conventions where a test statistic is undefined: identical inputs (all
        differences 0) give ``1.0`` for every method (no evidence of a difference, rather than scipy's NaN); for
        ``"t"``, non-zero differences that are all equal (zero variance) give ``0.0``. The randomization p-value is
        ``(1 + #extreme) / (1 + resamples)``, so it is never exactly 0.

    Raises:
        ValueError: unequal lengths, no pairs, fewer than 2 pairs for ``"t"``, non-finite values, an unknown
            method, or ``resamples < 1``.
        ImportError: scipy is missing for ``"t"`` or ``"wilcoxon"``.
    """
    if method not in PAIRED_METHODS:
        raise ValueError(f"unknown paired test {method!r}; expected one of {PAIRED_METHODS}")
    x = _as_numpy_1d(a, "a")
    y = _as_numpy_1d(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired test needs equal lengths, got {x.size} and {y.size}")
    if x.size == 0:
        raise ValueError("paired test needs at least one pair")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("paired test values must be finite")
    diff = x - y
    if not diff.any():
        return 1.0
    if method == "randomization":
        if resamples < 1:
            raise ValueError(f"resamples must be >= 1, got {resamples}")
        return float(_randomization_p(diff, resamples, seed))
    _require_scipy(f"paired_test(method={method!r})")
    from scipy import stats

    if method == "t":
        if diff.size < 2:
            raise ValueError("a paired t-test needs at least 2 pairs")
        if np.ptp(diff) == 0.0:
            return 0.0
        return float(stats.ttest_rel(x, y).pvalue)
    return float(stats.wilcoxon(x, y).pvalue)


def _t_squared(diff: np.ndarray) -> float:
    """The squared one-sample t statistic of `diff` [n] against 0 (inf for non-zero constant differences)."""
    mean = float(diff.mean())
    if np.ptp(diff) == 0.0:
        return 0.0 if mean == 0.0 else math.inf
    return mean * mean / (float(diff.var(ddof=1)) / diff.size)


def min_f_test(diff: np.ndarray) -> float:
    """Two-sided p-value of Clark's min F' for the differences `diff` [S seeds, P products] (module docstring)."""
    seeds, products = diff.shape
    if not diff.any():
        return 1.0
    f1 = _t_squared(diff.mean(axis=1))  # over seeds, n1 = S - 1
    f2 = _t_squared(diff.mean(axis=0))  # over products, n2 = P - 1
    n1, n2 = seeds - 1, products - 1
    if f1 == 0.0 or f2 == 0.0:
        return 1.0
    if math.isinf(f1) and math.isinf(f2):
        return 0.0
    if math.isinf(f1):  # the seeds add no variation: min F' is F2
        statistic, df = f2, float(n2)
    elif math.isinf(f2):
        statistic, df = f1, float(n1)
    else:
        statistic = f1 * f2 / (f1 + f2)
        df = (f1 + f2) ** 2 / (f1 * f1 / n2 + f2 * f2 / n1)
    _require_scipy("the min-f test")
    from scipy import stats

    return float(stats.f.sf(statistic, 1, df))


def check_test_data(test: str, seeds: int, products: int) -> str | None:
    """Why `test` cannot run on `seeds` x `products` values (a sentence), or None when it can."""
    if test not in TESTS:
        return f"unknown test {test!r}; expected one of {', '.join(TESTS)}"
    if test in SEED_TESTS and seeds < 2:
        return f"the {test} test pairs runs by seed and needs at least 2 seeds per system, got {seeds}"
    if test != "seeds-t" and products < 2:
        return (f"the {test} test needs at least 2 products per file, got {products} (one product per file gives "
                "nothing to test over)")
    return None


def system_test(a: np.ndarray, b: np.ndarray, test: str, *, seed: int = 0) -> float:
    """Two-sided p-value of `test` (one of `TESTS`) between systems with values `a`, `b` [S, P] (rows paired by
    seed, columns by product). Raises ValueError when the data cannot carry the test (`check_test_data`)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two [seeds, products] arrays of one shape, got {a.shape} and {b.shape}")
    problem = check_test_data(test, *a.shape)
    if problem:
        raise ValueError(problem)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("test values must be finite")
    if test == "min-f":
        return min_f_test(a - b)  # [S, P]
    if test == "seeds-t":
        return paired_test(a.mean(axis=1), b.mean(axis=1), "t")  # [S] each
    return paired_test(a.mean(axis=0), b.mean(axis=0), test.removeprefix("products-"), seed=seed)  # [P] each


def product_means(runs: Sequence[tuple[Sequence[str], np.ndarray]]) -> dict[str, float]:
    """Each product's value averaged over the runs that test it, from `(product_ids, values [P])` per run: the
    unit of the tests over products when runs test different products (each seed with its own split), so that a
    product tested under several seeds is one sample. In order of first appearance."""
    totals: dict[str, list[float]] = {}
    for product_ids, values in runs:
        if len(product_ids) != len(values):
            raise ValueError(f"{len(product_ids)} product ids for {len(values)} values")
        for product, value in zip(product_ids, np.asarray(values, dtype=np.float64).tolist()):
            totals.setdefault(product, []).append(value)
    return {product: float(np.mean(values)) for product, values in totals.items()}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's (1979) step-down adjustment of one family of p-values, in their order: the i-th smallest of m is
    multiplied by m - i + 1 (i from 1), capped at 1, and made non-decreasing along the sorted order. It controls
    the family-wise error rate for any dependence between the tests. A NaN (no test) stays NaN and does not
    count in m."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    running = 0.0
    for rank, index in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (tested.size - rank) * float(p[index])))
        adjusted[index] = running
    return adjusted.tolist()
