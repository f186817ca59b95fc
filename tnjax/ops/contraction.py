"""Generalised einsum with convolution modes, planned from static shapes.

`contract("bhws,hwst->bhwt|hw", x, w)` is a 2-D convolution layer: every mode listed
after `|` is convolved (cross-correlation, as in `jax.lax.conv_general_dilated`) between
the two operands that carry it; the other modes follow `jnp.einsum`: a mode shared by
operands and kept in the output is a batch (partial outer) product, one that is dropped
is summed, one that appears in a single operand is carried or summed.

For a convolved mode, the first operand (left to right in the spec) that carries it is
the *signal* (e.g. the image, size H) and the second is the *filter* (size K); the output
size is `(H + pad_lo + pad_hi - dilation*(K-1) - 1) // stride + 1`. All convolved modes
must have the same signal operand.

The pairwise contraction order is planned in Python from the static shapes (so it is free
under `jit`) and cached per (spec, shapes, dtypes, conv options, strategy). Candidate
orders (an exact subset DP on the cost model, the FLOP-optimal order, opt_einsum's
`optimal`/`dp`/`greedy`/`auto`, reconstruct-the-small-operands-first, left-to-right) are
scored by a roofline cost model of FLOPs and memory traffic (`CostModel`), in which a
convolution step costs `out_size * kernel_size` per convolved mode rather than the single
mode size opt_einsum would assume. `optimize="autotune"` instead times the distinct
candidates once per (spec, shapes, dtypes, backend) and caches the winner in memory and,
when asked, on disk.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import string
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum

from tnjax.ops.convolution import grouped_conv, resolve_impl

__all__ = [
    "CostModel",
    "PathCost",
    "ContractionPlan",
    "contract",
    "contract_path",
    "clear_plan_cache",
]

Path = tuple[tuple[int, ...], ...]

_AUTOTUNE_ROUNDS = 7
_DP_MAX_OPERANDS = 10  # 3**10 subset splits: well under a second of planning.


# --------------------------------------------------------------------------- cost model


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Roofline estimate of a pairwise contraction's time.

    time = flops / flops_per_second + (bytes read + bytes written) / bytes_per_second
           + op_overhead_seconds

    Attributes:
      flops_per_second: sustained matmul rate of the device.
      bytes_per_second: sustained memory bandwidth of the device.
      op_overhead_seconds: fixed cost of launching one pairwise operation.
    """

    flops_per_second: float
    bytes_per_second: float
    op_overhead_seconds: float

    def seconds(self, flops: float, bytes_moved: float, num_ops: int = 1) -> float:
        return (
            flops / self.flops_per_second
            + bytes_moved / self.bytes_per_second
            + num_ops * self.op_overhead_seconds
        )


# Machine balance (flops per byte) is what matters for ranking paths; the absolute numbers
# are typical of each backend. The CPU figures were fitted on a 2-core x86 VM (float32
# matmul ~90 GFLOP/s) so that the measured order of candidate paths is reproduced.
DEFAULT_COST_MODELS: dict[str, CostModel] = {
    "cpu": CostModel(flops_per_second=9e10, bytes_per_second=6e9, op_overhead_seconds=5e-6),
    "gpu": CostModel(flops_per_second=2e13, bytes_per_second=1e12, op_overhead_seconds=5e-6),
    "tpu": CostModel(flops_per_second=1e14, bytes_per_second=1e12, op_overhead_seconds=5e-6),
}


# The roofline ranks paths only to within about this fraction of their time: XLA's speed on
# a pairwise step also depends on its layout (which dims are batch, which transposes it
# needs), which the model does not see. Candidates estimated within the margin of the best
# are treated as ties and the one with the fewest FLOPs wins. Measured on this CPU
# (docs/benchmarks.md): TT-matrix 1024x1024 r8 B=256 went from memory_dp (1.17x
# jnp.einsum's time) to cost_dp (0.97x); the Novikov case keeps memory_dp (the
# FLOP-optimal order is 2.4x slower there and 1.3x+ more expensive in the model).
COST_TIE_MARGIN = 0.10


def _cost_ties(scored: Mapping[str, PathCost]) -> list[str]:
    """Names of the candidates estimated within `COST_TIE_MARGIN` of the best."""
    best = min(c.seconds for c in scored.values())
    return [k for k, c in scored.items() if c.seconds <= (1.0 + COST_TIE_MARGIN) * best]


def _cost_choice(scored: Mapping[str, PathCost]) -> str:
    """The cost strategy's pick: fewest FLOPs among the candidates within the tie margin."""
    return min(_cost_ties(scored), key=lambda k: (scored[k].flops, scored[k].seconds))


def _default_cost_model() -> CostModel:
    return DEFAULT_COST_MODELS.get(jax.default_backend(), DEFAULT_COST_MODELS["gpu"])


@dataclasses.dataclass(frozen=True)
class PathCost:
    """Figures of one contraction order.

    Attributes:
      path: pairwise steps in opt_einsum's format (positions in the running operand list;
        the result of each step is appended at the end).
      flops: multiply-adds counted as 2 FLOPs, convolution modes counted as
        output_size * kernel_size.
      bytes_written: bytes of all intermediates and the result.
      bytes_read: bytes of all operands read by the pairwise steps.
      largest_intermediate: elements of the largest intermediate (or result).
      seconds: the cost model's time estimate.
    """

    path: Path
    flops: int
    bytes_written: int
    bytes_read: int
    largest_intermediate: int
    seconds: float


# --------------------------------------------------------------------------- parsing


@dataclasses.dataclass(frozen=True)
class _Problem:
    """A validated contraction: terms, sizes and convolution geometry (all static)."""

    terms: tuple[str, ...]  # one mode string per operand, no repeated modes
    output: str
    conv_modes: tuple[str, ...]  # in the order written after "|"
    sizes: tuple[tuple[tuple[str, int], ...], ...]  # per operand: (mode, size) pairs
    signal: int  # operand index of the signal for every conv mode (-1 if none)
    conv_geometry: tuple[tuple[str, int, int, int, int, int], ...]  # mode, K, stride,
    # dilation, pad_lo, pad_hi
    itemsizes: tuple[int, ...]
    out_itemsize: int

    def size_of(self, operand: int, mode: str) -> int:
        return dict(self.sizes[operand])[mode]


def _spare_modes(used: set[str], count: int) -> list[str]:
    """`count` mode letters not in `used`: ASCII letters from the end, then opt_einsum's."""
    spare = [c for c in reversed(string.ascii_letters) if c not in used]
    i = 0
    while len(spare) < count:
        c = opt_einsum.get_symbol(i)
        if c not in used and c not in spare and c.isalpha():
            spare.append(c)
        i += 1
    return spare[:count]


def _implicit_output(terms: Sequence[str], first: str = "") -> str:
    """numpy's implicit output: `first` (the ellipsis modes), then the modes that appear
    exactly once, sorted."""
    counts: dict[str, int] = {}
    for t in terms:
        for c in t:
            counts[c] = counts.get(c, 0) + 1
    return first + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in first))


def _expand_ellipsis(terms: list[str], output: str | None, ndims: Sequence[int]):
    used = set("".join(terms) + (output or ""))
    max_ell = 0
    for term, nd in zip(terms, ndims, strict=True):
        if "..." in term:
            max_ell = max(max_ell, nd - (len(term) - 3))
    ell = "".join(_spare_modes(used, max_ell)[::-1])
    new_terms = []
    for term, nd in zip(terms, ndims, strict=True):
        if "..." in term:
            k = nd - (len(term) - 3)
            if k < 0:
                raise ValueError(f"operand with term {term!r} has only {nd} dimensions")
            new_terms.append(term.replace("...", ell[max_ell - k :]))
        else:
            new_terms.append(term)
    if output is not None and "..." in output:
        output = output.replace("...", ell)
    elif output is None:  # numpy: the broadcast (ellipsis) dimensions lead the output
        output = _implicit_output(new_terms, ell)
    return new_terms, output, ell


def _is_mode(c: str) -> bool:
    return c.isalpha()


def canonical_spec(
    spec: str, shapes: Sequence[tuple[int, ...]]
) -> tuple[str, tuple[tuple[int, ...], ...]]:
    """What `jnp.einsum` accepts, in the form the planner takes: ellipses expanded (an
    implicit output keeps them, as numpy does), the output written out, and size-1
    dimensions that broadcast against a larger size dropped from their operand.

    Returns:
      (spec without "..." and with "->", the axes to squeeze from each operand).

    Raises:
      ValueError: naming what is wrong (no operands, an operand count that does not match,
        characters that are not modes, too few dimensions for an ellipsis term).
    """
    if not isinstance(spec, str):
        raise ValueError(f"spec must be a string, got {type(spec).__name__}")
    if not shapes:
        raise ValueError(f"contract needs at least one operand (spec {spec!r})")
    body = spec.replace(" ", "")
    conv_part = ""
    if "|" in body:
        body, conv_part = body.split("|", 1)
    if body.count("->") > 1:
        raise ValueError(f"spec {spec!r} has more than one '->'")
    lhs, arrow, output = body.partition("->")
    output = output if arrow else None
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(
            f"spec {spec!r} names {len(terms)} operand{'s' * (len(terms) != 1)} but "
            f"{len(shapes)} were given "
            f"(shapes {list(shapes)})"
        )
    for t in terms + ([output] if output is not None else []):
        bad = sorted({c for c in t.replace("...", "") if not _is_mode(c)})
        if bad:
            raise ValueError(
                f"spec {spec!r}: modes must be letters (any alphabet) or '...', found {bad}"
            )
    if any("..." in t for t in terms) or (output and "..." in output):
        if conv_part:
            raise ValueError(f"spec {spec!r}: '...' cannot be combined with convolved modes")
        terms, output, _ = _expand_ellipsis(terms, output, [len(s) for s in shapes])
    elif output is None and not conv_part:
        output = _implicit_output(terms)
    squeeze: list[tuple[int, ...]] = [() for _ in shapes]
    if len(terms) > 1:
        largest: dict[str, int] = {}
        for t, shape in zip(terms, shapes, strict=True):
            if len(t) == len(shape):
                for c, n in zip(t, shape, strict=True):
                    largest[c] = max(largest.get(c, 1), n)
        conv = set(conv_part)
        for i, (t, shape) in enumerate(zip(terms, shapes, strict=True)):
            if len(t) != len(shape):
                continue  # _parse names the mismatch
            drop = tuple(
                a
                for a, (c, n) in enumerate(zip(t, shape, strict=True))
                if n == 1 and largest[c] > 1 and c not in conv and t.count(c) == 1
            )
            if drop:
                squeeze[i] = drop
                terms[i] = "".join(c for a, c in enumerate(t) if a not in drop)
    out = "" if output is None else "->" + output
    conv = "|" + conv_part if conv_part else ""
    return ",".join(terms) + out + conv, tuple(squeeze)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _positive_ints(name: str, value: Any, conv_modes: Sequence[str]) -> tuple[int, ...]:
    """strides / dilation: an int >= 1, or one per convolved mode (sequence or dict)."""
    per_mode = _normalize_per_mode(name, value, conv_modes, 1)
    for m, v in zip(conv_modes, per_mode, strict=True):
        if not _is_int(v) or int(v) < 1:
            raise ValueError(
                f"{name}={value!r}: mode {m!r} needs an int >= 1, got {v!r} ({type(v).__name__})"
            )
    return tuple(int(v) for v in per_mode)


def _paddings(padding: Any, conv_modes: Sequence[str]) -> tuple[Any, ...]:
    """padding: "VALID"/"SAME"/"SAME_LOWER", an int, a (low, high) pair (with one convolved
    mode), or one of those per convolved mode (sequence or dict)."""
    if padding is None or isinstance(padding, str) or _is_int(padding):
        per_mode = tuple((padding or "VALID") for _ in conv_modes)
    elif (
        len(conv_modes) == 1
        and isinstance(padding, Sequence)
        and len(padding) == 2
        and not any(isinstance(p, (str, Sequence)) for p in padding)
    ):
        per_mode = (tuple(padding),)
    else:
        per_mode = _normalize_per_mode("padding", padding, conv_modes, "VALID")
    for m, p in zip(conv_modes, per_mode, strict=True):
        pair = isinstance(p, Sequence) and not isinstance(p, str)
        ok = (
            (isinstance(p, str) and p.upper() in ("VALID", "SAME", "SAME_LOWER"))
            or _is_int(p)
            or (pair and len(p) == 2 and all(_is_int(q) for q in p))
        )
        if not ok:
            raise ValueError(
                f"padding={padding!r}: mode {m!r} needs 'VALID', 'SAME', 'SAME_LOWER', an int "
                f"or a (low, high) pair of ints, got {p!r}"
            )
    return per_mode


def _normalize_per_mode(name: str, value: Any, conv_modes: Sequence[str], default: Any):
    """Turns an int / sequence / mapping option into a tuple with one entry per conv mode."""
    if value is None:
        return tuple(default for _ in conv_modes)
    if isinstance(value, Mapping):
        unknown = set(value) - set(conv_modes)
        if unknown:
            raise ValueError(
                f"{name} names modes {sorted(unknown)} that are not convolved "
                f"(convolved modes: {list(conv_modes)})"
            )
        return tuple(value.get(m, default) for m in conv_modes)
    if isinstance(value, (int, np.integer, str, float)):
        return tuple(value for _ in conv_modes)
    if not isinstance(value, Sequence):
        raise ValueError(f"{name}={value!r}: give one value or one per convolved mode")
    value = tuple(value)
    if len(value) != len(conv_modes):
        raise ValueError(
            f"{name} has {len(value)} entries but {len(conv_modes)} modes are convolved "
            f"({list(conv_modes)})"
        )
    return value


def _conv_padding(pad: Any, mode: str, h: int, k: int, stride: int, dilation: int):
    k_eff = dilation * (k - 1) + 1
    if isinstance(pad, str):
        p = pad.upper()
        if p == "VALID":
            return 0, 0
        if p in ("SAME", "SAME_LOWER"):
            out = -(-h // stride)
            total = max((out - 1) * stride + k_eff - h, 0)
            lo = total // 2 if p == "SAME" else total - total // 2
            return lo, total - lo
        raise ValueError(f"padding {pad!r} for mode {mode!r}: use 'VALID', 'SAME' or ints")
    if isinstance(pad, (int, np.integer)):
        return int(pad), int(pad)
    pad = tuple(pad)
    if len(pad) != 2:
        raise ValueError(f"padding for mode {mode!r} must be (low, high), got {pad}")
    return int(pad[0]), int(pad[1])


def _parse(
    spec: str,
    shapes: Sequence[tuple[int, ...]],
    dtypes: Sequence[Any],
    padding: Any,
    strides: Any,
    dilation: Any,
) -> tuple[_Problem, tuple[str, ...], tuple[str, ...]]:
    """Validates `spec` against the operand shapes.

    Returns the problem plus, per operand, the raw term (which may have repeated modes
    that need a diagonal taken first) and the cleaned term.
    """
    if not isinstance(spec, str):
        raise ValueError(f"spec must be a string, got {type(spec).__name__}")
    body = spec.replace(" ", "")
    conv_part = ""
    if "|" in body:
        body, conv_part = body.split("|", 1)
        if "|" in conv_part:
            raise ValueError(f"spec {spec!r} has more than one '|'")
    if "->" in body:
        lhs, output = body.split("->", 1)
    else:
        lhs, output = body, None
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(
            f"spec {spec!r} names {len(terms)} operands but {len(shapes)} were given "
            f"(shapes {list(shapes)})"
        )
    if any("..." in t for t in terms) or (output and "..." in output):
        terms, output, _ = _expand_ellipsis(terms, output, [len(s) for s in shapes])
    for t in terms + ([output] if output is not None else []):
        bad = {c for c in t if not _is_mode(c)}
        if bad:
            raise ValueError(f"spec {spec!r}: modes must be letters, found {sorted(bad)}")
    conv_modes = tuple(conv_part)
    if len(set(conv_modes)) != len(conv_modes) or not all(_is_mode(c) for c in conv_modes):
        raise ValueError(f"spec {spec!r}: modes after '|' must be distinct letters")
    for i, (t, shape) in enumerate(zip(terms, shapes, strict=True)):
        if len(t) != len(shape):
            raise ValueError(
                f"operand {i} has shape {tuple(shape)} ({len(shape)} dims) but its term "
                f"{t!r} in spec {spec!r} has {len(t)} modes"
            )
    if output is None:
        if conv_modes:
            raise ValueError(f"spec {spec!r}: convolved modes need an explicit '->output'")
        counts: dict[str, int] = {}
        for t in terms:
            for c in t:
                counts[c] = counts.get(c, 0) + 1
        output = "".join(sorted(c for c, n in counts.items() if n == 1))
    if len(set(output)) != len(output):
        raise ValueError(f"spec {spec!r}: output {output!r} repeats a mode")
    all_modes = set("".join(terms))
    unknown = set(output) - all_modes
    if unknown:
        raise ValueError(
            f"spec {spec!r}: output modes {sorted(unknown)} appear in no operand "
            f"(operand shapes {list(shapes)})"
        )
    unknown = set(conv_modes) - all_modes
    if unknown:
        raise ValueError(f"spec {spec!r}: convolved modes {sorted(unknown)} appear in no operand")

    # Repeated modes inside one term (diagonals) are resolved before planning.
    raw_terms = tuple(terms)
    clean_terms = []
    for i, t in enumerate(terms):
        seen: dict[str, int] = {}
        for c, n in zip(t, shapes[i], strict=True):
            if c in seen and seen[c] != n:
                raise ValueError(
                    f"operand {i} (shape {tuple(shapes[i])}) repeats mode {c!r} with sizes "
                    f"{seen[c]} and {n}"
                )
            seen[c] = n
        if len(seen) != len(t) and any(c in conv_modes for c in t if t.count(c) > 1):
            raise ValueError(f"spec {spec!r}: a convolved mode is repeated in operand {i}")
        clean_terms.append("".join(dict.fromkeys(t)))
    terms = clean_terms

    raw_sizes = [
        dict(zip(raw, shape, strict=True)) for raw, shape in zip(raw_terms, shapes, strict=True)
    ]
    sizes = tuple(tuple((c, s[c]) for c in t) for t, s in zip(terms, raw_sizes, strict=True))

    # Non-convolved modes must agree in size across operands.
    seen_size: dict[str, tuple[int, int]] = {}
    for i, s in enumerate(sizes):
        for c, n in s:
            if c in conv_modes:
                continue
            if c in seen_size and seen_size[c][1] != n:
                j = seen_size[c][0]
                raise ValueError(
                    f"mode {c!r} has size {seen_size[c][1]} in operand {j} (shape "
                    f"{tuple(shapes[j])}) but size {n} in operand {i} (shape {tuple(shapes[i])})"
                )
            seen_size.setdefault(c, (i, n))

    signal = -1
    geometry = []
    if conv_modes:
        strides_t = _positive_ints("strides", strides, conv_modes)
        dil_t = _positive_ints("dilation", dilation, conv_modes)
        pad_t = _paddings(padding, conv_modes)
        for m, st, dl, pd in zip(conv_modes, strides_t, dil_t, pad_t, strict=True):
            holders = [i for i, t in enumerate(terms) if m in t]
            if len(holders) != 2:
                raise ValueError(
                    f"convolved mode {m!r} must appear in exactly two operands, found it in "
                    f"{len(holders)} (operand shapes {list(shapes)})"
                )
            if m not in output:
                raise ValueError(f"convolved mode {m!r} must appear in the output {output!r}")
            sig, fil = holders
            if signal == -1:
                signal = sig
            elif signal != sig:
                raise ValueError(
                    f"all convolved modes must have the same signal operand (the first operand "
                    f"carrying them); mode {m!r} has operand {sig}, earlier modes operand {signal}"
                )
            if int(st) < 1 or int(dl) < 1:
                raise ValueError(f"mode {m!r}: stride {st} and dilation {dl} must be >= 1")
            h = dict(sizes[sig])[m]
            k = dict(sizes[fil])[m]
            lo, hi = _conv_padding(pd, m, h, k, int(st), int(dl))
            out = (h + lo + hi - (int(dl) * (k - 1) + 1)) // int(st) + 1
            if out < 1:
                raise ValueError(
                    f"convolved mode {m!r}: signal size {h} (operand {sig}, shape "
                    f"{tuple(shapes[sig])}) is smaller than the filter size {k} (operand {fil}, "
                    f"shape {tuple(shapes[fil])}) with padding ({lo}, {hi}); pad it or use "
                    f"padding='SAME'"
                )
            geometry.append((m, k, int(st), int(dl), lo, hi))

    itemsizes = tuple(int(np.dtype(d).itemsize) for d in dtypes)
    out_itemsize = int(np.dtype(jnp.result_type(*dtypes)).itemsize) if dtypes else 4
    problem = _Problem(
        terms=tuple(terms),
        output=output,
        conv_modes=conv_modes,
        sizes=sizes,
        signal=signal,
        conv_geometry=tuple(geometry),
        itemsizes=itemsizes,
        out_itemsize=out_itemsize,
    )
    return problem, raw_terms, tuple(terms)


# --------------------------------------------------------------------------- subset algebra


class _Subsets:
    """Modes and sizes of the intermediate produced by any subset of the operands."""

    def __init__(self, problem: _Problem):
        self.p = problem
        self.n = len(problem.terms)
        self.mode_masks: dict[str, int] = {}
        for i, t in enumerate(problem.terms):
            for c in t:
                self.mode_masks[c] = self.mode_masks.get(c, 0) | (1 << i)
        self.geometry = {g[0]: g for g in problem.conv_geometry}
        self.base_size: dict[str, int] = {}
        for s in problem.sizes:
            for c, n in s:
                if c not in self.geometry:
                    self.base_size[c] = n
        self.signal_size = {}
        self.out_size = {}
        for m, (_, k, st, dl, lo, hi) in self.geometry.items():
            h = problem.size_of(problem.signal, m)
            self.signal_size[m] = h
            self.out_size[m] = (h + lo + hi - (dl * (k - 1) + 1)) // st + 1
        self.full = (1 << self.n) - 1
        self._modes_cache: dict[int, tuple[str, ...]] = {}

    def modes(self, mask: int) -> tuple[str, ...]:
        """Modes that the intermediate of `mask` keeps (needed outside it or in the output)."""
        hit = self._modes_cache.get(mask)
        if hit is not None:
            return hit
        out = []
        for c, holders in self.mode_masks.items():
            if holders & mask and (c in self.p.output or holders & ~mask):
                out.append(c)
        res = tuple(out)
        self._modes_cache[mask] = res
        return res

    def size(self, mode: str, mask: int) -> int:
        if mode not in self.geometry:
            return self.base_size[mode]
        holders = self.mode_masks[mode]
        if holders & mask == holders:
            return self.out_size[mode]
        if mask & (1 << self.p.signal):
            return self.signal_size[mode]
        return self.geometry[mode][1]

    def elements(self, mask: int) -> int:
        if mask & (mask - 1) == 0:  # a single input operand
            i = mask.bit_length() - 1
            return math.prod(n for _, n in self.p.sizes[i])
        return math.prod(self.size(c, mask) for c in self.modes(mask))

    def itemsize(self, mask: int) -> int:
        if mask & (mask - 1) == 0:
            return self.p.itemsizes[mask.bit_length() - 1]
        return self.p.out_itemsize

    def pair_cost(self, a: int, b: int) -> tuple[int, int, int, int]:
        """(flops, bytes_read, bytes_written, result elements) of contracting a with b."""
        ab = a | b
        modes_a = set(self.modes(a)) if a & (a - 1) else set(self.p.terms[a.bit_length() - 1])
        modes_b = set(self.modes(b)) if b & (b - 1) else set(self.p.terms[b.bit_length() - 1])
        involved = modes_a | modes_b
        kept = set(self.modes(ab)) if ab != self.full else set(self.p.output)
        summed = bool(involved - kept)
        flops = 1
        for c in involved:
            if c in self.geometry and c in modes_a and c in modes_b:
                flops *= self.out_size[c] * self.geometry[c][1]
                summed = True
            elif c in self.geometry:
                flops *= self.size(c, a if c in modes_a else b)
            else:
                flops *= self.base_size[c]
        flops *= 2 if summed else 1
        out_elems = (
            self.elements(ab)
            if ab != self.full
            else math.prod(self.size(c, ab) for c in self.p.output)
        )
        read = self.elements(a) * self.itemsize(a) + self.elements(b) * self.itemsize(b)
        written = out_elems * self.p.out_itemsize
        return flops, read, written, out_elems


def _needs_transpose(modes: str, batch: list[str], contracted: set[str]) -> bool:
    """Whether XLA must copy an operand to bring it to (batch, free, contracted) blocks."""
    if [c for c in modes[: len(batch)]] != batch:
        return True
    rest = modes[len(batch) :]
    flags = [c in contracted for c in rest]
    # contiguous contracted block at one end of the non-batch dims is free
    return flags != sorted(flags) and flags != sorted(flags, reverse=True)


def _dot_layout(ma: str, mb: str, keep: set[str]) -> str:
    """Mode order of `_pair_dot`'s result: batch, then a's free modes, then b's."""
    batch = [c for c in ma if c in mb and c in keep]
    return "".join(batch + [c for c in ma if c not in mb] + [c for c in mb if c not in ma])


def _conv_layout(ms: str, mf: str, keep: set[str], conv_modes) -> tuple[list[str], ...]:
    """How `_pair_conv` lays out one step: (batch, spatial, groups, contracted, free_f).

    batch: the signal's free modes before its first convolved mode (folded into n);
    spatial: the convolved modes and, when that keeps at most two spatial dimensions,
    the signal's other free modes in the signal's order (a kernel of size 1 along them),
    so that no transpose of the signal is needed; otherwise those free modes join the batch.
    """
    conv = [c for c in ms if c in mf and c in conv_modes]
    groups = [c for c in ms if c in mf and c in keep and c not in conv_modes]
    contracted = [c for c in ms if c in mf and c not in keep and c not in conv_modes]
    free_f = [c for c in mf if c not in ms]
    free_s = [c for c in ms if c not in mf]
    first = min(ms.index(c) for c in conv)
    batch = [c for c in free_s if ms.index(c) < first]
    inner = [c for c in ms[first:] if c in conv or c in free_s]
    if len(inner) > max(len(conv), 2):
        batch, inner = free_s, conv
    return batch, inner, groups, contracted, free_f


def _result_layout(
    sub: _Subsets, ma: str, mb: str, keep: set[str], a_is_signal: bool, a_first: bool
) -> str:
    """Mode order that `_execute` produces for one pairwise step (see _pair_dot/_pair_conv)."""
    ma = "".join(c for c in ma if c in keep or c in mb)
    mb = "".join(c for c in mb if c in keep or c in ma)
    if any(c in mb and c in sub.geometry for c in ma):
        if not a_is_signal:
            ma, mb = mb, ma
        batch, inner, groups, _, free_f = _conv_layout(ma, mb, keep, sub.geometry)
        return "".join(batch + inner + groups + free_f)
    return _dot_layout(ma, mb, keep) if a_first else _dot_layout(mb, ma, keep)


def _score(sub: _Subsets, path: Path, model: CostModel) -> PathCost:
    """Replays an opt_einsum-format path on subsets and sums its costs.

    Memory traffic counts the operands read, the result written, and a read+write copy
    of every operand whose layout forces XLA to transpose it before the dot.
    """
    p = sub.p
    live = [(1 << i, p.terms[i]) for i in range(sub.n)]
    flops = read = written = 0
    largest = 0
    for step in path:
        i, j = sorted(step)
        (a, ma), (b, mb) = live[i], live[j]
        del live[j], live[i]
        ab = a | b
        keep = set(sub.modes(ab)) if ab != sub.full else set(p.output)
        f, r, w, e = sub.pair_cost(a, b)
        shared = [c for c in ma if c in mb and c not in sub.geometry]
        batch = [c for c in shared if c in keep]
        contracted = {c for c in shared if c not in keep}
        if not any(c in sub.geometry for c in ma if c in mb):
            for m, mask in ((ma, a), (mb, b)):
                if _needs_transpose(m, batch, contracted):
                    r += 2 * sub.elements(mask) * sub.itemsize(mask)
        flops += f
        read += r
        written += w
        largest = max(largest, e)
        a_sig = p.signal >= 0 and bool(a >> p.signal & 1)
        a_first = sub.elements(a) >= sub.elements(b)
        live.append((ab, _result_layout(sub, ma, mb, keep, a_sig, a_first)))
    nsteps = len(path)
    return PathCost(
        path=path,
        flops=flops,
        bytes_written=written,
        bytes_read=read,
        largest_intermediate=largest,
        seconds=model.seconds(flops, read + written, nsteps),
    )


def _dp_path(sub: _Subsets, model: CostModel, objective: str) -> Path | None:
    """Exact optimum over all contraction trees by dynamic programming on subsets."""
    n = sub.n
    if n > _DP_MAX_OPERANDS:
        return None
    best: dict[int, tuple[float, tuple]] = {1 << i: (0.0, ()) for i in range(n)}
    for size in range(2, n + 1):
        for combo in itertools.combinations(range(n), size):
            mask = sum(1 << i for i in combo)
            low = mask & -mask
            rest = mask ^ low
            best_here = None
            sub_mask = rest
            # enumerate subsets a of mask containing the lowest bit; b = mask ^ a nonempty
            while True:
                a = low | sub_mask
                b = mask ^ a
                if b:
                    ca, cb = best[a][0], best[b][0]
                    f, r, w, _ = sub.pair_cost(a, b)
                    cost = (f if objective == "flops" else model.seconds(f, r + w, 1)) + ca + cb
                    if best_here is None or cost < best_here[0]:
                        best_here = (cost, (a, b))
                if sub_mask == 0:
                    break
                sub_mask = (sub_mask - 1) & rest
            best[mask] = best_here
    # Turn the tree into an opt_einsum-format path.
    order: list[tuple[int, int]] = []

    def visit(mask: int):
        if mask & (mask - 1) == 0:
            return
        a, b = best[mask][1]
        visit(a)
        visit(b)
        order.append((a, b))

    visit(sub.full)
    return _masks_to_path(n, order)


def _masks_to_path(n: int, merges: Sequence[tuple[int, int]]) -> Path:
    live = [1 << i for i in range(n)]
    path = []
    for a, b in merges:
        i, j = live.index(a), live.index(b)
        path.append((min(i, j), max(i, j)))
        for k in sorted((i, j), reverse=True):
            del live[k]
        live.append(a | b)
    return tuple(path)


def _reconstruct_first_path(sub: _Subsets, model: CostModel) -> Path | None:
    """Contract every operand but the largest (the data) first, then apply the result."""
    n = sub.n
    if n < 3:
        return None
    data = max(range(n), key=lambda i: sub.elements(1 << i))
    others = [i for i in range(n) if i != data]
    live = [1 << i for i in others]
    merges = []
    while len(live) > 1:  # greedy on the cost model among the small operands
        best = None
        for x, y in itertools.combinations(live, 2):
            f, r, w, _ = sub.pair_cost(x, y)
            c = model.seconds(f, r + w)
            if best is None or c < best[0]:
                best = (c, x, y)
        _, x, y = best
        live.remove(x)
        live.remove(y)
        live.append(x | y)
        merges.append((x, y))
    merges.append((1 << data, live[0]))
    return _masks_to_path(n, merges)


def _opt_einsum_paths(sub: _Subsets) -> dict[str, Path]:
    p = sub.p
    # opt_einsum needs one size per mode: give convolved modes the signal's size.
    shapes = [tuple(sub.signal_size.get(c, n) for c, n in s) for s in p.sizes]
    eq = ",".join(p.terms) + "->" + p.output
    out: dict[str, Path] = {}
    strategies = ["greedy", "auto", "dp"] + (["optimal"] if sub.n <= 7 else [])
    for strategy in strategies:
        try:
            path, _ = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=strategy)
        except Exception:  # noqa: BLE001 - a failing heuristic is just not a candidate
            continue
        out[f"opt_einsum_{strategy}"] = _canonical_path(sub.n, tuple(tuple(s) for s in path))
    return out


def _canonical_path(n: int, path: Path) -> Path:
    """Drops single-operand steps (sums are folded into the next pairwise step)."""
    live = list(range(n))
    merges = []
    masks = {i: 1 << i for i in range(n)}
    nxt = n
    for step in path:
        if len(step) == 1:  # opt_einsum moves a single reduced operand to the end
            live.append(live.pop(step[0]))
            continue
        i, j = sorted(step)
        a, b = live[i], live[j]
        del live[j], live[i]
        masks[nxt] = masks[a] | masks[b]
        merges.append((masks[a], masks[b]))
        live.append(nxt)
        nxt += 1
    if len(live) > 1:  # opt_einsum may leave a final outer product implicit
        while len(live) > 1:
            a, b = live[0], live[1]
            live = live[2:] + [nxt]
            masks[nxt] = masks[a] | masks[b]
            merges.append((masks[a], masks[b]))
            nxt += 1
    return _masks_to_path(n, merges)


def _naive_path(n: int) -> Path:
    """Left to right: ((op0 . op1) . op2) . op3 ... (each result is appended last)."""
    if n < 2:
        return ()
    return ((0, 1),) + tuple((0, n - k - 1) for k in range(1, n - 1))


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class ContractionPlan:
    """The chosen order for one (spec, shapes) and what it costs.

    Attributes:
      spec: the spec with ellipses expanded and the output made explicit.
      strategy: how the path was chosen ("cost", "flops", "autotune", "explicit", ...).
      chosen: name of the winning candidate.
      cost: figures of the chosen path.
      flop_optimal: figures of the FLOP-optimal path.
      naive: figures of the left-to-right path.
      candidates: figures of every candidate considered, by name.
      timings: measured seconds per candidate when autotuned, else empty.
      steps: the pairwise steps of the chosen path as einsum strings.
    """

    spec: str
    strategy: str
    chosen: str
    cost: PathCost
    flop_optimal: PathCost
    naive: PathCost
    candidates: Mapping[str, PathCost]
    timings: Mapping[str, float]
    steps: tuple[str, ...]

    @property
    def path(self) -> Path:
        return self.cost.path

    def __str__(self) -> str:
        def row(name: str, c: PathCost) -> str:
            return (
                f"  {name:<24} flops {c.flops:>12.4g}  written {c.bytes_written:>11.4g} B"
                f"  largest {c.largest_intermediate:>10.4g}  model {c.seconds * 1e3:8.3f} ms"
                + (f"  measured {self.timings[name] * 1e3:8.3f} ms" if name in self.timings else "")
            )

        lines = [f"contract {self.spec}  (strategy={self.strategy}, chosen={self.chosen})"]
        lines.append(row("chosen: " + self.chosen, self.cost))
        lines.append(row("flop-optimal", self.flop_optimal))
        lines.append(row("naive", self.naive))
        if self.flop_optimal.flops:
            lines.append(
                f"  chosen/flop-optimal flops: {self.cost.flops / self.flop_optimal.flops:.3f}x"
            )
        lines.append("  candidates:")
        for name, c in sorted(self.candidates.items(), key=lambda kv: kv[1].seconds):
            lines.append("  " + row(name, c))
        lines.append("  steps: " + "; ".join(self.steps))
        return "\n".join(lines)


def _step_strings(sub: _Subsets, path: Path) -> tuple[str, ...]:
    live = [1 << i for i in range(sub.n)]
    out = []
    for i, j in path:
        a, b = live[i], live[j]
        del live[j], live[i]
        ab = a | b
        ma = "".join(sub.modes(a)) if a & (a - 1) else sub.p.terms[a.bit_length() - 1]
        mb = "".join(sub.modes(b)) if b & (b - 1) else sub.p.terms[b.bit_length() - 1]
        mc = "".join(sub.modes(ab)) if ab != sub.full else sub.p.output
        conv = "".join(c for c in sub.p.conv_modes if c in ma and c in mb)
        out.append(f"{ma},{mb}->{mc}" + (f"|{conv}" if conv else ""))
        live.append(ab)
    return tuple(out)


def _candidates(sub: _Subsets, model: CostModel) -> dict[str, Path]:
    n = sub.n
    cands: dict[str, Path] = {}
    if n == 1:
        return {"single": ()}
    cands["naive"] = _naive_path(n)
    memory_bound = dataclasses.replace(model, bytes_per_second=model.bytes_per_second / 4)
    for name, fn in (
        ("cost_dp", lambda: _dp_path(sub, model, "seconds")),
        ("memory_dp", lambda: _dp_path(sub, memory_bound, "seconds")),
        ("flops_dp", lambda: _dp_path(sub, model, "flops")),
        ("reconstruct_first", lambda: _reconstruct_first_path(sub, model)),
    ):
        path = fn()
        if path is not None:
            cands[name] = path
    cands.update(_opt_einsum_paths(sub))
    return cands


_autotune_lock = threading.Lock()
_autotune_memory: dict[str, tuple[str, Path]] = {}


def _plan_uncached(
    problem: _Problem,
    strategy: str | Path,
    model: CostModel,
    autotune_cache: str | None,
    precision: Any,
    dtypes: tuple[str, ...],
) -> ContractionPlan:
    sub = _Subsets(problem)
    spec = ",".join(problem.terms) + "->" + problem.output
    if problem.conv_modes:
        spec += "|" + "".join(problem.conv_modes)
    cands = _candidates(sub, model)
    scored = {name: _score(sub, p, model) for name, p in cands.items()}
    if sub.n == 1:
        c = scored["single"]
        return ContractionPlan(spec, "single", "single", c, c, c, scored, {}, ())
    flop_opt = min(scored.values(), key=lambda c: (c.flops, c.seconds))
    naive = scored["naive"]
    timings: dict[str, float] = {}
    if isinstance(strategy, tuple):
        path = _canonical_path(sub.n, strategy)
        chosen_name, chosen = "explicit", _score(sub, path, model)
        strategy_name = "explicit"
    elif strategy in ("cost", "auto", True):
        chosen_name = _cost_choice(scored)
        chosen, strategy_name = scored[chosen_name], "cost"
    elif strategy == "flops":
        chosen_name = min(scored, key=lambda k: (scored[k].flops, scored[k].seconds))
        chosen, strategy_name = scored[chosen_name], "flops"
    elif strategy == "naive":
        chosen_name, chosen, strategy_name = "naive", naive, "naive"
    elif strategy == "autotune":
        chosen_name, timings = _autotune(
            problem, sub, cands, scored, autotune_cache, precision, dtypes, spec
        )
        chosen, strategy_name = scored[chosen_name], "autotune"
    else:
        raise ValueError(
            f"optimize={strategy!r}: use 'cost' (default), 'flops', 'naive', 'autotune' or an "
            f"explicit path (a sequence of pairs of positions)"
        )
    return ContractionPlan(
        spec=spec,
        strategy=strategy_name,
        chosen=chosen_name,
        cost=chosen,
        flop_optimal=flop_opt,
        naive=naive,
        candidates=scored,
        timings=timings,
        steps=_step_strings(sub, chosen.path),
    )


@functools.lru_cache(maxsize=4096)
def _plan_cached(problem, strategy, model, autotune_cache, precision, dtypes):
    return _plan_uncached(problem, strategy, model, autotune_cache, precision, dtypes)


def clear_plan_cache() -> None:
    """Forgets every cached plan and in-memory autotune result."""
    _plan_cached.cache_clear()
    with _autotune_lock:
        _autotune_memory.clear()


# --------------------------------------------------------------------------- autotune


def _autotune_key(problem: _Problem, dtypes: tuple[str, ...], spec: str) -> str:
    shapes = [tuple(n for _, n in s) for s in problem.sizes]
    return json.dumps(
        [
            spec,
            shapes,
            list(dtypes),
            list(problem.conv_geometry),
            jax.default_backend(),
            str(jax.devices()[0].device_kind),
        ]
    )


def _load_disk_cache(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _autotune(problem, sub, cands, scored, cache_path, precision, dtypes, spec):
    key = _autotune_key(problem, dtypes, spec)
    with _autotune_lock:
        if key in _autotune_memory:
            name, _ = _autotune_memory[key]
            if name in cands:
                return name, {}
    if cache_path:
        disk = _load_disk_cache(cache_path)
        if key in disk and disk[key].get("chosen") in cands:
            name = disk[key]["chosen"]
            with _autotune_lock:
                _autotune_memory[key] = (name, cands[name])
            return name, {k: float(v) for k, v in disk[key].get("timings", {}).items()}

    # Distinct paths only, hopeless ones (20x the model's best) skipped; every candidate is
    # timed compiled on the default backend, in interleaved rounds (best of a short burst
    # per round, median over rounds) so that machine noise hits all candidates alike.
    best_model = min(scored[k].seconds for k in cands)
    distinct: dict[Path, str] = {}
    for name in sorted(cands, key=lambda k: scored[k].seconds):
        if scored[name].seconds <= 20 * best_model:
            distinct.setdefault(cands[name], name)
    shapes = [tuple(n for _, n in s) for s in problem.sizes]
    rng = np.random.default_rng(0)
    with jax.ensure_compile_time_eval():
        operands = [
            jax.device_put(rng.standard_normal(s).astype(d))
            for s, d in zip(shapes, dtypes, strict=True)
        ]
        compiled, burst = {}, {}
        for path, name in distinct.items():
            fn = functools.partial(_execute, problem, path, precision, None, "auto")
            compiled[name] = jax.jit(fn).lower(*operands).compile()
            jax.block_until_ready(compiled[name](*operands))
            t0 = time.perf_counter()
            jax.block_until_ready(compiled[name](*operands))
            burst[name] = max(1, min(50, int(0.01 / max(time.perf_counter() - t0, 1e-7))))
        rounds: dict[str, list[float]] = {name: [] for name in compiled}
        names = list(compiled)
        for r in range(_AUTOTUNE_ROUNDS):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                best_in_burst = math.inf
                for _ in range(burst[name]):
                    t0 = time.perf_counter()
                    jax.block_until_ready(compiled[name](*operands))
                    best_in_burst = min(best_in_burst, time.perf_counter() - t0)
                rounds[name].append(best_in_burst)
    timings = {name: float(np.median(v)) for name, v in rounds.items()}
    best = min(timings, key=timings.get)
    with _autotune_lock:
        _autotune_memory[key] = (best, cands[best])
    if cache_path:
        disk = _load_disk_cache(cache_path)
        disk[key] = {"chosen": best, "timings": timings}
        tmp = f"{cache_path}.tmp{os.getpid()}"
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(disk, f, indent=1)
        os.replace(tmp, cache_path)
    return best, timings


# --------------------------------------------------------------------------- execution


def _sum_unique(x: jax.Array, modes: str, keep: set[str]) -> tuple[jax.Array, str]:
    drop = [i for i, c in enumerate(modes) if c not in keep]
    if not drop:
        return x, modes
    return jnp.sum(x, axis=tuple(drop)), "".join(c for c in modes if c in keep)


def _pair_dot(a, ma, b, mb, out_modes, precision, preferred):
    """Contracts two operands without convolved modes; returns (array, modes)."""
    keep = set(out_modes)
    a, ma = _sum_unique(a, ma, keep | set(mb))
    b, mb = _sum_unique(b, mb, keep | set(ma))
    if b.size > a.size:  # the larger operand's free modes lead: activations keep their layout
        a, ma, b, mb = b, mb, a, ma
    batch = [c for c in ma if c in mb and c in keep]
    contracted = [c for c in ma if c in mb and c not in keep]
    free_a = [c for c in ma if c not in mb]
    free_b = [c for c in mb if c not in ma]
    dims = (
        (tuple(ma.index(c) for c in contracted), tuple(mb.index(c) for c in contracted)),
        (tuple(ma.index(c) for c in batch), tuple(mb.index(c) for c in batch)),
    )
    y = jax.lax.dot_general(a, b, dims, precision=precision, preferred_element_type=preferred)
    return y, "".join(batch + free_a + free_b)


def _pair_conv(sig, ms, fil, mf, out_modes, geometry, precision, preferred, conv_impl):
    """Convolves the signal-side operand with the filter-side one along shared conv modes.

    Brought to one grouped channels-last convolution (`tnjax.ops.convolution`) laid out
    by `_conv_layout`: modes shared and kept are the groups, modes shared and dropped are
    contracted; returns (array, modes) in the order batch + spatial + groups + free_f.
    """
    keep = set(out_modes)
    sig, ms = _sum_unique(sig, ms, keep | set(mf))
    fil, mf = _sum_unique(fil, mf, keep | set(ms))
    batch, inner, groups, contracted, free_f = _conv_layout(ms, mf, keep, geometry)
    size_s = dict(zip(ms, sig.shape, strict=True))
    size_f = dict(zip(mf, fil.shape, strict=True))
    g = math.prod(size_s[c] for c in groups)
    k = math.prod(size_s[c] for c in contracted)
    o = math.prod(size_f[c] for c in free_f)
    order_s = batch + inner + groups + contracted
    lhs = sig if ms == "".join(order_s) else jnp.transpose(sig, [ms.index(c) for c in order_s])
    lhs = lhs.reshape((math.prod(size_s[c] for c in batch), *(size_s[c] for c in inner), g, k))
    order_f = [c for c in inner if c in mf] + groups + contracted + free_f
    rhs = fil if mf == "".join(order_f) else jnp.transpose(fil, [mf.index(c) for c in order_f])
    rhs = rhs.reshape((*(size_f.get(c, 1) for c in inner), g, k, o))
    y = grouped_conv(
        lhs,
        rhs,
        [geometry[c][1:] if c in mf else (1, 1, 1, 0, 0) for c in inner],  # free: kernel 1
        precision=precision,
        preferred=preferred,
        impl=conv_impl,
    )
    out_shape = (
        tuple(size_s[c] for c in batch)
        + y.shape[1 : 1 + len(inner)]
        + tuple(size_s[c] for c in groups)
        + tuple(size_f[c] for c in free_f)
    )
    return y.reshape(out_shape), "".join(batch + inner + groups + free_f)


def _execute(problem: _Problem, path: Path, precision, preferred, conv_impl, *operands):
    geometry = {g[0]: g for g in problem.conv_geometry}
    live: list[tuple[jax.Array, str, bool]] = [
        (x, t, i == problem.signal)
        for i, (x, t) in enumerate(zip(operands, problem.terms, strict=True))
    ]
    for i, j in path:
        (a, ma, sa), (b, mb, sb) = live[i], live[j]
        del live[j], live[i]
        needed = set(problem.output).union(*[set(m) for _, m, _ in live])
        out_modes = "".join(c for c in dict.fromkeys(ma + mb) if c in needed)
        has_conv = any(c in geometry and c in ma and c in mb for c in ma)
        if has_conv:
            if sb:
                a, ma, sa, b, mb, sb = b, mb, sb, a, ma, sa
            y, my = _pair_conv(a, ma, b, mb, out_modes, geometry, precision, preferred, conv_impl)
        else:
            y, my = _pair_dot(a, ma, b, mb, out_modes, precision, preferred)
        live.append((y, my, sa or sb))
    ((y, my, _),) = live
    y, my = _sum_unique(y, my, set(problem.output))
    if my != problem.output:
        y = jnp.transpose(y, [my.index(c) for c in problem.output])
    return y


def _backward_path(plan: ContractionPlan) -> Path | None:
    """The order to differentiate through, when the cost strategy's tie set offers a better one.

    Among the candidates the cost model cannot tell apart (`COST_TIE_MARGIN`), the forward
    takes the fewest FLOPs; reverse mode also stores and re-reads every intermediate, so
    the backward goes through the one that writes the fewest bytes. Measured on this CPU:
    TT-matrix 1024x1024 r8 B=256, forward+backward through the FLOP-lean order 2.48x dense,
    through the byte-lean one 1.18x (docs/benchmarks.md). None when they coincide.
    """
    if plan.strategy != "cost" or not plan.candidates:
        return None
    near = [plan.candidates[k] for k in _cost_ties(plan.candidates)]
    lean = min(near, key=lambda c: (c.bytes_written, c.seconds))
    if lean.bytes_written >= plan.cost.bytes_written or tuple(lean.path) == tuple(plan.path):
        return None
    return lean.path


def _execute_split(problem, forward, backward, precision, preferred, conv_impl, *operands):
    """`_execute` along `forward`, differentiated along `backward` (a `custom_vjp`: the
    backward pass recomputes the contraction along its own order and transposes that)."""

    def along(path):
        return lambda *ops: _execute(problem, path, precision, preferred, conv_impl, *ops)

    @jax.custom_vjp
    def run(*ops):
        return along(forward)(*ops)

    def run_fwd(*ops):
        return along(forward)(*ops), ops

    def run_bwd(ops, cotangent):
        return jax.vjp(along(backward), *ops)[1](cotangent)

    run.defvjp(run_fwd, run_bwd)
    return run(*operands)


# --------------------------------------------------------------------------- public API


def _shape_and_dtype(x: Any) -> tuple[tuple[int, ...], str]:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return tuple(int(n) for n in x.shape), np.dtype(x.dtype).name
    if isinstance(x, (tuple, list)) and all(isinstance(n, (int, np.integer)) for n in x):
        return tuple(int(n) for n in x), "float32"
    raise ValueError(f"expected an array, a ShapeDtypeStruct or a shape tuple, got {x!r}")


def _normalize_optimize(optimize: Any) -> str | Path:
    if optimize is None or optimize is True:
        return "cost"
    if isinstance(optimize, str):
        return optimize
    try:
        path = tuple(tuple(int(i) for i in step) for step in optimize)
    except TypeError as e:
        raise ValueError(f"optimize={optimize!r} is not a strategy name or a path") from e
    return path


def _hashable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def _get_plan(
    spec,
    shapes,
    dtypes,
    padding,
    strides,
    dilation,
    optimize,
    cost_model,
    autotune_cache,
    precision,
):
    problem, raw_terms, clean_terms = _parse(spec, shapes, dtypes, padding, strides, dilation)
    strategy = _normalize_optimize(optimize)
    if isinstance(strategy, tuple):
        _check_path(strategy, len(shapes))
    model = cost_model or _default_cost_model()
    plan = _plan_cached(
        problem, strategy, model, autotune_cache, _hashable(precision), tuple(dtypes)
    )
    return problem, plan, raw_terms, clean_terms


def _check_path(path: Path, n: int) -> None:
    live = n
    for step in path:
        if (
            len(step) not in (1, 2)
            or any(not 0 <= i < live for i in step)
            or (len(step) == 2 and step[0] == step[1])
        ):
            raise ValueError(f"invalid step {step} in path {path} for {n} operands")
        live -= len(step) - 1
    if live != 1:
        raise ValueError(f"path {path} leaves {live} operands for {n} operands; it must leave 1")


def contract_path(
    spec: str,
    *operands: Any,
    padding: Any = "VALID",
    strides: Any = None,
    dilation: Any = None,
    optimize: Any = "cost",
    cost_model: CostModel | None = None,
    autotune_cache: str | None = None,
) -> ContractionPlan:
    """Plans a contraction without running it.

    Args:
      spec: einsum spec with optional `|modes` to convolve, e.g. "bhws,hwst->bhwt|hw".
      *operands: arrays, `jax.ShapeDtypeStruct`s or plain shape tuples (float32 assumed).
      padding, strides, dilation: as in `contract`.
      optimize: as in `contract`.
      cost_model: overrides the backend's default `CostModel`.
      autotune_cache: JSON file that stores autotune winners across processes.

    Returns:
      A `ContractionPlan`; `print(plan)` shows the chosen, FLOP-optimal and naive orders
      with their FLOPs, bytes written and largest intermediate.
    """
    shapes, dtypes = (
        zip(*(_shape_and_dtype(x) for x in operands), strict=True) if operands else ((), ())
    )
    spec, squeeze = canonical_spec(spec, tuple(shapes))
    shapes = [
        tuple(n for a, n in enumerate(shape) if a not in axes)
        for shape, axes in zip(shapes, squeeze, strict=True)
    ]
    _, plan, _, _ = _get_plan(
        spec,
        tuple(shapes),
        tuple(dtypes),
        padding,
        strides,
        dilation,
        optimize,
        cost_model,
        autotune_cache,
        None,
    )
    return plan


def contract(
    spec: str,
    *operands: jax.typing.ArrayLike,
    padding: Any = "VALID",
    strides: Any = None,
    dilation: Any = None,
    optimize: Any = "cost",
    precision: Any = None,
    preferred_element_type: Any = None,
    cost_model: CostModel | None = None,
    autotune_cache: str | None = None,
    conv_impl: str = "auto",
) -> jax.Array:
    """Generalised einsum whose modes after `|` are convolved.

    Anything `jnp.einsum` takes works the same (ellipses, implicit outputs, size-1
    broadcasting, modes from any alphabet, scalars).

    Examples:
      >>> import jax.numpy as jnp
      >>> a, b = jnp.ones((2, 3)), jnp.ones((3, 4))
      >>> contract("ij,jk->ik", a, b).shape  # a @ b
      (2, 4)
      >>> x, w = jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 5))
      >>> contract("bhws,hwst->bhwt|hw", x, w, padding="SAME").shape  # an NHWC conv layer
      (1, 8, 8, 5)

      An RCP conv layer with 3 channel modes (input modes x, y, z; output modes u, v, t;
      CP rank r) is one call:

      >>> x = jnp.ones((1, 8, 8, 2, 2, 2))
      >>> c1, c2, c3 = jnp.ones((2, 2, 4)), jnp.ones((2, 2, 4)), jnp.ones((2, 2, 4))
      >>> c0 = jnp.ones((3, 3, 4))
      >>> spec = "bhwxyz,uxr,vyr,tzr,hwr->bhwuvt|hw"
      >>> contract(spec, x, c1, c2, c3, c0, padding="SAME").shape
      (1, 8, 8, 2, 2, 2)
      >>> contract("...a,...b", jnp.ones((5, 4, 2)), jnp.ones((5, 4, 3))).shape
      (5, 4, 2, 3)

    Args:
      spec: `"in1,in2,...->out|conv"`; modes are single letters, `...` is allowed when no
        mode is convolved; the output may be omitted for pure einsum specs.
      *operands: arrays whose dimensions match the terms of `spec`.
      padding: "VALID", "SAME", "SAME_LOWER", an int, or one of these or a (low, high) pair
        per convolved mode (a sequence in the order written after `|`, or a dict keyed by
        mode); with one convolved mode a (low, high) pair may be given directly. (With two
        convolved modes, (1, 2) means 1 for the first mode and 2 for the second.)
      strides: int >= 1, or one per convolved mode (sequence or dict); default 1.
      dilation: filter dilation, int >= 1 or one per convolved mode; default 1.
      optimize: "cost" (cost model of FLOPs and memory traffic, default), "flops"
        (FLOP-optimal), "naive" (left to right), "autotune" (time the candidates once and
        cache the winner), or an explicit opt_einsum-format path.
      precision, preferred_element_type: passed to `lax.dot_general` / `lax.conv_general_dilated`.
      cost_model: overrides the default `CostModel` of the backend.
      autotune_cache: JSON file path storing autotune winners across processes (also read
        from the `TNJAX_AUTOTUNE_CACHE` environment variable).
      conv_impl: how convolution steps are lowered: "auto" (default: "gemm" on the CPU,
        "xla" elsewhere), "xla" (`lax.conv_general_dilated`), or "gemm" (depthwise steps
        as shifted slices, other steps with a kernel gradient of per-tap GEMMs); see
        `tnjax.ops.convolution`. All compute the same values and derivatives.

    Returns:
      The contracted array with the output's modes in the order of `spec`.

    Raises:
      ValueError: unknown or mismatched modes, shapes that do not fit the spec, a
        convolved mode not shared by exactly two operands, an invalid path.
    """
    resolve_impl(conv_impl)  # a bad name fails here, with or without convolved modes
    with jax.named_scope("tnjax.ops.contract"):
        arrays = [jnp.asarray(x) for x in operands]
        if arrays:  # lax.dot_general/conv need one dtype; promote like jnp.einsum does
            common = jnp.result_type(*arrays)
            arrays = [x if x.dtype == common else x.astype(common) for x in arrays]
        shapes = tuple(tuple(int(n) for n in x.shape) for x in arrays)
        spec, squeeze = canonical_spec(spec, shapes)
        if any(squeeze):  # size-1 dimensions that broadcast
            arrays = [
                jnp.squeeze(x, axes) if axes else x for x, axes in zip(arrays, squeeze, strict=True)
            ]
            shapes = tuple(tuple(int(n) for n in x.shape) for x in arrays)
        dtypes = tuple(np.dtype(x.dtype).name for x in arrays)
        cache = autotune_cache or os.environ.get("TNJAX_AUTOTUNE_CACHE") or None
        problem, plan, raw_terms, clean_terms = _get_plan(
            spec,
            shapes,
            dtypes,
            padding,
            strides,
            dilation,
            optimize,
            cost_model,
            cache,
            precision,
        )
        for i, (raw, clean) in enumerate(zip(raw_terms, clean_terms, strict=True)):
            if raw != clean:  # take the diagonal of repeated modes first
                arrays[i] = jnp.einsum(f"{raw}->{clean}", arrays[i])
        if len(arrays) == 1:
            x, m = _sum_unique(arrays[0], problem.terms[0], set(problem.output))
            return (
                jnp.transpose(x, [m.index(c) for c in problem.output]) if m != problem.output else x
            )
        backward = _backward_path(plan)
        if backward is None or not all(jnp.issubdtype(x.dtype, jnp.inexact) for x in arrays):
            return _execute(
                problem, plan.path, precision, preferred_element_type, conv_impl, *arrays
            )
        return _execute_split(
            problem, plan.path, backward, precision, preferred_element_type, conv_impl, *arrays
        )
