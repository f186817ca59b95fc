"""Tests of tnjax.ops.contract against jnp.einsum and lax.conv_general_dilated references."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from tnjax.ops import contract, contract_path
from tnjax.ops import contraction as contract_module

STRATEGIES = ["cost", "flops", "naive"]


def _randn(key, *shapes, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(key), len(shapes))
    return [jax.random.normal(k, s, dtype) for k, s in zip(keys, shapes, strict=True)]


def _conv_ref(x, w, strides=(1, 1), padding="VALID", dilation=(1, 1)):
    return jax.lax.conv_general_dilated(
        x,
        w,
        strides,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


EINSUM_CASES = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("ij,jk,kl->il", [(3, 4), (4, 5), (5, 2)]),
    ("ij,jk", [(3, 1), (1, 5)]),  # implicit output, size-1 modes
    ("abc,ade->bcde", [(2, 3, 5), (2, 7, 1)]),  # mode-(0,0) contraction
    ("abc,ade->abcde", [(2, 3, 5), (2, 7, 3)]),  # partial outer (batch) product
    ("abc,def->abcdef", [(2, 3, 1), (1, 2, 3)]),  # outer product
    ("its,jrt,ksr->ijk", [(3, 4, 5), (2, 6, 4), (3, 5, 6)]),  # TNN paper's compound op
    ("ab,bc,cd,de,ef->af", [(3, 5), (5, 7), (7, 3), (3, 2), (2, 9)]),
    ("ab,bc,cd,de,ef,fg->", [(3, 5), (5, 7), (7, 3), (3, 2), (2, 9), (9, 1)]),  # scalar out
    ("ii->i", [(4, 4)]),  # diagonal
    ("iij,jk->ik", [(3, 3, 5), (5, 2)]),  # diagonal inside a product
    ("abc->ca", [(2, 3, 4)]),  # sum + transpose
    ("...ij,jk->...ik", [(2, 3, 4, 5), (5, 6)]),
    ("bi,rij,jk->brk", [(5, 3), (1, 3, 7), (7, 2)]),
]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("spec,shapes", EINSUM_CASES)
def test_einsum_specs_match_jnp_einsum(spec, shapes, strategy):
    ops = _randn(0, *shapes)
    got = contract(spec, *ops, optimize=strategy)
    want = jnp.einsum(spec, *ops, precision="highest")
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_tt_matrix_orders_2_to_6_match_einsum():
    for d in range(2, 7):
        rows, cols = [2 + k % 3 for k in range(d)], [3 - k % 2 for k in range(d)]
        ranks = [1] + [1 + (k % 3) for k in range(d - 1)] + [1]
        ins, outs, rks = "abcdef"[:d], "ghijkl"[:d], "mnopqrs"[: d + 1]
        spec = (
            "z"
            + ins
            + ","
            + ",".join(f"{rks[k]}{ins[k]}{outs[k]}{rks[k + 1]}" for k in range(d))
            + "->z"
            + outs
        )
        shapes = [(3, *rows)] + [(ranks[k], rows[k], cols[k], ranks[k + 1]) for k in range(d)]
        ops = _randn(d, *shapes)
        np.testing.assert_allclose(
            jax.jit(lambda *o, s=spec: contract(s, *o))(*ops),
            jnp.einsum(spec, *ops, precision="highest"),
            rtol=1e-4,
            atol=1e-4,
        )


@pytest.mark.parametrize("padding", ["VALID", "SAME", ((1, 0), (2, 1))])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (1, 3)])
def test_conv_layer_matches_lax(padding, strides):
    x, w = _randn(1, (2, 9, 8, 3), (3, 2, 3, 5))
    got = contract("bhws,hwst->bhwt|hw", x, w, padding=padding, strides=strides)
    np.testing.assert_allclose(got, _conv_ref(x, w, strides, padding), rtol=1e-5, atol=1e-5)


def test_conv_dilation_and_per_mode_dicts():
    x, w = _randn(2, (2, 11, 10, 3), (3, 3, 3, 4))
    got = contract(
        "bhws,hwst->bhwt|hw", x, w, padding={"h": "SAME", "w": (0, 0)}, strides={"h": 2}, dilation=2
    )
    want = jax.lax.conv_general_dilated(
        x,
        w,
        (2, 1),
        [(2, 2), (0, 0)],
        rhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv_1x1_and_1d():
    x, w = _randn(3, (4, 5, 5, 6), (1, 1, 6, 7))
    np.testing.assert_allclose(
        contract("bhws,hwst->bhwt|hw", x, w), _conv_ref(x, w), rtol=1e-5, atol=1e-5
    )
    x1, w1 = _randn(4, (2, 10, 3), (3, 3, 4))
    want = jax.lax.conv_general_dilated(
        x1, w1, (1,), "SAME", dimension_numbers=("NHC", "HIO", "NHC")
    )
    np.testing.assert_allclose(
        contract("bls,lst->blt|l", x1, w1, padding="SAME"), want, rtol=1e-5, atol=1e-5
    )


def test_depthwise_conv_is_a_batch_product_over_channels():
    x, w = _randn(5, (2, 7, 7, 4), (3, 3, 4))
    got = contract("bhwc,hwc->bhwc|hw", x, w, padding="SAME")
    want = jax.lax.conv_general_dilated(
        x,
        w[:, :, None, :],
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=4,
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cp_and_tt_conv_equal_conv_with_reconstructed_kernel(strategy):
    (x,) = _randn(6, (2, 9, 9, 6))
    ct, cs, ch, cw = _randn(7, (4, 5), (4, 6), (4, 3), (4, 3))
    kernel = jnp.einsum("rt,rs,rh,rw->hwst", ct, cs, ch, cw)
    got = contract(
        "bhws,rt,rs,rh,rw->bhwt|hw", x, ct, cs, ch, cw, padding="SAME", optimize=strategy
    )
    np.testing.assert_allclose(got, _conv_ref(x, kernel, padding="SAME"), rtol=1e-4, atol=1e-4)

    g1, g2, g3, g4 = _randn(8, (2, 5), (2, 3, 3), (3, 4, 3), (4, 6))  # TT conv of TNN paper
    kernel = jnp.einsum("pt,pqh,quw,us->hwst", g1, g2, g3, g4)
    got = contract("bhws,pt,pqh,quw,us->bhwt|hw", x, g1, g2, g3, g4, strides=2, optimize=strategy)
    np.testing.assert_allclose(got, _conv_ref(x, kernel, (2, 2)), rtol=1e-4, atol=1e-4)


def test_rcp_layer_is_one_call():
    # RCP with M=3 channel modes: S = 2*3*2, T = 3*2*2 (no power of two required)
    (x,) = _randn(9, (2, 6, 6, 2, 3, 2))
    c1, c2, c3, c0 = _randn(10, (4, 3, 2), (4, 2, 3), (4, 2, 2), (4, 3, 3))
    got = contract("bhwxyz,rux,rvy,rqz,rhw->bhwuvq|hw", x, c1, c2, c3, c0, padding="SAME")
    kernel = jnp.einsum("rux,rvy,rqz,rhw->hwxyzuvq", c1, c2, c3, c0).reshape(3, 3, 12, 12)
    want = _conv_ref(x.reshape(2, 6, 6, 12), kernel, padding="SAME").reshape(2, 6, 6, 3, 2, 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_where_kernel_is_larger_than_signal_with_same_padding():
    x, w = _randn(11, (1, 1, 1, 3), (3, 3, 3, 2))
    np.testing.assert_allclose(
        contract("bhws,hwst->bhwt|hw", x, w, padding="SAME"),
        _conv_ref(x, w, padding="SAME"),
        rtol=1e-5,
        atol=1e-5,
    )


def test_jit_equals_eager_and_vmap_equals_batched():
    (x,) = _randn(12, (3, 8, 8, 4))
    ct, cs, ch, cw = _randn(13, (3, 5), (3, 4), (3, 3), (3, 3))
    spec = "bhws,rt,rs,rh,rw->bhwt|hw"
    eager = contract(spec, x, ct, cs, ch, cw, padding="SAME")
    jitted = jax.jit(lambda *o: contract(spec, *o, padding="SAME"))(x, ct, cs, ch, cw)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
    # vmap over a leading axis of the factors equals a loop
    cts = jnp.stack([ct, 2 * ct, -ct])
    vm = jax.vmap(lambda t: contract(spec, x, t, cs, ch, cw, padding="SAME"))(cts)
    loop = jnp.stack([contract(spec, x, t, cs, ch, cw, padding="SAME") for t in cts])
    np.testing.assert_allclose(vm, loop, rtol=1e-5, atol=1e-5)
    a, b = _randn(14, (6, 3, 4), (4, 5))
    np.testing.assert_allclose(
        jax.vmap(lambda u: contract("ij,jk->ik", u, b))(a),
        jnp.einsum("nij,jk->nik", a, b),
        rtol=1e-5,
        atol=1e-5,
    )


def test_grads_float64():
    with jax.enable_x64(True):
        x, w = _randn(15, (2, 5, 5, 2), (3, 3, 2, 3), dtype=jnp.float64)
        check_grads(
            lambda a, b: contract("bhws,hwst->bhwt|hw", a, b, padding="SAME", strides=2),
            (x, w),
            order=2,
            modes=("rev",),
        )
        g1, g2, g3 = _randn(16, (1, 3, 2, 2), (2, 2, 3, 2), (2, 3, 2, 1), dtype=jnp.float64)
        (xx,) = _randn(17, (4, 3, 2, 3), dtype=jnp.float64)
        check_grads(
            lambda *o: contract("zabc,paex,xbfy,ycgq->zefg", *o),
            (xx, g1, g2, g3),
            order=2,
            modes=("rev",),
        )


def test_no_retracing_and_plans_are_cached():
    contract_module.clear_plan_cache()
    traces = []

    @jax.jit
    def f(a, b, c):
        traces.append(1)
        return contract("ij,jk,kl->il", a, b, c)

    ops = _randn(18, (3, 4), (4, 5), (5, 6))
    f(*ops)
    f(*[o + 1 for o in ops])
    assert len(traces) == 1
    before = contract_module._plan_cached.cache_info()
    contract("ij,jk,kl->il", *ops)
    contract("ij,jk,kl->il", *ops)
    after = contract_module._plan_cached.cache_info()
    assert after.hits - before.hits >= 1
    assert after.misses - before.misses <= 1


def test_contract_path_reports_conv_flops_exactly():
    plan = contract_path("bhws,hwst->bhwt|hw", (8, 16, 16, 3), (3, 3, 3, 4), padding="SAME")
    assert plan.cost.flops == 2 * 8 * 16 * 16 * 4 * 3 * 3 * 3
    assert plan.cost.bytes_written == 8 * 16 * 16 * 4 * 4
    plan = contract_path("bhws,hwst->bhwt|hw", (8, 16, 16, 3), (3, 3, 3, 4), strides=2)
    assert plan.cost.flops == 2 * 8 * 7 * 7 * 4 * 3 * 3 * 3


def test_contract_path_figures_and_printing():
    shapes = [(100, 2, 7, 8), (1, 2, 4, 4), (4, 7, 4, 4), (4, 8, 4, 1)]
    spec = "zabc,paex,xbfy,ycgq->zefg"
    plan = contract_path(spec, *shapes)
    assert plan.flop_optimal.flops <= plan.cost.flops
    assert plan.flop_optimal.flops <= plan.naive.flops
    assert all(plan.flop_optimal.flops <= c.flops for c in plan.candidates.values())
    assert plan.cost.seconds <= min(c.seconds for c in plan.candidates.values()) + 1e-15
    text = str(plan)
    assert "flop-optimal" in text and "naive" in text and "largest" in text
    assert len(plan.steps) == len(shapes) - 1
    sds = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    assert contract_path(spec, *sds).path == plan.path
    # the naive path's FLOPs equal a hand count for a 2-operand matmul
    p2 = contract_path("ij,jk->ik", (3, 4), (4, 5))
    assert p2.naive.flops == 2 * 3 * 4 * 5 and p2.naive.largest_intermediate == 15


def test_explicit_path_and_strategies_give_same_values():
    ops = _randn(19, (3, 4), (4, 5), (5, 6), (6, 2))
    ref = contract("ij,jk,kl,lm->im", *ops, optimize="naive")
    for path in [[(2, 3), (1, 2), (0, 1)], [(0, 1), (0, 1), (0, 1)], [(1, 2), (0, 2), (0, 1)]]:
        np.testing.assert_allclose(
            contract("ij,jk,kl,lm->im", *ops, optimize=path), ref, rtol=1e-5, atol=1e-5
        )


def test_autotune_caches_in_memory_and_on_disk(tmp_path):
    contract_module.clear_plan_cache()
    cache = tmp_path / "tune.json"
    ops = _randn(20, (16, 4, 4, 4), (1, 4, 4, 3), (3, 4, 4, 3), (3, 4, 4, 1))
    spec = "zabc,paex,xbfy,ycgq->zefg"
    plan = contract_path(spec, *ops, optimize="autotune", autotune_cache=str(cache))
    assert plan.strategy == "autotune" and plan.chosen in plan.candidates
    assert set(plan.timings) and min(plan.timings, key=plan.timings.get) == plan.chosen
    stored = json.loads(cache.read_text())
    (entry,) = stored.values()
    assert entry["chosen"] == plan.chosen
    # a new process (simulated by clearing memory) reads the winner from disk
    contract_module.clear_plan_cache()
    again = contract_path(spec, *ops, optimize="autotune", autotune_cache=str(cache))
    assert again.chosen == plan.chosen and again.timings == pytest.approx(plan.timings)
    # autotune under jit: timing happens at trace time, the result is right
    got = jax.jit(lambda *o: contract(spec, *o, optimize="autotune", autotune_cache=str(cache)))(
        *ops
    )
    np.testing.assert_allclose(
        got, jnp.einsum(spec, *ops, precision="highest"), rtol=1e-4, atol=1e-4
    )


def test_cost_model_prefers_low_traffic_path_on_novikov_layer():
    # 25088 -> 4096 TT-matrix, rank 4, B=100: the FLOP-optimal order writes 3x more memory.
    rows, cols = (2, 7, 8, 8, 7, 4), (4,) * 6
    ranks = (1, 4, 4, 4, 4, 4, 1)
    spec = (
        "zabcdef,"
        + ",".join(f"{'mnopqrs'[k]}{'abcdef'[k]}{'ghijkl'[k]}{'mnopqrs'[k + 1]}" for k in range(6))
        + "->zghijkl"
    )
    shapes = [(100, *rows)] + [(ranks[k], rows[k], cols[k], ranks[k + 1]) for k in range(6)]
    plan = contract_path(spec, *shapes)
    assert plan.cost.bytes_written < plan.flop_optimal.bytes_written
    dense_flops = 2 * 100 * math.prod(rows) * math.prod(cols)
    assert plan.flop_optimal.flops / dense_flops == pytest.approx(0.0313, abs=1e-3)
    assert plan.cost.flops / dense_flops < 0.1


BAD = [
    ("ij,jk->ik", [(3, 4), (5, 6)], "size 4"),
    ("ij,jk->ik", [(3, 4)], "2 operands"),
    ("ij,jk->iz", [(3, 4), (4, 5)], "'z'"),
    ("ijk,jk->i", [(3, 4), (4, 5)], "(3, 4)"),
    ("ij,jk->ii", [(3, 4), (4, 5)], "repeats"),
    ("bh,h,hc->bhc|h", [(2, 5), (3,), (3, 4)], "exactly two"),
    ("bh,hc->bc|h", [(2, 5), (3, 4)], "output"),
    ("bh,hc->bhc|h", [(2, 2), (3, 4)], "smaller than the filter"),
    ("i1,1k->ik", [(3, 4), (4, 5)], "letters"),
]


@pytest.mark.parametrize("spec,shapes,needle", BAD)
def test_bad_inputs_raise_value_error_naming_the_problem(spec, shapes, needle):
    ops = [jnp.ones(s) for s in shapes]
    with pytest.raises(ValueError, match=None) as err:
        contract(spec, *ops)
    assert needle in str(err.value), str(err.value)


def test_bad_options_raise_value_error():
    a, b = jnp.ones((3, 4)), jnp.ones((4, 5))
    with pytest.raises(ValueError, match="optimize"):
        contract("ij,jk->ik", a, b, optimize="fastest-please")
    with pytest.raises(ValueError, match="path"):
        contract("ij,jk->ik", a, b, optimize=[(0, 3)])
    x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2))
    with pytest.raises(ValueError, match="strides"):
        contract("bhws,hwst->bhwt|hw", x, w, strides=(1, 1, 1))
    with pytest.raises(ValueError, match="padding"):
        contract("bhws,hwst->bhwt|hw", x, w, padding="FULL")


def test_mixed_dtypes_promote_like_einsum():
    a = jnp.ones((3, 4), jnp.bfloat16)
    b = jnp.ones((4, 5), jnp.float32)
    got = contract("ij,jk->ik", a, b)
    assert got.dtype == jnp.einsum("ij,jk->ik", a, b).dtype
    np.testing.assert_allclose(got, 4 * np.ones((3, 5)))


def test_backward_along_the_byte_lean_order_gives_the_same_gradients():
    """TT-matrix 1024x1024 r8 at B=256: the cost strategy's forward takes the FLOP-lean order
    and differentiates along the byte-lean one (a custom_vjp); the gradients must equal
    those of plain autodiff through one fixed order, under jit and vmap."""
    from tnjax.ops import contraction

    spec = "zabcd,qair,rbjs,sckt,tdlu->zijkl"
    rng = np.random.default_rng(0)
    shapes = [(256, 4, 4, 8, 8), (1, 4, 4, 8), (8, 4, 4, 8), (8, 8, 8, 8), (8, 8, 8, 1)]
    ops = [jnp.asarray(0.3 * rng.normal(size=s), jnp.float32) for s in shapes]
    plan = contract_path(spec, *ops)
    backward = contraction._backward_path(plan)
    assert backward is not None and tuple(backward) != tuple(plan.path)

    def loss(path):
        return lambda *o: jnp.sum(jnp.tanh(contract(spec, *o, optimize=path)))

    split = jax.jit(jax.grad(loss("cost"), argnums=tuple(range(5))))(*ops)
    plain = jax.grad(loss(plan.path), argnums=tuple(range(5)))(*ops)
    for a, b in zip(split, plain, strict=True):
        scale = float(np.max(np.abs(np.asarray(b))))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * scale)
    # vmap over a stack of two signals (each still B=256, so the split order is in use)
    stacked = jnp.stack([ops[0], 2.0 * ops[0]])
    per_signal = jax.vmap(jax.grad(loss("cost")), in_axes=(0, None, None, None, None))(
        stacked, *ops[1:]
    )
    scale = float(np.max(np.abs(np.asarray(plain[0]))))
    np.testing.assert_allclose(
        np.asarray(per_signal[0]), np.asarray(plain[0]), rtol=1e-4, atol=1e-5 * scale
    )
