"""Meshes, shardings, per-process batches, and multi-device runs on simulated CPU devices.

The multi-device tests run in subprocesses: XLA_FLAGS must be set before jax starts.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from experiments import input_pipeline as ip
from experiments import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env(devices: int) -> dict[str, str]:
    """This process's environment with JAX on `devices` simulated CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _run_python(code: str, devices: int, timeout: int = 600) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    print(proc.stdout)  # the figures, for `pytest -s`
    return proc.stdout


# ----------------------------------------------------------------------------- in process


def test_mesh_config_fills_defaults_and_rejects_unknown_keys():
    assert dict(sharding.mesh_config({})) == {
        "data": -1,
        "model": 1,
        "shard_params": None,
        "shard_min_size": 0,
    }
    assert sharding.mesh_config({"mesh": {"model": 2}}).model == 2
    with pytest.raises(ValueError, match="unknown key.*'modle'"):
        sharding.mesh_config({"mesh": {"modle": 2}})
    with pytest.raises(ValueError, match="not a regex"):
        sharding.mesh_config({"mesh": {"shard_params": "tables["}})


def test_make_mesh_checks_the_device_count():
    n = jax.device_count()
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data", "model") and dict(mesh.shape) == {"data": n, "model": 1}
    with pytest.raises(ValueError, match=f"data=3 x model=1 = 3 devices, but there are {n}"):
        sharding.make_mesh(data=3) if n != 3 else sharding.make_mesh(data=2)
    with pytest.raises(ValueError, match="must be >= 1 and divide"):
        sharding.make_mesh(model=n + 1)


def test_leaf_spec_splits_the_largest_axis_the_model_size_divides():
    # a TT-matrix embedding core (r, V_k, e_k, r): the vocabulary axis
    assert sharding.leaf_spec("params/tables/0/cores/1", (16, 220, 4, 16), 4, "tables", 0) == P(
        None, "model", None, None
    )
    # 250 is not divisible by 4: the next largest axis that is
    assert sharding.leaf_spec("params/t/cores/2", (16, 250, 8, 1), 4, "cores", 0) == P(
        "model", None, None, None
    )
    # not matching, too small, one model device, no divisible axis: replicated
    assert sharding.leaf_spec("params/bottom/0/kernel", (13, 64), 4, "tables", 0) == P()
    assert sharding.leaf_spec("params/tables/0", (16, 220, 4, 16), 4, "tables", 10**6) == P()
    assert sharding.leaf_spec("params/tables/0", (16, 220, 4, 16), 1, "tables", 0) == P()
    assert sharding.leaf_spec("params/tables/0", (3, 5, 7), 4, "tables", 0) == P()
    assert sharding.leaf_spec("params/tables/0", (16, 220), 4, "", 0) == P()


def test_optimizer_moments_are_split_like_their_parameter():
    import optax

    params = {"tables": {"core": np.zeros((4, 8), np.float32)}, "mlp": np.zeros((8,), np.float32)}
    state = {"params": params, "opt_state": optax.adam(1e-3).init(params)}
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    shardings = sharding.state_shardings(state, mesh, {"mesh": {"shard_params": "tables"}})
    # one device on `model`: everything replicated whatever the pattern
    assert all(s.spec == P() for s in jax.tree.leaves(shardings))
    paths = [
        sharding.leaf_path(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]
    ]
    assert "0/mu/tables/core" in paths and "0/nu/tables/core" in paths


def test_shard_batch_and_check_batch_size():
    batch = {"image": np.ones((4, 2, 2, 1), np.float32), "label": np.arange(4, dtype=np.int32)}
    out = sharding.shard_batch(batch, None)
    assert isinstance(out["image"], jax.Array)
    np.testing.assert_array_equal(out["label"], batch["label"])
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    sharded = sharding.shard_batch(batch, jax.sharding.NamedSharding(mesh, P("data")))
    assert sharded["image"].sharding == jax.sharding.NamedSharding(mesh, P("data"))
    sharding.check_batch_size(8, 4)
    with pytest.raises(ValueError, match="batch_size 10 is not divisible by the 4 devices"):
        sharding.check_batch_size(10, 4)


def test_shard_batch_over_two_devices_checks_divisibility():
    code = """
        import numpy as np, jax
        from jax.sharding import NamedSharding, PartitionSpec as P
        from experiments import sharding
        mesh = jax.make_mesh((2,), ("data",))
        s = NamedSharding(mesh, P("data"))
        out = sharding.shard_batch({"x": np.arange(8.0).reshape(4, 2)}, s)
        assert [sh.data.shape for sh in out["x"].addressable_shards] == [(2, 2), (2, 2)]
        try:
            sharding.shard_batch({"x": np.zeros((3, 2))}, s)
        except ValueError as e:
            assert "not divisible by the 2 devices" in str(e), e
        else:
            raise SystemExit("no error for a batch of 3 over 2 devices")
        print("ok")
        """
    assert "ok" in _run_python(code, devices=2, timeout=120)


def test_process_slices_partition_the_global_batch():
    assert ip.process_slice(12, (0, 1)) == slice(0, 12)
    assert [ip.process_slice(12, (i, 3)) for i in range(3)] == [
        slice(0, 4),
        slice(4, 8),
        slice(8, 12),
    ]
    with pytest.raises(ValueError, match="not divisible by the 5 processes"):
        ip.process_slice(12, (0, 5))
    with pytest.raises(ValueError, match="need 0 <= index < count"):
        ip.process_slice(12, (3, 3))


@pytest.mark.parametrize("augment", ["none", "cifar"])
def test_each_process_reads_its_rows_of_the_one_process_batch(augment):
    rng = np.random.default_rng(0)
    train = {
        "image": rng.normal(size=(64, 8, 8, 3)).astype(np.float32),
        "label": rng.integers(0, 10, 64).astype(np.int32),
    }
    ds = ip.Dataset(
        name="toy", train=train, test=train, num_classes=10, source="synthetic", info={}
    )
    whole = ip.train_batch(ds, 5, 16, seed=3, augment=augment)
    parts = [ip.train_batch(ds, 5, 16, seed=3, augment=augment, process=(i, 4)) for i in range(4)]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    evals = ip.process_rows(next(ip.eval_batches(train, 16)), (1, 2))
    np.testing.assert_array_equal(evals["label"], train["label"][8:16])


# -------------------------------------------------------------------- 4 simulated devices


def test_data_parallel_steps_equal_one_device_steps():
    """N Adam steps of a DLRM (TT-matrix tables) on a 4-device data mesh, and on a (2 data x
    2 model) mesh with the tables' cores split on `model`, against one device, same batches."""
    out = _run_python(
        """
        import jax, numpy as np, optax
        from flax import nnx
        from jax.sharding import NamedSharding, PartitionSpec as P
        from experiments import input_pipeline as ip, loop, sharding, tasks, train
        from configs import dlrm
        assert jax.device_count() == 4
        config = dlrm.get_config("quick,format=ttm,rank=4")
        ds = ip.load_dataset(train.data_config(config))
        task = tasks.TASKS["ctr"]

        def run(devices, model, pattern):
            model_ = train.build_model(config, ds)
            tx = optax.adam(1e-2)
            t = loop.Trainable.create(model_, tx)
            mesh = sharding.make_mesh(model=model, devices=devices)
            cfg = {"mesh": {"model": model, "shard_params": pattern}}
            state_sh = sharding.state_shardings(t.state, mesh, cfg)
            batch_sh = NamedSharding(mesh, P("data"))
            step = loop.make_train_step(t, tx, task, state_sharding=state_sh,
                                         batch_sharding=batch_sh)
            state = jax.device_put(t.state, state_sh)
            for s in range(6):
                batch = ip.train_batch(ds, s, 64, seed=0)
                state, _ = step(state, sharding.shard_batch(batch, batch_sh))
            sharded = sum(
                1 for x in jax.tree.leaves(state["params"])
                if x.addressable_shards[0].data.shape != x.shape
            )
            return jax.device_get(state["params"]), sharded

        one, _ = run(jax.devices()[:1], 1, "")
        for model, pattern in ((1, ""), (2, "embeddings")):
            many, sharded = run(jax.devices(), model, pattern)
            assert (sharded > 0) == (model > 1), sharded
            worst = 0.0
            for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many), strict=True):
                a, b = np.asarray(a), np.asarray(b)
                worst = max(worst, float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30)))
            print(f"model={model}: {sharded} sharded params, worst relative diff {worst:.2e}")
            assert worst < 1e-5, worst
        print("ok")
        """,
        devices=4,
    )
    assert out.strip().endswith("ok"), out


def test_model_sharded_ttm_embedding_matches_the_unsharded_one():
    out = _run_python(
        """
        import jax, jax.numpy as jnp, numpy as np
        from flax import nnx
        from jax.sharding import NamedSharding, PartitionSpec as P
        from experiments import sharding
        from tnjax import nn as tnn
        emb = tnn.Embed(10_131_227, 128, format="ttm", rank=16, vocab_modes=(200, 220, 250),
                        feature_modes=(4, 4, 8), rngs=nnx.Rngs(0))
        graph, state = nnx.split(emb)
        ids = jax.random.randint(jax.random.key(1), (256,), 0, 10_131_227)
        cot = jax.random.normal(jax.random.key(2), (256, 128))

        def loss(state, ids):
            return jnp.sum(nnx.merge(graph, state, copy=True)(ids) * cot)

        def lookup(state, ids):
            return nnx.merge(graph, state, copy=True)(ids)

        ref_out = jax.jit(lookup)(state, ids)
        ref_grad = jax.jit(jax.grad(loss))(state, ids)
        for data, model in ((1, 4), (2, 2)):
            mesh = sharding.make_mesh(data=data, model=model)
            sh = sharding.state_shardings(state, mesh, {"mesh": {"shard_params": "cores"}})
            specs = [s.spec for s in jax.tree.leaves(sh)]
            assert specs[1] == P(None, "model", None, None), specs  # V_2 = 220 on `model`
            placed = jax.device_put(state, sh)
            ids_sh = jax.device_put(ids, NamedSharding(mesh, P("data")))
            out = jax.jit(lookup)(placed, ids_sh)
            grad = jax.jit(jax.grad(loss), out_shardings=sh)(placed, ids_sh)
            core = jax.tree.leaves(placed)[1]
            assert core.addressable_shards[0].data.shape == (16, 220 // model, 4, 16)
            np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6)
            for g, r in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad), strict=True):
                np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
            print(f"data={data} model={model}: outputs and gradients equal")
        print("ok")
        """,
        devices=4,
    )
    assert out.strip().endswith("ok"), out


def _command(workdir, *overrides):
    return [
        sys.executable,
        "-m",
        "experiments.main",
        "--config=configs/dlrm.py:quick,format=ttm,rank=4",
        f"--workdir={workdir}",
        "--config.num_steps=20",
        "--config.checkpoint_every=10",
        "--config.log_every=10",
        "--config.tensorboard=False",
        "--config.batch_size=64",
        *overrides,
    ]


def _launch(workdir, devices, *overrides):
    return subprocess.run(
        _command(workdir, *overrides),
        cwd=ROOT,
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _launch_multihost(workdir, processes, devices_each, *overrides):
    """`processes` processes of `devices_each` CPU devices on this machine, one job
    (`--multihost`, a coordinator on a free local port); returns their CompletedProcesses."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    procs = [
        subprocess.Popen(
            _command(
                workdir,
                "--multihost",
                f"--coordinator_address=localhost:{port}",
                f"--num_processes={processes}",
                f"--process_id={i}",
                *overrides,
            ),
            cwd=ROOT,
            env=_env(devices_each),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


SHARDED_4 = ("--config.mesh.model=2", "--config.mesh.shard_params=embeddings")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted one-device run of 20 steps."""
    reference = tmp_path_factory.mktemp("sharding") / "reference"
    proc = _launch(reference, 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return reference


def test_one_device_checkpoint_resumes_on_four_devices(tmp_path, reference_run):
    """Killed at step 10 on one device, resumed to 20 on 4 devices (2 x 2, the tables'
    cores split along `model`): the same parameters and test metrics as the uninterrupted
    one-device run. (4 devices -> 1: the two-host test below.)"""
    run = tmp_path / "run"
    proc = _launch(run, 1, "--config.debug.kill_at_step=10")
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert "sharded along model" not in proc.stderr
    proc = _launch(run, 4, *SHARDED_4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sharded along model" in proc.stderr
    assert "resumed from the checkpoint at step 10" in proc.stderr
    _assert_same_run(reference_run, run)


def test_two_host_job_checkpoints_and_resumes_on_one_device(tmp_path, reference_run):
    """A 4-device job of two processes (jax.distributed, 2 CPU devices each, tables split
    over a 2 x 2 mesh, each process feeding its half of every batch) killed at step 10;
    resumed to 20 by one single-device process: the same as the uninterrupted one-device
    run."""
    run = tmp_path / "run"
    procs = _launch_multihost(run, 2, 2, "--config.debug.kill_at_step=10", *SHARDED_4)
    for i, proc in enumerate(procs):
        # Each process SIGKILLs itself after the step-10 checkpoint; a peer still alive when
        # the coordination service notices the loss may be aborted by it instead (SIGABRT).
        aborted_by_peer = proc.returncode == -6 and "coordination service" in proc.stderr
        assert proc.returncode == -9 or aborted_by_peer, f"process {i}: " + proc.stderr[-3000:]
        assert f"process {i} of 2: 2 local devices, 4 in all" in proc.stderr
        assert "sharded along model" in proc.stderr
    proc = _launch(run, 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from the checkpoint at step 10" in proc.stderr
    _assert_same_run(reference_run, run)


def _assert_same_run(reference, run):
    """Same test metrics (summary.json) and state arrays (within 1e-5 relative)."""
    with open(reference / "summary.json") as f:
        ref = json.load(f)
    with open(run / "summary.json") as f:
        got = json.load(f)
    assert abs(got["test_loss"] - ref["test_loss"]) < 1e-4 * max(1.0, abs(ref["test_loss"]))
    assert got["test_accuracy"] == pytest.approx(ref["test_accuracy"], abs=2e-3)
    from configs import dlrm
    from experiments import train

    config = dlrm.get_config("quick,format=ttm,rank=4")
    config.num_steps, config.batch_size = 20, 64

    def leaves(workdir):
        trainable, _ = train.load_trained(config, str(workdir))
        return [np.asarray(x) for x in jax.tree.leaves(trainable.state)]

    a, b = leaves(reference), leaves(run)
    assert len(a) == len(b) > 10, (len(a), len(b))
    worst = max(
        float(np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-30))
        for x, y in zip(a, b, strict=True)
    )
    print(f"{len(a)} arrays, worst relative difference {worst:.2e}")
    assert worst < 1e-5, worst


def test_bad_mesh_and_multihost_flags_are_clear_errors(tmp_path):
    proc = _launch(tmp_path / "a", 1, "--config.mesh.model=3")
    assert proc.returncode == 1
    assert "config.mesh.model=3: must be >= 1 and divide the 1 devices" in proc.stderr
    proc = _launch(tmp_path / "b", 1, "--process_id=1")
    assert proc.returncode != 0
    assert "--process_id need --multihost" in proc.stderr


def test_every_compression_phase_runs_data_parallel_on_four_devices(tmp_path):
    """Teacher, phase 1 (block by block), the end-to-end comparison and phase 2 all train
    through the shared loop, so on 4 devices (batches split along `data`) the run gives what
    one device gives, up to float summation order."""
    args = (
        "--config=configs/compress_lenet5.py:quick,compare=true,curve_every=4",
        "--config.data.name=synthetic",
        "--config.data.num_train=256",
        "--config.data.num_test=128",
        "--config.teacher.num_steps=8",
        "--config.teacher.batch_size=32",
        "--config.teacher.tensorboard=False",
        "--config.batch_size=32",
        "--config.phase1.steps_per_block=4",
        "--config.phase2.steps=4",
        "--config.tensorboard=False",
    )
    summaries = []
    for devices in (1, 4):
        workdir = tmp_path / f"d{devices}"
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.main", *args, f"--workdir={workdir}"],
            cwd=ROOT,
            env=_env(devices),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        summaries.append(json.loads((workdir / "summary.json").read_text()))
    one, four = summaries
    for stage in ("dense", "decomposed", "phase1", "phase2"):
        assert four["accuracy"][stage] == pytest.approx(one["accuracy"][stage], abs=0.02), stage
    for stage in ("decomposed", "phase1", "phase2"):
        assert four["loss"][stage] == pytest.approx(one["loss"][stage], rel=1e-3), stage
    assert len(one["curves"]["phase1"]) == len(four["curves"]["phase1"]) == 3  # 12 steps / 4
    assert [s for s, _ in four["curves"]["end_to_end"]] == [4, 8, 12]
