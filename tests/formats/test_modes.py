"""Tests of tnjax.formats.modes: balanced (padded) factorisations."""

import itertools
import math

import pytest

from tnjax.formats import modes


def _brute_force(n, k):
    best = None
    divs = [d for d in range(1, n + 1) if n % d == 0]
    for combo in itertools.product(divs, repeat=k):
        if math.prod(combo) == n:
            cand = tuple(sorted(combo, reverse=True))
            best = cand if best is None or cand < best else best
    return best


def test_examples():
    assert modes.factorize(1024, 3) == (16, 8, 8)
    assert modes.factorize(25088, 6) == (8, 7, 7, 4, 4, 4)
    assert modes.factorize(4096, 6) == (4, 4, 4, 4, 4, 4)
    assert modes.factorize(16, 3) == (4, 2, 2)
    assert modes.factorize(7, 2) == (7, 1)
    assert modes.factorize(1, 3) == (1, 1, 1)
    assert modes.factorize(12, 1) == (12,)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_matches_brute_force(k):
    for n in range(1, 97 if k < 4 else 49):
        got = modes.factorize(n, k)
        assert math.prod(got) == n and len(got) == k
        assert got == _brute_force(n, k), n


def test_padded_prime_vocabulary():
    n = 10_131_227  # prime
    got = modes.padded_factorize(n, 3)
    assert len(got) == 3 and n <= math.prod(got) <= 1.1 * n
    assert max(got) <= 220 and min(got) >= 200
    assert got == (217, 217, 216)


def test_padded_prefers_balanced_exact():
    assert modes.padded_factorize(1024, 3) == (16, 8, 8)
    assert modes.padded_factorize(1000, 3) == (10, 10, 10)
    assert modes.padded_factorize(10_000_000, 3) == (250, 200, 200)


@pytest.mark.parametrize("n,k", [(30522, 3), (13, 3), (97, 2), (1_000_003, 4), (50257, 2)])
def test_padded_properties(n, k):
    got = modes.padded_factorize(n, k, 0.05)
    assert len(got) == k and list(got) == sorted(got, reverse=True)
    assert n <= math.prod(got) <= math.floor(n * 1.05) or got == modes.factorize(n, k)
    assert max(got) <= max(modes.factorize(n, k))


def test_zero_padding_gives_exact():
    assert modes.padded_factorize(97, 2, 0.0) == (97, 1)


@pytest.mark.parametrize("bad", [(0, 2), (5, 0), (-3, 2), (2.0, 2), (True, 2)])
def test_bad_inputs(bad):
    with pytest.raises(ValueError):
        modes.factorize(*bad)
    with pytest.raises(ValueError):
        modes.padded_factorize(*bad)
    with pytest.raises(ValueError, match="max_pad_fraction"):
        modes.padded_factorize(10, 2, -0.1)
