"""Bootstrap confidence intervals: pure functions of plain numbers, seeded, no I/O.

Percentile bootstrap (Efron): resample the units with replacement `n_boot` times, recompute the
statistic each time, and take the (alpha/2, 1 - alpha/2) quantiles of the recomputed values.
Units are what is independent: one prompt, one response. Ratios of sums (perplexity, per-token
log-prob shift, per-token KL) resample numerator and denominator together, unit by unit.

Every function returns the same shape, `Estimate.as_dict()`:
    {"value": point estimate on the full sample, "ci_low", "ci_high", "n": units, "level": 0.95}
with NaN bounds (and value NaN when there are no units) where no interval exists.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

N_BOOT = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    value: float
    ci_low: float
    ci_high: float
    n: int
    level: float = LEVEL

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] resampling indices from a private, seeded generator (never the global RNG)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [tail, 1.0 - tail])
    return float(lo), float(hi)


def bootstrap_mean(values: Sequence[float], *, n_boot: int = N_BOOT, level: float = LEVEL,
                   seed: int = 0) -> Estimate:
    """Mean of `values` (a rate when they are 0/1 flags) with a percentile bootstrap interval.

    NaN values (e.g. an unparseable judge verdict) are dropped before anything is computed.
    """
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, level)
    if x.size == 1:
        return Estimate(float(x[0]), math.nan, math.nan, 1, level)
    means = x[_indices(x.size, n_boot, seed)].mean(axis=1)
    return Estimate(float(x.mean()), *_interval(means, level), int(x.size), level)


def bootstrap_ratio(numerators: Sequence[float], denominators: Sequence[float], *,
                    transform: Callable[[np.ndarray], np.ndarray] | None = None, n_boot: int = N_BOOT,
                    level: float = LEVEL, seed: int = 0) -> Estimate:
    """sum(num) / sum(den), optionally transformed (e.g. exp(-x) for perplexity), with a CI.

    Each unit i contributes (num[i], den[i]); a resample draws units, so a long response weighs as
    much in a resample as in the estimate. The interval of a monotone transform is the transform
    of the interval (sorted, so decreasing transforms work too).
    """
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if num.shape != den.shape:
        raise ValueError(f"{num.size} numerators but {den.size} denominators")
    f = transform or (lambda v: v)
    if num.size == 0 or den.sum() == 0:
        return Estimate(math.nan, math.nan, math.nan, int(num.size), level)
    value = float(f(np.asarray(num.sum() / den.sum())))
    if num.size == 1:
        return Estimate(value, math.nan, math.nan, 1, level)
    idx = _indices(num.size, n_boot, seed)
    d = den[idx].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(d > 0, num[idx].sum(axis=1) / np.where(d > 0, d, 1.0), np.nan)
    lo, hi = _interval(f(ratios), level)
    return Estimate(value, min(lo, hi), max(lo, hi), int(num.size), level)


def bootstrap_statistic(units: Sequence, statistic: Callable[[list], float], *, n_boot: int = N_BOOT,
                        level: float = LEVEL, seed: int = 0) -> Estimate:
    """Any statistic of a list of units, resampled by unit.

    Only for statistics that duplicated units do not bias: a set-based one (e.g. corpus-level
    distinct-n) drops under resampling with replacement, and its interval misses its own value.
    """
    units = list(units)
    if not units:
        return Estimate(math.nan, math.nan, math.nan, 0, level)
    value = float(statistic(units))
    if len(units) == 1:
        return Estimate(value, math.nan, math.nan, 1, level)
    stats = np.array([statistic([units[i] for i in row]) for row in _indices(len(units), n_boot, seed)],
                     dtype=np.float64)
    return Estimate(value, *_interval(stats, level), len(units), level)
