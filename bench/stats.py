"""Summaries of latency samples: percentiles by linear interpolation, and ratios.

A benchmark row is a handful of numbers (p50, p95, p99, max) taken from raw samples; the raw
samples are kept in the results JSON too, so a reader can recompute anything. Percentiles
interpolate between the two nearest ranks (numpy's default "linear" method), so p99 of 100
samples lies between the 99th and the 100th value rather than jumping to the maximum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(samples: Sequence[float], *, q: float) -> float:
    """The ``q``-th percentile (0 ≤ q ≤ 100) of ``samples``; NaN for no samples."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile out of range: {q}")
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, kw_only=True)
class LatencySummary:
    """Seconds: count and the usual percentiles of one set of samples."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(samples: Sequence[float]) -> LatencySummary:
    if not samples:
        nan = math.nan
        return LatencySummary(count=0, p50=nan, p95=nan, p99=nan, max=nan, mean=nan)
    return LatencySummary(
        count=len(samples),
        p50=percentile(samples, q=50),
        p95=percentile(samples, q=95),
        p99=percentile(samples, q=99),
        max=max(samples),
        mean=sum(samples) / len(samples),
    )


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when either is missing or the denominator is 0."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator
