"""Factorising a dimension into tensor modes (pure Python).

Tensorized layers reshape a dimension ``n`` (features, channels, a vocabulary) into
``num_modes`` modes whose product is ``n`` (or a padded ``n' >= n``). Balanced modes keep
TT/TT-matrix ranks and parameter counts low.

Balance is compared on the modes sorted in descending order, lexicographically: a
factorisation is more balanced if its largest mode is smaller, then if its second
largest is smaller, and so on. So 16 into 3 modes gives (4, 2, 2) rather than (4, 4, 1).
"""

from __future__ import annotations

import functools
import math

__all__ = ["factorize", "padded_factorize"]


def _check(n: int, num_modes: int, fn: str) -> None:
    for name, v in (("n", n), ("num_modes", num_modes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{fn}: {name} must be an int >= 1, got {v!r}.")


def _ceil_root(n: int, k: int) -> int:
    """Smallest integer ``f`` with ``f**k >= n``."""
    if k == 1 or n <= 1:
        return n
    f = max(1, int(round(n ** (1.0 / k))))
    while f**k < n:
        f += 1
    while f > 1 and (f - 1) ** k >= n:
        f -= 1
    return f


@functools.lru_cache(maxsize=4096)
def _divisors(n: int) -> tuple[int, ...]:
    small, large = [], []
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            small.append(d)
            if d * d != n:
                large.append(n // d)
    return tuple(small + large[::-1])


@functools.lru_cache(maxsize=65536)
def _best_exact(n: int, k: int, cap: int) -> tuple[int, ...] | None:
    """Lexicographically smallest descending factorisation of n into k factors <= cap."""
    if k == 1:
        return (n,) if n <= cap else None
    lo = _ceil_root(n, k)
    for f in _divisors(n):
        if f < lo:
            continue
        if f > cap:
            break
        rest = _best_exact(n // f, k - 1, f)
        if rest is not None:
            return (f, *rest)
    return None


def factorize(n: int, num_modes: int) -> tuple[int, ...]:
    """The most balanced exact factorisation of `n` into `num_modes` modes.

    The product of the result is exactly `n`; it is sorted in descending order and may
    contain 1s (a prime `n` gives ``(n, 1, ..., 1)``). "Most balanced" is the
    lexicographically smallest descending tuple, which first minimises the largest mode.

    Examples:
      ``factorize(1024, 3) == (16, 8, 8)``, ``factorize(25088, 6) == (8, 7, 7, 4, 4, 4)``,
      ``factorize(7, 2) == (7, 1)``.

    Args:
      n: the dimension, >= 1.
      num_modes: number of modes, >= 1.

    Returns:
      A tuple of `num_modes` ints with product `n`.

    Raises:
      ValueError: if `n` < 1 or `num_modes` < 1.
    """
    _check(n, num_modes, "factorize")
    # With cap n the search always succeeds; (n, 1, ..., 1) is the fallback shape.
    return _best_exact(n, num_modes, n) or (n,) + (1,) * (num_modes - 1)


def _min_product(n: int, k: int, cap: int) -> tuple[int, tuple[int, ...]] | None:
    """Smallest product >= n of k factors <= cap, with the most balanced such tuple."""
    if cap**k < n:
        return None
    best: list = [None, None]

    def search(rem: int, k_left: int, upper: int, prefix: tuple[int, ...], prod: int) -> None:
        if k_left == 1:
            f = max(rem, 1)
            if f > upper:
                return
            cand = (prod * f, (*prefix, f))
            if best[0] is None or cand < (best[0], best[1]):
                best[0], best[1] = cand
            return
        lo = _ceil_root(rem, k_left)
        for f in range(lo, upper + 1):
            if best[0] is not None and prod * f > best[0]:
                break
            search(-(-rem // f), k_left - 1, f, (*prefix, f), prod * f)

    # Descending tuples are built largest-first; the search over the first factor starts
    # at its smallest feasible value so balanced candidates are found early and prune.
    search(n, k, cap, (), 1)
    return best[0], best[1]


def padded_factorize(
    n: int,
    num_modes: int,
    max_pad_fraction: float = 0.1,
    *,
    max_imbalance: float = 2.0,
) -> tuple[int, ...]:
    """A balanced factorisation of some ``n' >= n`` into `num_modes` modes.

    Used to tensorize dimensions with awkward factors, e.g. a vocabulary of 10,131,227
    (a prime) into 3 modes gives (217, 217, 216) (``n' = 10,171,224``, 0.4% padding).

    Rule:
      1. If the exact factorisation `factorize(n, num_modes)` has
         ``max(modes) <= max_imbalance * min(modes)`` it is returned (no padding).
      2. Otherwise, among all mode tuples with product ``n'`` in
         ``[n, floor(n * (1 + max_pad_fraction))]``, the one with the smallest largest mode
         is returned; ties go to the smallest ``n'``, then to the most balanced tuple.
         If no padded tuple beats the exact factorisation's largest mode, the exact
         factorisation is returned.
    The result is sorted in descending order.

    Args:
      n: the dimension, >= 1.
      num_modes: number of modes, >= 1.
      max_pad_fraction: largest allowed relative padding ``(n' - n) / n``, >= 0.
      max_imbalance: largest/smallest mode ratio at which the exact factorisation is
        accepted without looking at padded sizes.

    Returns:
      A tuple of `num_modes` ints whose product is ``n' >= n``.

    Raises:
      ValueError: if `n` < 1, `num_modes` < 1 or `max_pad_fraction` < 0.
    """
    _check(n, num_modes, "padded_factorize")
    if not max_pad_fraction >= 0:
        raise ValueError(
            f"padded_factorize: max_pad_fraction must be >= 0, got {max_pad_fraction}."
        )
    exact = factorize(n, num_modes)
    if exact[0] <= max_imbalance * exact[-1]:
        return exact
    n_max = math.floor(n * (1 + max_pad_fraction))
    # Raise the cap on the largest mode until some padded size within budget fits under it.
    for cap in range(_ceil_root(n, num_modes), exact[0]):
        found = _min_product(n, num_modes, cap)
        if found is not None and found[0] <= n_max:
            return found[1]
    return exact
