"""The statistics of a study: paired differences over seeds and their Student t-intervals.

A study trains every method at the same seeds with the same encoder init, data order and views
(:mod:`cacr_lab.study`), so two methods are compared seed by seed: the paired differences
``d_s = a_s - b_s`` remove what a seed does to both. Over n seeds their mean has the Student
t-interval ``mean ± t(1 - α/2, n - 1) · sd / √n`` (sd with n - 1 in the denominator), the
interval :func:`t_interval` gives. With n = 3 seeds, t(0.975, 2) = 4.30: an interval is wide
unless the differences agree closely.

Pure functions of numbers (no torch, no files); scipy (a dependency of scikit-learn) gives the t
quantile.

>>> iv = t_interval([1.0, 2.0, 3.0])
>>> round(iv.mean, 3), round(iv.lo, 3), round(iv.hi, 3), iv.excludes_zero
(2.0, -0.484, 4.484, False)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Interval", "half_means", "paired_differences", "rare_frequent_halves", "t_interval"]


@dataclass(frozen=True)
class Interval:
    """A mean over n values with its two-sided t-interval (``lo``, ``hi``; NaN when n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int
    sd: float  # sample standard deviation (n - 1); NaN when n < 2
    confidence: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or below 0 (False without an interval)."""
        return self.n >= 2 and (self.lo > 0 or self.hi < 0)

    def text(self, scale: float = 100.0, digits: int = 2, signed: bool = True) -> str:
        """``"+1.23 [-0.45, +2.91]"`` in units of ``scale`` (100: fractions as percent points);
        ``signed=False`` for accuracies.

        >>> Interval(0.0123, -0.0045, 0.0291, 3, 0.007).text()
        '+1.23 [-0.45, +2.91]'
        >>> Interval(0.5, math.nan, math.nan, 1, math.nan).text(signed=False)
        '50.00 [n/a: 1 seed]'
        """
        if math.isnan(self.mean):
            return "n/a"
        f = f"{'+' if signed else ''}.{digits}f"
        if self.n < 2:
            return f"{scale * self.mean:{f}} [n/a: {self.n} seed]"
        return f"{scale * self.mean:{f}} [{scale * self.lo:{f}}, {scale * self.hi:{f}}]"


def _finite(xs: Iterable[float | None]) -> list[float]:
    return [float(x) for x in xs if x is not None and not math.isnan(float(x))]


def t_interval(xs: Iterable[float | None], confidence: float = 0.95) -> Interval:
    """Mean of ``xs`` and its Student t-interval with n - 1 degrees of freedom.

    None and NaN entries are skipped (a class absent from a test split); with one value the
    bounds are NaN, with none the mean is NaN too. Equals ``scipy.stats.t.interval(confidence,
    n - 1, loc=mean, scale=sd / sqrt(n))``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence!r}")
    vals = _finite(xs)
    n = len(vals)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan, confidence)
    mean = statistics.fmean(vals)
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, math.nan, confidence)
    from scipy.stats import t

    sd = statistics.stdev(vals)
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd, confidence)


def paired_differences(
    a: Mapping[int, float | None], b: Mapping[int, float | None]
) -> dict[int, float]:
    """``a[s] - b[s]`` for every seed ``s`` both hold a finite value of, in seed order.

    >>> paired_differences({0: 0.75, 1: 0.5, 2: None}, {1: 0.25, 0: 0.25, 2: 0.5, 3: 0.0})
    {0: 0.5, 1: 0.25}
    """
    out = {}
    for s in sorted(set(a) & set(b)):
        x, y = a[s], b[s]
        if x is None or y is None or math.isnan(x) or math.isnan(y):
            continue
        out[s] = x - y
    return out


def rare_frequent_halves(counts: list[int]) -> tuple[list[int], list[int]]:
    """The class indices of the rarer and the more frequent half of a pre-training set.

    ``counts[c]``: images of class c. The ``C // 2`` classes with the fewest images (ties: the
    lower index first) are the rare half, the ``C // 2`` with the most the frequent half; with
    an odd C the middle class is in neither.

    >>> rare_frequent_halves([1, 4, 11, 30, 82])
    ([0, 1], [3, 4])
    """
    order = sorted(range(len(counts)), key=lambda c: (counts[c], c))
    h = len(counts) // 2
    return sorted(order[:h]), sorted(order[len(counts) - h :])


def half_means(per_class: list[float | None], classes: list[int]) -> float:
    """Mean accuracy over ``classes`` (NaN / None entries skipped; NaN if none is left).

    >>> half_means([1.0, 0.5, None, 0.0], [0, 1, 2])
    0.75
    """
    vals = _finite(per_class[c] for c in classes)
    return statistics.fmean(vals) if vals else math.nan
