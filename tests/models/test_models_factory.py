"""LayerFactory spec resolution, overrides, errors, and the create_model registry."""

import jax.numpy as jnp
import ml_collections
import pytest
from flax import nnx

import tnjax.nn as tnn
from tnjax.models import MLP, MODELS, LayerFactory, create_model, layer_name


def _mlp(factory):
    return MLP((12, 8, 6, 4), factory=factory, rngs=nnx.Rngs(0))


def test_default_none_builds_everything_dense():
    factory = LayerFactory()
    model = _mlp(factory)
    assert all(type(layer) is nnx.Linear for layer in model.layers)
    assert factory.specs_used == {f"fc{i}": {"format": "dense"} for i in (1, 2, 3)}
    assert [layer_name(layer) for layer in model.layers] == ["fc1", "fc2", "fc3"]


def test_default_tensorizes_all_but_dense_by_default_layers():
    factory = LayerFactory({"format": "tt", "rank": 2})
    model = _mlp(factory)
    fc1, fc2, fc3 = model.layers
    assert isinstance(fc1, tnn.Linear) and isinstance(fc2, tnn.Linear)
    assert fc1.format == fc2.format == "tt"
    assert type(fc3) is nnx.Linear
    assert factory.specs_used["fc3"] == {"format": "dense"}
    y = model(jnp.ones((3, 12)))
    assert y.shape == (3, 4)


def test_override_by_exact_name_applies_to_dense_by_default_layer():
    factory = LayerFactory({"format": "tt", "rank": 2}, {"fc3": {"format": "cp"}})
    model = _mlp(factory)
    assert isinstance(model.layers[2], tnn.Linear) and model.layers[2].format == "cp"
    assert model.layers[2].ranks == (2,)  # rank inherited from the default


def test_glob_overrides_last_match_wins():
    factory = LayerFactory(
        {"format": "tt", "rank": 2},
        {"fc*": {"format": "dense"}, "fc2": {"format": "tucker"}},
    )
    fc1, fc2, fc3 = _mlp(factory).layers
    assert type(fc1) is nnx.Linear and type(fc3) is nnx.Linear
    assert isinstance(fc2, tnn.Linear) and fc2.format == "tucker"


def test_override_rank_replaces_default_compression_and_vice_versa():
    factory = LayerFactory({"format": "tt", "compression": 0.5}, {"fc1": {"rank": 3}})
    assert factory.resolve("fc1", "linear") == {"format": "tt", "rank": 3}
    assert factory.resolve("fc2", "linear") == {"format": "tt", "compression": 0.5}
    factory = LayerFactory({"format": "tt", "rank": 2}, [("fc1", {"compression": 0.3})])
    assert factory.resolve("fc1", "linear") == {"format": "tt", "compression": 0.3}


def test_kind_prefixed_keys():
    factory = LayerFactory(
        {"format": "tt", "rank": 2, "conv_format": "rcp", "conv_rank": 5, "embed_format": "ttm"},
        {"conv1": {"format": "tucker"}},
    )
    assert factory.resolve("fc1", "linear") == {"format": "tt", "rank": 2}
    assert factory.resolve("conv2", "conv") == {"format": "rcp", "rank": 5}
    assert factory.resolve("emb0", "embed") == {"format": "ttm", "rank": 2}
    # an override's plain "format" beats the default's "conv_format"
    assert factory.resolve("conv1", "conv", dense_by_default=True)["format"] == "tucker"
    assert factory.resolve("conv9", "conv", dense_by_default=True)["format"] == "dense"


def test_format_of_another_kind_is_an_error_naming_layer_kind_and_formats():
    # (Linear and Embed take every conv format, so probe a conv with a matrix-only format)
    with pytest.raises(ValueError, match=r"'conv2' is a conv and has no format 'ttm'") as e:
        LayerFactory({"format": "ttm", "rank": 2}).resolve("conv2", "conv")
    assert "rcp" in str(e.value)  # lists the valid conv formats
    with pytest.raises(ValueError, match="'fc1'.*no format"):
        LayerFactory({"rank": 2}).resolve("fc1", "linear")


def test_bad_layer_kwargs_name_the_layer():
    with pytest.raises(TypeError, match="'fc1'.*bogus"):
        _mlp(LayerFactory({"format": "tt", "rank": 2, "bogus": 1}))
    with pytest.raises(ValueError, match="'fc1'.*exactly one of rank= or compression="):
        _mlp(LayerFactory({"format": "tt"}))


def test_override_typo_is_reported_with_the_layer_names():
    with pytest.raises(ValueError, match=r"\['fc_1'\] matched no layer.*fc1, fc2, fc3"):
        _mlp(LayerFactory({"format": "tt", "rank": 2}, {"fc_1": {"rank": 3}, "fc2": {}}))


def test_duplicate_layer_name_is_an_error():
    factory = LayerFactory()
    factory.linear("a", 2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="'a' is used twice"):
        factory.linear("a", 2, 3, rngs=nnx.Rngs(0))


def test_dense_spec_ignores_tensor_keys_and_passes_flax_ones():
    factory = LayerFactory({"format": "dense", "rank": 4, "param_dtype": jnp.bfloat16})
    layer = factory.linear("x", 4, 5, rngs=nnx.Rngs(0))
    assert type(layer) is nnx.Linear and layer.kernel[...].dtype == jnp.bfloat16
    conv = factory.conv("c", 3, 4, 3, strides=2, rngs=nnx.Rngs(0))
    assert type(conv) is nnx.Conv and conv.kernel.shape == (3, 3, 3, 4)
    assert conv(jnp.ones((1, 8, 8, 3))).shape == (1, 4, 4, 4)


def test_create_model_registry_and_errors():
    assert MODELS == {
        "lenet5",
        "resnet20",
        "resnet32",
        "resnet56",
        "resnet50",
        "mlp",
        "dlrm",
        "vit",
    }
    with pytest.raises(ValueError, match="unknown model 'resnet18'.*lenet5"):
        create_model("resnet18", rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"\['depth', 'hidden'\]"):
        create_model("resnet20", rngs=nnx.Rngs(0), depth=32, hidden=3)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['default_spec'\]"):
        create_model("mlp", rngs=nnx.Rngs(0), layers={"default_spec": {}})


def test_create_model_with_config_dict_layers():
    layers = ml_collections.ConfigDict(
        {"default": {"format": "ttm", "rank": 2}, "overrides": {"fc2": {"format": "cp"}}}
    )
    model = create_model("mlp", rngs=nnx.Rngs(0), layers=layers, features=(12, 8, 6, 4))
    assert [getattr(m, "format", "dense") for m in model.layers] == ["ttm", "cp", "dense"]
