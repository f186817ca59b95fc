"""Checkpoints: bit-exact round trips, sharded restore, the earlier flat layout, the fallback
past a damaged newest step, and one-line errors for writes that fail."""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import checkpoint
from experiments.checkpoint import Checkpointer, CheckpointError, CheckpointMismatchError


class _Net(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.lin = nnx.Linear(3, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.out = nnx.Linear(4, 2, rngs=rngs)


def _train_state(seed: int) -> dict:
    """{"train": {step, params, rest, opt_state}, "elapsed"}: nnx.State, adam, scalars, with
    every leaf away from its initial value (nonzero moments, updated batch statistics)."""
    _, params, rest = nnx.split(_Net(rngs=nnx.Rngs(seed)), nnx.Param, ...)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    opt_state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.sin(p + seed + 1.0), params)
    _, opt_state = tx.update(grads, opt_state, params)
    rest = jax.tree.map(lambda x: x + 0.25 * (seed + 1), rest)
    train = {
        "step": jnp.asarray(7 + seed, jnp.int32),
        "params": params,
        "rest": rest,
        "opt_state": opt_state,
    }
    return {"train": train, "elapsed": np.float64(12.345678901234567 + seed)}


def _assert_bit_identical(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert (g.dtype, g.shape) == (w.dtype, w.shape)
        assert g.tobytes() == w.tobytes()


def _small(scale: float) -> dict:
    return {"w": jnp.arange(6.0).reshape(2, 3) * scale, "b": jnp.full(3, scale), "n": np.int64(3)}


def _damage(step_dir: str, how: str) -> None:
    """Truncates, deletes or garbles the files of one step, or leaves it half written."""
    data = [f for f in glob.glob(f"{step_dir}/state/**/d/*", recursive=True) if os.path.isfile(f)]
    assert data, os.listdir(step_dir)
    if how == "truncate":
        for f in data:
            os.truncate(f, os.path.getsize(f) // 2)
    elif how == "delete":
        os.remove(data[0])
    elif how == "garbage":
        for f in data:
            with open(f, "wb") as fh:
                fh.write(b"\x07" * os.path.getsize(f))
    elif how == "garbage_description":
        with open(os.path.join(step_dir, "tree", "metadata"), "w") as fh:
            fh.write("{not json")
    elif how == "half_written":  # a step directory without its arrays
        shutil.rmtree(os.path.join(step_dir, "state"))
    else:
        raise ValueError(how)


def test_nnx_state_adam_and_scalars_round_trip_bit_identical(tmp_path):
    state = _train_state(0)
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(3, state)
    assert (ckpt.latest_step(), ckpt.all_steps()) == (3, [3])

    restored = ckpt.restore(_train_state(1))  # other values, same structure
    _assert_bit_identical(restored, state)
    assert isinstance(restored["train"]["params"], nnx.State)
    assert type(restored["train"]["opt_state"][1][0]) is optax.ScaleByAdamState
    assert float(restored["elapsed"]) == 12.345678901234567
    assert int(restored["train"]["step"]) == 7
    ckpt.close()


def test_the_state_item_is_plain_orbax_keyed_by_the_real_paths(tmp_path):
    state = _train_state(0)
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(5, state)
    ckpt.close()
    plain = ocp.StandardCheckpointer().restore(os.path.join(str(tmp_path), "5", "state"))
    kernel = state["train"]["params"]["lin"]["kernel"][...]
    np.testing.assert_array_equal(plain["train"]["params"]["lin"]["kernel"]["value"], kernel)
    mu = state["train"]["opt_state"][1][0].mu["out"]["bias"][...]
    np.testing.assert_array_equal(
        plain["train"]["opt_state"][1][0]["mu"]["out"]["bias"]["value"], mu
    )
    assert float(plain["elapsed"]) == 12.345678901234567


def test_restores_onto_a_named_sharding_of_a_one_device_mesh(tmp_path):
    state = _train_state(0)
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(1, state)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    replicated = NamedSharding(mesh, P())
    # a prefix: one sharding for the whole training state, host numpy for "elapsed"
    step, restored = ckpt.restore_latest(
        _train_state(1), shardings={"train": replicated, "elapsed": None}
    )
    assert step == 1
    for x in jax.tree.leaves(restored["train"]):
        assert isinstance(x, jax.Array) and x.sharding == replicated
    assert isinstance(restored["elapsed"], np.ndarray)
    _assert_bit_identical(restored, state)


def _save_flat_layout(directory: str, step: int, state) -> None:
    """A checkpoint as the earlier `Checkpointer.save` wrote it: leaf_00000... + "tree"."""
    manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False),
    )
    leaves = jax.tree.leaves(state)
    items = {
        f"leaf_{i:05d}": x if isinstance(x, jax.Array) else np.asarray(x)
        for i, x in enumerate(leaves)
    }
    manager.save(
        step,
        args=ocp.args.Composite(
            leaves=ocp.args.StandardSave(items),
            tree=ocp.args.JsonSave({"leaves": checkpoint.describe_tree(state)}),
        ),
        force=True,
    )
    manager.close()


def test_a_checkpoint_of_the_earlier_flat_layout_still_restores(tmp_path):
    state = _train_state(0)
    _save_flat_layout(str(tmp_path), 30, state)
    ckpt = Checkpointer(str(tmp_path))
    assert os.path.isdir(os.path.join(ckpt.step_directory(30), "leaves"))
    _assert_bit_identical(ckpt.restore(_train_state(1)), state)
    step, restored = ckpt.restore_latest(_train_state(1))
    assert step == 30
    _assert_bit_identical(restored, state)
    # a different model is still reported for the flat layout (by position)
    with pytest.raises(CheckpointMismatchError, match=re.escape("['step']")):
        ckpt.restore({"step": jnp.zeros((2,), jnp.int32)})
    # and the next save, in the pytree layout, restores next to it
    ckpt.save(40, _train_state(2))
    step, restored = ckpt.restore_latest(_train_state(1))
    assert step == 40
    _assert_bit_identical(restored, _train_state(2))


@pytest.mark.parametrize(
    "how", ["truncate", "delete", "garbage", "garbage_description", "half_written"]
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_step_before(tmp_path, caplog, how):
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(10, _small(1.0))
    ckpt.save(20, _small(2.0))
    _damage(ckpt.step_directory(20), how)
    ckpt = Checkpointer(str(tmp_path))
    hook = sys.unraisablehook
    with caplog.at_level(logging.WARNING):
        step, restored = ckpt.restore_latest(_small(0.0))
    assert sys.unraisablehook is hook  # the quieting of orbax's aborted reads is undone
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert step == 10
    _assert_bit_identical(restored, jax.tree.map(np.asarray, _small(1.0)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    ours = [m for m in warnings if ckpt.step_directory(20) in m]
    assert len(ours) == 1, warnings
    assert "\n" not in ours[0] and "trying step 10" in ours[0]
    assert ckpt.all_steps() == [10, 20]  # nothing deleted


def test_saving_again_replaces_the_damaged_step(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(10, _small(1.0))
    ckpt.save(20, _small(2.0))
    _damage(ckpt.step_directory(20), "truncate")
    ckpt = Checkpointer(str(tmp_path))
    assert ckpt.restore_latest(_small(0.0))[0] == 10
    ckpt.save(20, _small(3.0))  # the resumed run reaches step 20 again
    step, restored = Checkpointer(str(tmp_path)).restore_latest(_small(0.0))
    assert step == 20
    np.testing.assert_array_equal(restored["w"], np.arange(6.0).reshape(2, 3) * 3.0)


def test_every_checkpoint_damaged_raises_checkpoint_error_naming_the_directory(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpts"))
    assert ckpt.restore_latest(_small(0.0)) is None  # no checkpoint at all
    ckpt.save(10, _small(1.0))
    ckpt.save(20, _small(2.0))
    _damage(ckpt.step_directory(10), "delete")
    _damage(ckpt.step_directory(20), "truncate")
    ckpt = Checkpointer(str(tmp_path / "ckpts"))
    with pytest.raises(CheckpointError) as info:
        ckpt.restore_latest(_small(0.0))
    assert not isinstance(info.value, CheckpointMismatchError)
    message = str(info.value)
    assert message.startswith(f"none of the 2 checkpoints in {ckpt.directory} can be restored")
    assert "\n" not in message and ckpt.step_directory(20) in message
    with pytest.raises(CheckpointError, match=re.escape(ckpt.step_directory(10))):
        ckpt.restore(_small(0.0), 10)


def test_a_different_model_is_reported_at_once_without_falling_back(tmp_path, caplog):
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(10, _small(1.0))
    ckpt.save(20, _small(2.0))
    other_shape = {**_small(0.0), "w": jnp.zeros((2, 4))}
    with caplog.at_level(logging.WARNING):
        with pytest.raises(
            CheckpointMismatchError, match=re.escape("['w'] was saved as float32[2, 3]")
        ):
            ckpt.restore_latest(other_shape)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    renamed = {"b": jnp.zeros(3), "n": np.int64(0), "v": jnp.zeros((2, 3))}
    with pytest.raises(CheckpointMismatchError, match=re.escape("['w'] float32[2, 3] was saved")):
        ckpt.restore(renamed)
    with pytest.raises(CheckpointMismatchError, match=re.escape("['w'] was saved, the config")):
        ckpt.restore({"b": jnp.zeros(3), "n": np.int64(0)})
    assert issubclass(CheckpointMismatchError, CheckpointError)
    assert issubclass(CheckpointError, RuntimeError)


def test_a_full_disk_raises_one_line_and_keeps_the_previous_step(tmp_path, monkeypatch):
    ckpt = Checkpointer(str(tmp_path / "ckpts"), max_to_keep=1)
    ckpt.save(100, _small(1.0))

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt._manager._checkpointer, "save", full)
    with pytest.raises(CheckpointError) as info:
        ckpt.save(200, _small(2.0))
    assert str(info.value) == (
        f"cannot write checkpoint step 200 to {ckpt.directory}: [Errno 28] No space left on device"
    )
    assert isinstance(info.value.__cause__, OSError)
    # max_to_keep=1 did not delete step 100 before step 200 was complete
    assert Checkpointer(str(tmp_path / "ckpts")).all_steps() == [100]
    monkeypatch.undo()
    ckpt.save(200, _small(2.0))
    assert Checkpointer(str(tmp_path / "ckpts")).all_steps() == [200]


def test_a_tensorstore_write_error_is_reduced_to_its_os_error(tmp_path, monkeypatch):
    ckpt = Checkpointer(str(tmp_path))
    message = (
        'RESOURCE_EXHAUSTED: Error writing "w/0.0" in OCDBT database at local file "/x/": '
        "Failed to write 897503 bytes to file 7: No space left on device "
        "[os_error_code='28'] [tensorstore_spec='{}']"
    )

    def full(*args, **kwargs):
        raise ValueError(message)

    monkeypatch.setattr(ckpt._manager._checkpointer, "save", full)
    with pytest.raises(CheckpointError, match=re.escape("3 to " + ckpt.directory + ": [Errno 28]")):
        ckpt.save(3, _small(1.0))


def test_a_directory_that_became_a_file_raises_one_line(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpts"))
    shutil.rmtree(tmp_path / "ckpts")
    (tmp_path / "ckpts").write_text("not a directory")
    with pytest.raises(CheckpointError) as info:
        ckpt.save(1, _small(1.0))
    message = str(info.value)
    assert message.startswith(f"cannot write checkpoint step 1 to {ckpt.directory}: ")
    assert "Errno" in message and "\n" not in message
    assert info.value.__cause__ is not None


def test_a_directory_that_cannot_be_created_raises_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    path = str(tmp_path / "file" / "ckpts")
    with pytest.raises(CheckpointError) as info:
        Checkpointer(path)
    message = str(info.value)
    assert message.startswith(f"cannot create the checkpoint directory {path}: [Errno ")
    assert "\n" not in message and isinstance(info.value.__cause__, OSError)
