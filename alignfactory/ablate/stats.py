"""Statistics for ablations: is variant B better than variant A on the same eval items, and how sure.

    bootstrap_ci(values)          mean of one arm, percentile bootstrap interval over items
    paired_bootstrap(a, b)        mean(b) - mean(a) on aligned items, interval from resampling items
                                  (the same indices for both arms, so per-item difficulty cancels)
    mcnemar_exact(a_pass, b_pass) exact two-sided McNemar on the discordant pairs (pass/fail metrics)
    holm(pvalues)                 Holm-Bonferroni adjustment over the comparisons of one ablation
    across_seeds(per_seed)        mean and sample std of one metric over training seeds
    compare(a, b, binary)         paired_bootstrap + a p-value: McNemar when binary, else bootstrap

Every interval contains its point estimate; the same seed gives the same interval. Pure Python + numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

# Cap on one block of resampled indices (elements), so n_boot x n items never needs one huge array.
_BLOCK = 4_000_000


def _array(values: Sequence[float], name: str) -> np.ndarray:
    x = np.asarray(values, dtype=float).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} has non-finite values (NaN or inf)")
    return x


def _check(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _boot_means(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot,) means of x resampled with replacement; indices (rows, n) drawn block by block."""
    rng = np.random.default_rng(seed)
    n = len(x)
    rows = max(1, _BLOCK // n)
    out = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))  # (rows, n) item indices
        out[start:stop] = x[idx].mean(axis=1)
    return out


def _estimate(x: np.ndarray, n_boot: int, seed: int, level: float) -> tuple[float, float, float, np.ndarray]:
    """(mean, lo, hi, boot means) of a non-empty x: percentile bootstrap interval at `level`."""
    if x.min() == x.max():
        # No spread: the mean and every resampled mean are exactly x[0] (np.mean would round, e.g.
        # mean([0.1] * 3) = 0.10000000000000002).
        v = float(x[0])
        return v, v, v, np.full(n_boot, v)
    mean = float(x.mean())
    boot = _boot_means(x, n_boot, seed)
    alpha = 1.0 - level
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    # The percentile interval can miss the point estimate by float error alone (the resampled sums
    # round differently from the full one): clip so lo <= mean <= hi always holds.
    return mean, min(float(lo), mean), max(float(hi), mean), boot


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """{"mean", "lo", "hi", "n"}: the plain mean and its percentile bootstrap interval over items."""
    _check(n_boot, level)
    x = _array(values, "values")
    if len(x) == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    mean, lo, hi, _ = _estimate(x, n_boot, seed, level)
    return {"mean": mean, "lo": lo, "hi": hi, "n": len(x)}


def _paired(a, b, n_boot, seed, level) -> tuple[dict, np.ndarray | None]:
    _check(n_boot, level)
    xa, xb = _array(a, "a"), _array(b, "b")
    if len(xa) != len(xb):
        raise ValueError(f"paired arms must be aligned by item: len(a)={len(xa)} != len(b)={len(xb)}")
    if len(xa) == 0:
        return {"diff": None, "lo": None, "hi": None, "n": 0}, None
    # Resampling item indices of d = b - a is resampling the same indices in both arms. The point
    # estimate mean(d) equals mean(b) - mean(a) and shares the interval's arithmetic, so b = a + 1
    # gives diff == lo == hi == 1 rather than two separately rounded means.
    d = xb - xa
    diff, lo, hi, boot = _estimate(d, n_boot, seed, level)
    return {"diff": diff, "lo": lo, "hi": hi, "n": len(d)}, boot


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict:
    """{"diff": mean(b) - mean(a), "lo", "hi", "n"}; a and b hold the same eval items in the same order."""
    return _paired(a, b, n_boot, seed, level)[0]


def _binom_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Bin(n, 0.5), exact: integer sum over 2**n (int / int rounds correctly)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def mcnemar_exact(a_pass: Sequence[bool], b_pass: Sequence[bool]) -> dict:
    """Exact two-sided McNemar: {"a_only", "b_only", "p"} with p = min(1, 2 P(X <= min(a_only, b_only))),
    X ~ Bin(a_only + b_only, 1/2), the binomial test on the discordant pairs.

    Concordant pairs carry no information about which arm is better; with no discordant pair p = 1.0.
    """
    if len(a_pass) != len(b_pass):
        raise ValueError(f"paired arms must be aligned by item: len(a)={len(a_pass)} != len(b)={len(b_pass)}")
    a_only = sum(1 for x, y in zip(a_pass, b_pass, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a_pass, b_pass, strict=True) if y and not x)
    n = a_only + b_only
    p = 1.0 if n == 0 else min(1.0, 2 * _binom_cdf_half(min(a_only, b_only), n))
    return {"a_only": a_only, "b_only": b_only, "p": p}


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values, same keys: the i-th smallest (0-based) of m times m - i, capped
    at 1, then a running max so a smaller raw p never gets a larger adjusted one (step-down)."""
    for key, p in pvalues.items():
        if not 0 <= p <= 1:
            raise ValueError(f"p-value for {key!r} must be in [0, 1], got {p}")
    m = len(pvalues)
    out: dict[str, float] = {}
    running = 0.0
    for i, key in enumerate(sorted(pvalues, key=pvalues.__getitem__)):
        running = max(running, min(1.0, (m - i) * pvalues[key]))
        out[key] = running
    return {key: out[key] for key in pvalues}


def across_seeds(per_seed: Sequence[float]) -> dict:
    """{"mean", "std", "n", "values"}: std is the sample std (ddof=1), 0.0 for one seed, None for none."""
    x = _array(per_seed, "per_seed")
    values = [float(v) for v in x]
    if len(x) == 0:
        return {"mean": None, "std": None, "n": 0, "values": values}
    std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    return {"mean": float(x.mean()), "std": std, "n": len(x), "values": values}


def compare(a: Sequence[float], b: Sequence[float], binary: bool, n_boot: int = 2000, seed: int = 0) -> dict:
    """paired_bootstrap(a, b) plus "p" (and, when binary, McNemar's "a_only" and "b_only").

    binary: a and b are pass/fail per item (0/1 or bools); p is exact McNemar.
    otherwise: p is the two-sided paired-bootstrap p-value, the share of resampled diffs on the other
    side of 0 from the observed diff (ties at 0 count as the other side), doubled, capped at 1; 1.0 when
    the observed diff is 0. Its resolution is 1 / n_boot: 0.0 means below that, not impossible.
    """
    result, boot = _paired(a, b, n_boot, seed, 0.95)
    if binary:
        for name, arm in (("a", a), ("b", b)):
            if any(v not in (0, 1) for v in arm):
                raise ValueError(f"binary=True but {name} has values other than 0/1")
        return {**result, **mcnemar_exact([bool(v) for v in a], [bool(v) for v in b])}
    if boot is None or result["diff"] == 0:
        return {**result, "p": 1.0}
    other_side = boot <= 0 if result["diff"] > 0 else boot >= 0
    return {**result, "p": min(1.0, 2 * float(other_side.mean()))}
