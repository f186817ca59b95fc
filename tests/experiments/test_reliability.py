"""The faults of docs/reliability.md, one test each: bad values rejected up front and named,
workdir discipline (lock, claims, finished runs untouched), one-line errors."""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import math
import os
import shutil
import subprocess

import pytest
from run_helpers import (
    ROOT,
    cli,
    cli_env,
    command,
    launch_small_lenet5,
    small_lenet5_args,
    snapshot,
    stderr_lines,
    synthetic_lenet5,
)

from experiments import schema, train
from experiments import workdir as workdir_lib


def _config(name: str, arg: str | None = "quick"):
    return importlib.import_module(f"configs.{name}").get_config(arg)


# --------------------------------------------------------------------------- the schema


def test_every_config_and_its_quick_variant_validates():
    for path in sorted(os.listdir(os.path.join(os.path.dirname(schema.__file__), "..", "configs"))):
        name = path[:-3]
        if not path.endswith(".py") or name in ("common", "__init__"):
            continue
        for arg in (None, "quick"):
            schema.validate(_config(name, arg))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optimizer.learning_rate", -0.1, r"--config.optimizer.learning_rate=-0.1: .*\(0, inf\)"),
        ("optimizer.learning_rate", math.nan, r"learning_rate=nan: must be a finite number"),
        ("optimizer.learning_rate", math.inf, r"learning_rate=inf"),
        ("num_steps", -5, r"--config.num_steps=-5: must be an integer >= 1"),
        ("num_steps", 0, r"--config.num_steps=0: must be an integer >= 1"),
        ("batch_size", 0, r"--config.batch_size=0"),
        ("optimizer.momentum", 1.5, r"optimizer.momentum=1.5"),
        ("optimizer.grad_clip", 0.0, r"optimizer.grad_clip=0.0: .*\(or None\)"),
        ("optimizer.name", "adma", r"optimizer.name='adma': must be one of 'sgd'"),
        ("data.num_train", 0, r"data.num_train=0"),
        ("data.augment", "flip", r"data.augment='flip'"),
        ("mesh.model", 0, r"mesh.model=0"),
        ("eval_every", -1, r"eval_every=-1"),
        ("model.name", "lenet6", r"model.name='lenet6': must be one of"),
        ("model.layers.default.format", "foo", r"model.layers.default.format='foo'"),
        ("model.layers.default.rank", 0, r"model.layers.default.rank=0"),
        ("model.layers.default.compression", 1.5, r"default.compression=1.5"),
        ("model.layers.default.rnak", 3, r"default.rnak=3: not an option .*did you mean 'rank'"),
    ],
)
def test_a_bad_value_is_rejected_naming_its_key(key, value, message):
    c = _config("lenet5")
    section, _, leaf = key.rpartition(".")
    target = c
    for part in section.split(".") if section else ():
        target = target[part]
    target[leaf] = value
    with pytest.raises(schema.ConfigError, match=message):
        schema.validate(c)


def test_the_config_argument_that_set_a_bad_value_is_named():
    c = _config("compress_lenet5", "quick,rate=-1")
    with pytest.raises(schema.ConfigError, match=r"--config.rate=-1.0 \(set by .*:rate=\)"):
        schema.validate(c, typed_args=schema.typed_config_args("x.py:quick,rate=-1"))
    c = _config("lenet5", "quick,format=foo")
    with pytest.raises(schema.ConfigError, match=r":format="):
        schema.validate(c, typed_args=("quick", "format"))


def test_a_compress_teacher_is_validated_with_its_prefix():
    c = _config("compress_lenet5")
    c.teacher.optimizer.learning_rate = -1.0
    with pytest.raises(schema.ConfigError, match=r"--config.teacher.optimizer.learning_rate=-1.0"):
        schema.validate(c)


def test_bayes_and_compress_sections_are_checked():
    c = _config("bayes_mlp")
    c.bayes.inference = "mcmc"
    with pytest.raises(schema.ConfigError, match=r"bayes.inference='mcmc'"):
        schema.validate(c)
    c = _config("compress_lenet5")
    c.phase2.kd_temperature = 0.0
    with pytest.raises(schema.ConfigError, match=r"phase2.kd_temperature=0.0"):
        schema.validate(c)
    c = _config("compress_lenet5")
    c.rate_overrides = {"conv2": 2.0}
    with pytest.raises(schema.ConfigError, match=r"rate_overrides.conv2=2.0"):
        schema.validate(c)


def test_compress_rejects_a_bad_rate_before_training_any_teacher(tmp_path):
    c = _config("compress_lenet5", "quick,rate=-1")
    from experiments import compress

    with pytest.raises(schema.ConfigError, match="rate"):
        compress.train_and_evaluate(c, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing written, no teacher trained


def test_unset_fields_are_none_and_real_zeros_stay():
    c = _config("lenet5", None)
    assert c.num_steps is None and c.optimizer.grad_clip is None
    assert _config("lenet5").eval_every is None  # quick: only at the end
    assert c.model.layers.default.rank is None and c.debug.kill_at_step is None
    c.model.layers.default.rank = 4
    c.model.layers.overrides = {"fc1": {"format": "tt", "rank": 3, "num_modes": None}}
    specs = train.clean_layer_specs(c.model.layers.to_dict())
    assert specs["default"]["rank"] == 4 and "compression" not in specs["default"]
    assert specs["overrides"]["fc1"] == {"format": "tt", "rank": 3}


# --------------------------------------------------------------------------- the workdir


def test_a_busy_workdir_is_refused_at_once(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with open(workdir / workdir_lib.LOCK_FILE, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds it
        with pytest.raises(workdir_lib.WorkdirBusyError, match="in use by another run"):
            train.train_and_evaluate(synthetic_lenet5(5), str(workdir))
        proc = launch_small_lenet5(workdir)
    assert proc.returncode == 1
    assert stderr_lines(proc) == [
        f"error: --workdir={workdir} is in use by another run (it holds "
        f"{workdir / workdir_lib.LOCK_FILE}); wait for it to finish or use another --workdir"
    ]
    assert not (workdir / "config.json").exists()


def test_two_runs_started_together_on_one_workdir(tmp_path):
    """One trains, the other exits at once: every metrics record is written once."""
    workdir = tmp_path / "run"
    args = ("--config.num_steps=30",)
    procs = [
        subprocess.Popen(
            command(*small_lenet5_args(workdir, *args)),
            cwd=ROOT,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    refused = next(err for code, err in results if code == 1)
    assert "in use by another run" in refused
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    steps = [r["step"] for r in records if r["split"] == "train"]
    assert steps == sorted(set(steps))  # no record twice


def test_a_rejected_run_does_not_claim_the_workdir(tmp_path):
    workdir = tmp_path / "run"
    bad = synthetic_lenet5(5)
    bad.model.layers.default.format = "foo"
    with pytest.raises(schema.ConfigError):
        train.train_and_evaluate(bad, str(workdir))
    assert not workdir.exists()
    # a failure after the config was written (no such dataset): the claim is withdrawn
    missing = synthetic_lenet5(5)
    missing.data.name = "mnist"
    missing.data.source = "local"
    missing.data.data_dir = str(tmp_path / "nothing")
    with pytest.raises(train.input_pipeline.DatasetError):
        train.train_and_evaluate(missing, str(workdir))
    assert not (workdir / "config.json").exists()
    summary = train.train_and_evaluate(synthetic_lenet5(5), str(workdir))  # the corrected run
    assert summary["steps"] == 5


def test_rerunning_a_finished_run_changes_no_file(tmp_path):
    workdir = tmp_path / "run"
    first = launch_small_lenet5(workdir, "--config.num_steps=10", "--config.tensorboard=True")
    assert first.returncode == 0, first.stderr[-2000:]
    before = snapshot(workdir)
    assert "summary.json" in before and any("tfevents" in p for p in before)
    again = launch_small_lenet5(workdir, "--config.num_steps=10", "--config.tensorboard=True")
    assert again.returncode == 0, again.stderr[-2000:]
    assert snapshot(workdir) == before
    assert again.stdout.strip().startswith("test accuracy")


def test_a_reused_teacher_is_left_untouched_and_one_with_other_data_is_refused(tmp_path):
    teacher = tmp_path / "teacher"
    overrides = (
        "--config.data.name=synthetic",
        "--config.data.num_train=256",
        "--config.data.num_test=128",
        "--config.teacher.num_steps=8",
        "--config.teacher.batch_size=32",
        "--config.teacher.tensorboard=False",
        "--config.phase1.steps_per_block=2",
        "--config.phase2.steps=2",
        "--config.tensorboard=False",
        f"--config.teacher_workdir={teacher}",
    )
    first = cli("--config=configs/compress_lenet5.py:quick", f"--workdir={tmp_path}/a", *overrides)
    assert first.returncode == 0, first.stderr[-3000:]
    trained = snapshot(teacher)
    second = cli(
        "--config=configs/compress_lenet5.py:quick,rate=0.2",
        f"--workdir={tmp_path}/b",
        *overrides,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert snapshot(teacher) == trained
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["dataset"] == "synthetic"  # the teacher inherited the student's data
    teacher_config = json.loads((teacher / "config.json").read_text())
    assert teacher_config["data"]["name"] == "synthetic"
    assert teacher_config["data"]["num_train"] == 256
    # the same teacher workdir asked for with other data: refused, naming the teacher's keys
    other = cli(
        "--config=configs/compress_lenet5.py:quick",
        f"--workdir={tmp_path}/c",
        *overrides,
        "--config.data.num_train=200",
    )
    assert other.returncode == 1
    assert "differs in: teacher.data.num_train" in stderr_lines(other)[0]
    assert snapshot(teacher) == trained


# --------------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--config=configs/nope.py",), "error: --config: [Errno 2] No such file or directory"),
        (
            ("--config=configs/lenet5.py:quick", "--config.optimizr.learning_rate=0.1"),
            'Did you mean "optimizer"',
        ),
        (("--config=configs/lenet5.py:quick,rnak=4",), "unknown config arg 'rnak'"),
        (
            ("--config=configs/lenet5.py:quick", "--config.optimizer.learning_rate=-0.1"),
            "error: --config.optimizer.learning_rate=-0.1: must be a finite number in (0, inf)",
        ),
        (
            ("--config=configs/compress_lenet5.py:quick,rate=-1",),
            "error: --config.rate=-1.0 (set by the config argument :rate=)",
        ),
    ],
)
def test_user_mistakes_get_one_or_two_lines(tmp_path, args, expected):
    proc = cli(*args, f"--workdir={tmp_path}/run")
    assert proc.returncode == 1
    lines = stderr_lines(proc)
    assert 1 <= len(lines) <= 2, proc.stderr
    assert expected in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_workdir_that_is_a_file_or_under_a_file_gets_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for workdir, expected in (
        (afile, f"error: --workdir={afile} is a file, not a directory"),
        (afile / "run", f"error: cannot create --workdir={afile / 'run'}: Not a directory"),
    ):
        proc = launch_small_lenet5(workdir)
        assert proc.returncode == 1
        assert stderr_lines(proc) == [expected], proc.stderr


# --------------------------------------------------------------------------- checkpoints, disks


def test_a_damaged_latest_checkpoint_is_skipped_and_the_run_ends_the_same(tmp_path):
    config = synthetic_lenet5(30)  # checkpoints at steps 15 and 30
    whole = train.train_and_evaluate(config, str(tmp_path / "whole"))
    run = tmp_path / "damaged"
    shutil.copytree(tmp_path / "whole", run)
    os.remove(run / "summary.json")  # as if killed after writing step 30 ...
    damaged = 0
    for root, _, files in os.walk(run / "checkpoints" / "30"):
        for name in files:
            if not name.endswith(".json") and not name.startswith("_"):
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(max(0, os.path.getsize(f.name) // 3))  # ... half-written
                damaged += 1
    assert damaged
    resumed = train.train_and_evaluate(config, str(run))
    assert (resumed["test_accuracy"], resumed["test_loss"]) == (
        whole["test_accuracy"],
        whole["test_loss"],
    )


@contextlib.contextmanager
def _tmpfs(path, size: str):
    """A tmpfs of `size` mounted at `path` (skips the test where mounting is not allowed)."""
    path.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_full_disk_gets_one_line_and_keeps_no_claim(tmp_path):
    with _tmpfs(tmp_path / "disk", "256k") as disk:  # the config fits, a checkpoint does not
        proc = launch_small_lenet5(disk / "run")
        lines = stderr_lines(proc)
        assert proc.returncode == 1
        assert len(lines) == 1, proc.stderr[-3000:]
        assert lines[0].startswith("error: cannot write checkpoint step 15 to ")
        assert "[Errno 28] No space left on device" in lines[0]
        assert not (disk / "run" / "config.json").exists()


def test_a_read_only_workdir_gets_one_line(tmp_path):
    with _tmpfs(tmp_path / "disk", "1m") as disk:
        (disk / "run").mkdir()
        remount = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True)
        assert remount.returncode == 0, remount.stderr
        proc = launch_small_lenet5(disk / "run")
        assert proc.returncode == 1
        assert stderr_lines(proc) == [f"error: --workdir={disk / 'run'} is not writable"]


def test_every_image_config_takes_dataset():
    for name, arg in (
        ("lenet5", "dataset=mnist"),
        ("mlp", "dataset=mnist"),
        ("bayes_mlp", "dataset=mnist"),
        ("resnet_cifar", "dataset=synthetic"),
        ("compress_lenet5", "dataset=mnist"),
        ("compress_resnet_cifar", "dataset=synthetic"),
    ):
        c = _config(name, arg)
        data = schema.teacher_config(c).data if c.trainer == "compress" else c.data
        assert data.name == arg.split("=")[1], name
        schema.validate(c)
