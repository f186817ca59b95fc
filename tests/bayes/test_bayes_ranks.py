"""Rank groups of every supported (layer kind, format) against the actual core shapes."""

import pytest
from flax import nnx

from tnjax import bayes
from tnjax import nn as tnn

# Distinct ranks per bond, so a group tied to the wrong axis shows as a size mismatch.
LINEAR_CASES = {
    "cp": 3,
    "rcp": 3,
    "tucker": (2, 3, 1, 4, 3, 2),
    "rtk": (2, 3, 4),
    "tt": (2, 3, 4, 3, 2),
    "ttm": (2, 3),
    "rtt": (3, 2),
    "tr": (2, 3, 4, 2, 3, 2),
    "rtr": (2, 3, 4),
}
EMBED_CASES = {
    "cp": 3,
    "tucker": (4, 3, 2, 5),
    "tt": (2, 3, 4),
    "ttm": (2, 3),
    "tr": (2, 3, 4, 2),
    "rcp": 3,
    "rtk": (2, 3, 4),
    "rtt": (3, 2),
    "rtr": (2, 3, 4),
}
CONV_CASES = {
    "cp": 3,
    "rcp": 3,
    "tucker": (2, 3),
    "rtk": (2, 3, 4),
    "tt": (2, 3, 4),
    "rtt": (3, 2),
    "tr": (2, 3, 4, 3),
    "rtr": (2, 3, 4),
}


def make_layer(kind, fmt, rank):
    """The layer with abstract cores (`nnx.eval_shape`): only shapes matter here."""

    def build():
        rngs = nnx.Rngs(0)
        if kind == "linear":
            return tnn.Linear(24, 30, format=fmt, rank=rank, num_modes=3, rngs=rngs)
        if kind == "embed":
            return tnn.Embed(60, 8, format=fmt, rank=rank, num_modes=3, rngs=rngs)
        return tnn.Conv(8, 12, 3, format=fmt, rank=rank, num_modes=2, rngs=rngs)

    return nnx.eval_shape(build)


CASES = (
    [("linear", f, r) for f, r in LINEAR_CASES.items()]
    + [("embed", f, r) for f, r in EMBED_CASES.items()]
    + [("conv", f, r) for f, r in CONV_CASES.items()]
)


def test_supported_formats_cover_every_format():
    assert set(bayes.SUPPORTED_FORMATS["linear"]) == set(tnn.LINEAR_FORMATS)
    assert set(bayes.SUPPORTED_FORMATS["embed"]) == set(tnn.EMBED_FORMATS)
    assert set(bayes.SUPPORTED_FORMATS["conv"]) == set(tnn.CONV_FORMATS)
    assert {(k, f) for k, f, _ in CASES} == {
        (k, f) for k, fs in bayes.SUPPORTED_FORMATS.items() for f in fs
    }


@pytest.mark.parametrize("kind,fmt,rank", CASES)
def test_groups_match_core_shapes(kind, fmt, rank):
    layer = make_layer(kind, fmt, rank)
    groups = bayes.rank_groups(layer)
    shapes = [tuple(c.shape) for c in layer.cores]
    assert sorted(g.bond for g in groups) == list(range(len(layer.ranks)))
    for g in groups:
        assert g.size == layer.ranks[g.bond]
        for ci, axis in g.axes:
            assert shapes[ci][axis] == g.size, (g, shapes)
        assert len(set(g.axes)) == len(g.axes)
    # each (core, axis) is governed by at most one group
    all_axes = [a for g in groups for a in g.axes]
    assert len(set(all_axes)) == len(all_axes)
    n = len(shapes)
    if fmt in ("cp", "rcp"):
        assert len(groups) == 1
        assert groups[0].slices == tuple((i, len(s) - 1) for i, s in enumerate(shapes))
        assert bayes.fixed_prior_cores(layer) == ()
    elif fmt in ("tucker", "rtk"):
        assert len(groups) == n - 1  # one per factor
        assert all(len(g.slices) == 1 and g.slices[0][0] >= 1 for g in groups)
        assert sorted(g.slices[0][0] for g in groups) == list(range(1, n))
        # the Tucker core's rank axes (Conv Tucker-2's core is (kh, kw, R2, R1))
        core_axes = [2, 3] if (kind, fmt) == ("conv", "tucker") else list(range(len(shapes[0])))
        assert sorted(g.prune_only[0][1] for g in groups) == core_axes
        assert all(g.prune_only[0][0] == 0 for g in groups)
        assert bayes.fixed_prior_cores(layer) == (0,)
    elif fmt in ("tr", "rtr"):  # d groups: bond k ties core k-1's trailing axis, core k's leading
        assert len(groups) == n
        for k, g in enumerate(groups):
            assert set(g.slices) == {((k - 1) % n, len(shapes[(k - 1) % n]) - 1), (k, 0)}
        assert bayes.fixed_prior_cores(layer) == ()
    else:  # tt, ttm, rtt: d - 1 groups, trailing axis of core k and leading axis of core k+1
        assert len(groups) == n - 1
        for k, g in enumerate(groups):
            assert g.slices == ((k, len(shapes[k]) - 1), (k + 1, 0))
        assert bayes.fixed_prior_cores(layer) == ()


def test_dense_layers_have_no_groups():
    for build in (
        lambda: nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
        lambda: nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0)),
        lambda: nnx.Embed(5, 4, rngs=nnx.Rngs(0)),
    ):
        assert bayes.rank_groups(nnx.eval_shape(build)) == []


class _Net(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.a = tnn.Linear(8, 8, format="tt", rank=2, num_modes=2, rngs=rngs)
        self.ring = tnn.Linear(8, 8, format="tr", rank=2, num_modes=2, rngs=rngs)
        self.blocks = nnx.List(
            [nnx.Linear(8, 8, rngs=rngs), tnn.Linear(8, 8, format="cp", rank=2, rngs=rngs)]
        )
        self.blocks[1].tnjax_name = "named"


def test_tensor_layers_names_every_tensorized_layer():
    net = nnx.eval_shape(_Net)
    layers = bayes.tensor_layers(net)
    assert [n for n, _ in layers] == ["a", "named", "ring"]  # graph order
    assert layers[0][1] is net.a
    # the layer itself as a model
    assert [n for n, _ in bayes.tensor_layers(net.a)] == ["Linear"]
