"""alignfactory.ablate.stats against known answers: exact McNemar tails, Holm's step-down, paired
bootstrap on constructed arms (b = a + 1, identical arms, a clear gain, pure noise), seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignfactory.ablate.stats import (
    across_seeds,
    bootstrap_ci,
    compare,
    holm,
    mcnemar_exact,
    paired_bootstrap,
)


def pairs(a_only: int, b_only: int, both: int = 0, neither: int = 0) -> tuple[list[bool], list[bool]]:
    """Aligned pass lists with the given discordant and concordant counts."""
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    return a, b


# --- McNemar ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a_only", "b_only", "p"),
    [
        (0, 5, 2 * 0.5**5),  # 0.0625
        (5, 0, 0.0625),  # symmetric in the arms
        (1, 9, 2 * (1 + 10) / 2**10),
        (9, 1, 22 / 1024),
        (2, 8, 2 * (1 + 10 + 45) / 2**10),
        (3, 3, 1.0),  # 2 * 42/64 > 1: capped
        (0, 1, 1.0),
        (0, 0, 1.0),  # no discordant pair
    ],
)
def test_mcnemar_known_p(a_only, b_only, p):
    a, b = pairs(a_only, b_only, both=7, neither=4)  # concordant pairs must not matter
    r = mcnemar_exact(a, b)
    assert r == {"a_only": a_only, "b_only": b_only, "p": pytest.approx(p, rel=1e-12)}


def test_mcnemar_large_n_matches_scipy_or_normal_sanity():
    a, b = pairs(40, 70, both=300, neither=90)
    p = mcnemar_exact(a, b)["p"]
    try:
        from scipy.stats import binomtest
    except ImportError:
        # one-sided tail at k=40 of Bin(110, 1/2): z ~ (40.5 - 55) / sqrt(27.5) ~ -2.77 -> p ~ 0.0057
        assert 0.003 < p < 0.009
    else:
        assert p == pytest.approx(binomtest(40, 110, 0.5).pvalue, rel=1e-9)


def test_mcnemar_length_mismatch():
    with pytest.raises(ValueError, match=r"3.*5"):
        mcnemar_exact([True] * 3, [True] * 5)


# --- Holm ---------------------------------------------------------------------------------------


def test_holm_known_with_monotonicity():
    # raw x rank: a 0.01 x 3 = 0.03; c 0.03 x 2 = 0.06; b 0.04 x 1 = 0.04 -> raised to 0.06 (monotone)
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adj == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    assert list(adj) == ["a", "b", "c"]  # same keys, input order


def test_holm_caps_at_one_and_edge_cases():
    assert holm({"x": 0.6, "y": 0.7, "z": 0.001}) == pytest.approx({"x": 1.0, "y": 1.0, "z": 0.003})
    assert holm({"only": 0.2}) == {"only": 0.2}  # one test: nothing to adjust
    assert holm({}) == {}
    ties = holm({"a": 0.02, "b": 0.02, "c": 0.02})
    assert ties == pytest.approx({"a": 0.06, "b": 0.06, "c": 0.06})
    with pytest.raises(ValueError, match="'bad'"):
        holm({"bad": 1.5})


def test_holm_is_monotone_in_raw_order():
    rng = np.random.default_rng(3)
    raw = {f"k{i}": float(p) for i, p in enumerate(rng.uniform(0, 0.2, size=12))}
    adj = holm(raw)
    order = sorted(raw, key=raw.get)
    assert all(adj[k] >= raw[k] for k in raw)
    assert all(adj[x] <= adj[y] for x, y in zip(order, order[1:], strict=False))


# --- bootstrap ----------------------------------------------------------------------------------


def test_paired_shift_by_one_is_exact():
    a = [0, 1, 0.5, 0.25, 1, 0, 0.75, 1]
    b = [x + 1 for x in a]
    assert paired_bootstrap(a, b) == {"diff": 1.0, "lo": 1.0, "hi": 1.0, "n": 8}


def test_paired_identical_arms():
    a = list(np.random.default_rng(1).normal(size=30))
    assert paired_bootstrap(a, a) == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "n": 30}
    assert compare(a, a, binary=False)["p"] == 1.0


def test_paired_known_gain_excludes_zero():
    rng = np.random.default_rng(7)
    a = rng.normal(0.0, 1.0, size=200)  # per-item difficulty, shared by both arms
    b = a + 0.5 + rng.normal(0.0, 0.2, size=200)
    r = paired_bootstrap(a, b)
    assert r["diff"] == pytest.approx(float(np.mean(b) - np.mean(a)))
    assert 0.4 < r["diff"] < 0.6
    assert 0 < r["lo"] <= r["diff"] <= r["hi"]
    assert compare(a, b, binary=False)["p"] == 0.0  # no resampled diff at or below 0 out of 2000
    assert paired_bootstrap(b, a)["hi"] < 0  # the other way round: a loss


def test_paired_noise_contains_zero():
    rng = np.random.default_rng(11)
    a = rng.normal(0.0, 1.0, size=40)
    b = rng.normal(0.0, 1.0, size=40)
    r = paired_bootstrap(a, b)
    assert r["lo"] < 0 < r["hi"]
    assert compare(a, b, binary=False)["p"] > 0.05


def test_interval_width_shrinks_with_level():
    x = np.random.default_rng(2).normal(size=100)
    wide, narrow = bootstrap_ci(x, level=0.99), bootstrap_ci(x, level=0.5)
    assert wide["lo"] < narrow["lo"] <= narrow["mean"] <= narrow["hi"] < wide["hi"]


@pytest.mark.parametrize("seed", range(6))
def test_intervals_contain_point_estimate(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, 25))
    a = rng.exponential(size=n) ** 3  # skewed, small n: where percentile intervals drift
    b = (rng.random(n) < 0.1).astype(float)
    for values in (a, b, [0.1] * n):
        r = bootstrap_ci(values, n_boot=200, seed=seed)
        assert r["lo"] <= r["mean"] <= r["hi"]
    p = paired_bootstrap(a, b, n_boot=200, seed=seed)
    assert p["lo"] <= p["diff"] <= p["hi"]


def test_same_seed_same_interval_other_seed_differs():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    assert bootstrap_ci(a, seed=3) == bootstrap_ci(a, seed=3)
    assert paired_bootstrap(a, b, seed=3) != paired_bootstrap(a, b, seed=4)


def test_paired_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"len\(a\)=3 != len\(b\)=4"):
        paired_bootstrap([1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"3.*4"):
        compare([1, 0, 1], [1, 0, 1, 1], binary=True)


def test_bootstrap_ci_constant_and_empty():
    assert bootstrap_ci([0.1] * 3) == {"mean": 0.1, "lo": 0.1, "hi": 0.1, "n": 3}
    assert bootstrap_ci([4.0] * 17) == {"mean": 4.0, "lo": 4.0, "hi": 4.0, "n": 17}
    assert bootstrap_ci([]) == {"mean": None, "lo": None, "hi": None, "n": 0}
    assert paired_bootstrap([], []) == {"diff": None, "lo": None, "hi": None, "n": 0}


def test_bootstrap_ci_pass_rate_brackets_truth():
    # 70 passes out of 100: the mean is 0.7 and a 95% interval is about +-0.09 (normal approx)
    r = bootstrap_ci([1] * 70 + [0] * 30)
    assert r["mean"] == pytest.approx(0.7)
    assert 0.58 < r["lo"] < 0.65 and 0.75 < r["hi"] < 0.82


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap([1.0], [2.0], n_boot=0)


# --- across seeds, compare ----------------------------------------------------------------------


def test_across_seeds_known_std():
    r = across_seeds([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])  # mean 5, sum sq dev 32, ddof=1
    assert r["mean"] == 5.0
    assert r["std"] == pytest.approx(math.sqrt(32 / 7))
    assert r["n"] == 8 and r["values"] == [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]
    assert across_seeds([0.3]) == {"mean": 0.3, "std": 0.0, "n": 1, "values": [0.3]}
    assert across_seeds([1.0, 3.0])["std"] == pytest.approx(math.sqrt(2))
    assert across_seeds([])["n"] == 0


def test_compare_binary_uses_mcnemar():
    a_pass, b_pass = pairs(1, 9, both=20, neither=10)  # 40 items
    a = [float(x) for x in a_pass]
    b = [int(x) for x in b_pass]
    r = compare(a, b, binary=True)
    assert r["diff"] == pytest.approx((9 - 1) / 40)
    assert r["lo"] <= r["diff"] <= r["hi"] and r["n"] == 40
    assert (r["a_only"], r["b_only"]) == (1, 9)
    assert r["p"] == pytest.approx(22 / 1024)
    with pytest.raises(ValueError, match="0/1"):
        compare([0.5, 1.0], [1.0, 0.0], binary=True)


def test_compare_continuous_p_is_bootstrap_share():
    rng = np.random.default_rng(9)
    a = rng.normal(size=60)
    b = a + 0.15 + rng.normal(0, 0.6, size=60)
    r = compare(a, b, binary=False, n_boot=4000, seed=1)
    assert set(r) == {"diff", "lo", "hi", "n", "p"}
    # the same resampled diffs, rebuilt here: share at or below 0, doubled
    idx = np.random.default_rng(1).integers(0, 60, size=(4000, 60))
    boot = (b - a)[idx].mean(axis=1)
    side = boot <= 0 if r["diff"] > 0 else boot >= 0
    assert r["p"] == pytest.approx(min(1.0, 2 * float(side.mean())))
    assert 0 < r["p"] < 1
    # agrees with the interval: p < 0.05 exactly when the 95% interval leaves out 0 (up to resolution)
    assert (r["p"] < 0.05) == (r["lo"] > 0 or r["hi"] < 0)
