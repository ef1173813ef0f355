"""Intervals for timings (scipy.stats): bootstrap of a median and of a ratio, t interval of paired ratios.

- :func:`median_ci`: percentile bootstrap of the median of one cell's repeats. Deterministic (a
  fixed seed). With few repeats it is wide (with 3 values it spans nearly their range): that is
  what three values can say, and the gate reads it that way.
- :func:`ratio_ci`: ``median(new) / median(old)``, each side resampled on its own (two runs of
  ``compare``).
- :func:`paired_ratio_ci`: paired runs (``viperbench ab``): the geometric mean of per-pair
  ratios with a Student t interval on their logarithms.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

RESAMPLES = 2000
LEVEL = 0.95
SEED = 20240611


def _bootstrap(samples: tuple, statistic) -> tuple[float, float]:
    if all(len(set(s)) == 1 for s in samples):  # no spread to resample
        value = float(statistic(*samples, axis=-1))
        return value, value
    res = stats.bootstrap(samples, statistic, n_resamples=RESAMPLES, confidence_level=LEVEL, method="percentile",
                          vectorized=True, random_state=np.random.default_rng(SEED))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def median_ci(values: list[float]) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval of the median of ``values``."""
    values = [float(v) for v in values]
    if len(values) < 2:
        return values[0], values[0]
    return _bootstrap((values,), np.median)


def ratio_ci(new: list[float], old: list[float]) -> tuple[float, float, float]:
    """``median(new) / median(old)`` and its bootstrap 95% interval: (point, low, high)."""
    new, old = [float(v) for v in new], [float(v) for v in old]
    point = float(np.median(new) / np.median(old))
    if len(new) < 2 or len(old) < 2:
        return point, point, point
    low, high = _bootstrap((new, old), lambda n, o, axis: np.median(n, axis=axis) / np.median(o, axis=axis))
    return point, low, high


def paired_ratio_ci(ratios: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Geometric mean of paired ratios with a Student t interval on their logs: (point, low, high)."""
    logs = np.log(np.asarray(ratios, dtype=float))
    mean = float(logs.mean())
    if logs.size < 2:
        return math.exp(mean), math.exp(mean), math.exp(mean)
    half = float(stats.t.ppf(1 - (1 - level) / 2, logs.size - 1) * logs.std(ddof=1) / math.sqrt(logs.size))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)
