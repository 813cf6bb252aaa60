"""Interval estimates for the metrics the pages and benches show. Plain Python (no torch, no numpy):
web processes import this to put a confidence interval beside a figure without loading torch
(importing mlcore.nn.tagging for it cost the first /learning/ view ~10-40 s, issue 16)."""

from __future__ import annotations

import math

Z_95 = 1.959964  # the standard normal's 97.5th percentile: a two-sided 95% interval


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (Wilson 1927), 95% for the default z.

    Args:
        successes: how many of the n trials succeeded (0 <= successes <= n).
        n: trials.
        z: the normal quantile of the interval's level.

    Returns:
        (low, high) in [0, 1]; (0, 1) when n == 0 (nothing is known).

    Raises:
        ValueError: successes outside [0, n] or n < 0.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion_summary(share: float | None, n: int | None) -> dict | None:
    """A stored proportion with its n, as the pages show it: {"value", "n", "successes", "low",
    "high"} with the 95% Wilson interval. The success count is share × n rounded (the share was
    successes / n when it was measured). None when share or n is missing or n is 0.

    Raises:
        ValueError: share outside [0, 1].
    """
    if share is None or not n:
        return None
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"a proportion must be in [0, 1], got {share}")
    successes = round(share * n)
    low, high = wilson_interval(successes, n)
    return {"value": share, "n": int(n), "successes": successes, "low": low, "high": high}
