"""Small runs for the experiment-system tests: a synthetic LeNet-5 config, the CLI, and a
byte-level snapshot of a workdir."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from configs import lenet5

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The CLI flags that make configs/lenet5.py:quick,dataset=synthetic a run of a few seconds.
SMALL_LENET5_FLAGS = (
    "--config.data.num_train=512",
    "--config.data.num_test=256",
    "--config.batch_size=32",
    "--config.num_steps=40",
    "--config.log_every=5",
    "--config.checkpoint_every=15",
    "--config.eval_every=20",
    "--config.tensorboard=False",
)


def synthetic_lenet5(num_steps: int = 40):
    """configs/lenet5.py:quick on synthetic images, 512 examples, `num_steps` of batch 32."""
    c = lenet5.get_config("quick,dataset=synthetic")
    c.data.num_train = 512
    c.data.num_test = 256
    c.batch_size = 32
    c.num_steps = num_steps
    c.log_every = 5
    c.checkpoint_every = 15
    c.eval_every = 20
    c.tensorboard = False
    return c


def command(*args: str) -> list[str]:
    """`python -m experiments.main ARGS`."""
    return [sys.executable, "-m", "experiments.main", *args]


def cli_env() -> dict[str, str]:
    return dict(os.environ, JAX_PLATFORMS="cpu")


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m experiments.main ARGS` from the repository root, on the CPU."""
    return subprocess.run(
        command(*args), cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


def small_lenet5_args(workdir, *overrides: str) -> tuple[str, ...]:
    """The CLI arguments of the small synthetic LeNet-5 (see SMALL_LENET5_FLAGS)."""
    return (
        "--config=configs/lenet5.py:quick,dataset=synthetic",
        f"--workdir={workdir}",
        *SMALL_LENET5_FLAGS,
        *overrides,
    )


def launch_small_lenet5(workdir, *overrides: str) -> subprocess.CompletedProcess:
    """The CLI on the small synthetic LeNet-5 in `workdir`."""
    return cli(*small_lenet5_args(workdir, *overrides))


def snapshot(directory) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256 of the bytes, mtime in ns)} of every file under `directory`."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, directory)] = (digest, os.stat(path).st_mtime_ns)
    return out


def stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The lines of stderr that are not absl log records (I/W/E + date)."""
    return [
        line
        for line in proc.stderr.splitlines()
        if line.strip() and not (line[:1] in "IWEF" and line[1:5].isdigit())
    ]
