"""Confidence intervals for per-frame measures: the moving-block bootstrap.

Neighbouring video frames are not independent (a mouth stays open for several
frames), so resampling single frames would give intervals far too narrow.
The moving-block bootstrap (Kunsch 1989) resamples runs of BLOCK_S seconds
instead: each resample is ceil(n / b) blocks of b consecutive frames, each
starting at a uniformly random frame, cut to n frames. The 95 % interval is
the 2.5th to 97.5th percentile of the statistic over RESAMPLES resamples
(percentile method). The generator is seeded: a report is reproducible.

Two generators are compared on the *same* resamples (paired): the interval of
the difference of their statistics says whether they can be told apart (it
excludes 0) or not.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

BLOCK_S = 1.0          # seconds per block: longer than a syllable's mouth movement
RESAMPLES = 1000
LEVEL = 0.95
SEED = 0
MIN_BLOCKS = 3         # fewer blocks than this per run and the block is shortened


def block_indices(n: int, fps: float, resamples: int = RESAMPLES, block_s: float = BLOCK_S,
                  seed: int = SEED) -> np.ndarray:
    """Frame indices of each resample: int64 (resamples, n).

    A run shorter than MIN_BLOCKS blocks uses shorter blocks (n // MIN_BLOCKS frames),
    so resamples still differ; such intervals are rough, and the report's lengths say so.
    """
    if n <= 0:
        return np.zeros((resamples, 0), np.int64)
    b = int(max(1, min(round(block_s * fps), n // MIN_BLOCKS)))
    k = -(-n // b)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - b + 1, size=(resamples, k))
    idx = (starts[:, :, None] + np.arange(b)).reshape(resamples, -1)
    return idx[:, :n]


def interval(samples: np.ndarray, level: float = LEVEL) -> list[float]:
    """Percentile interval of bootstrap samples, ignoring NaN."""
    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s)]
    if not len(s):
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(s, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair of (R, n) arrays; 0 where a row is constant."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    return np.where(den > 1e-12, (a * b).sum(-1) / np.maximum(den, 1e-12), 0.0)


def correlation(a: np.ndarray, b: np.ndarray, idx: np.ndarray) -> tuple[float, np.ndarray]:
    """Pearson correlation of two per-frame series and its bootstrap samples over ``idx``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(rowwise_pearson(a[None], b[None])[0]), rowwise_pearson(a[idx], b[idx])


def mean(x: np.ndarray, idx: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean of a per-frame series and its bootstrap samples."""
    x = np.asarray(x, np.float64)
    return float(x.mean()), x[idx].mean(axis=1)


def spread_ratio(gen: np.ndarray, real: np.ndarray, idx: np.ndarray | None = None,
                 stat: Callable[[np.ndarray], np.ndarray] | None = None,
                 paired: bool = True) -> tuple[float, np.ndarray]:
    """Ratio of the spread of two series (std by default) and its bootstrap samples.

    ``paired``: ``real`` is frame-paired with ``gen`` and resampled with it; otherwise
    ``real`` is an independent reference and only ``gen`` is resampled.
    """
    stat = stat or (lambda x: x.std(axis=-1))
    g, r = np.asarray(gen, np.float64), np.asarray(real, np.float64)
    value = float(stat(g[None])[0] / max(float(stat(r[None])[0]), 1e-12))
    if idx is None:
        return value, np.array([])
    if paired:
        samples = stat(g[idx]) / np.maximum(stat(r[idx]), 1e-12)
    else:
        samples = stat(g[idx]) / max(float(stat(r[None])[0]), 1e-12)
    return value, samples


def p90_spread(x: np.ndarray) -> np.ndarray:
    """90th minus 10th percentile along the last axis: how far the open mouths go beyond the closed ones."""
    p = np.percentile(x, [10, 90], axis=-1)
    return p[1] - p[0]


def summary(value: float, samples: np.ndarray, digits: int = 4) -> dict:
    """``{"value": v, "ci95": [lo, hi]}`` rounded for a report."""
    lo, hi = interval(samples) if len(samples) else (float("nan"), float("nan"))
    r = lambda v: None if not np.isfinite(v) else round(float(v), digits)
    return {"value": r(value), "ci95": [r(lo), r(hi)]}


def compare(name_a: str, name_b: str, metric: str, samples_a: np.ndarray, samples_b: np.ndarray,
            value_a: float, value_b: float, digits: int = 4) -> dict:
    """Paired comparison on shared resamples: the difference a - b, its interval, and whether it excludes 0."""
    diff = np.asarray(samples_a) - np.asarray(samples_b)
    lo, hi = interval(diff)
    apart = bool(np.isfinite(lo) and hi > lo and (lo > 0 or hi < 0))    # a zero-width interval says nothing
    return {"a": name_a, "b": name_b, "metric": metric, "difference": round(value_a - value_b, digits),
            "ci95": [round(lo, digits), round(hi, digits)], "distinguishable": apart,
            "verdict": (f"{name_a} {'higher' if lo > 0 else 'lower'} than {name_b}" if apart
                        else f"{name_a} and {name_b} cannot be told apart")}
