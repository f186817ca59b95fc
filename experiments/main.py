"""Launches an experiment: `python -m experiments.main --config=CONFIG[:ARGS] --workdir=DIR`.

The config's `trainer` field picks the trainer (see TRAINERS); `--config.a.b=v` overrides a
field (the config is locked, so a mistyped key is an error). Rerunning with the same workdir
resumes from its newest checkpoint.

Several devices: `config.mesh` (see experiments/sharding.py) lays out the run over every
device. Several hosts (a TPU pod slice, GPU nodes): start the same command on every host with
`--multihost`, which calls `jax.distributed.initialize()` first (the coordinator is found
from the TPU / SLURM / Open MPI environment, or given with --coordinator_address,
--num_processes and --process_id); see docs/scaling.md.
"""

from __future__ import annotations

import importlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the summary.")
flags.mark_flag_as_required("workdir")
config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/NAME.py[:ARGS]).", lock_config=True
)
flags.mark_flag_as_required("config")
flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() first (one process per host)."
)
flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (multihost; default: auto-detect)."
)
flags.DEFINE_integer("num_processes", None, "Number of processes (multihost; default: auto).")
flags.DEFINE_integer("process_id", None, "This process's index (multihost; default: auto).")

# trainer name -> module with train_and_evaluate(config, workdir)
TRAINERS = {
    "train": "experiments.train",
    "compress": "experiments.compress",
    "bayes": "experiments.bayes",
}


def run(config, workdir: str) -> dict:
    """Runs the trainer `config.trainer` on `config`; returns its summary."""
    if config.trainer not in TRAINERS:
        raise ValueError(f"unknown trainer {config.trainer!r}; choose one of {sorted(TRAINERS)}")
    module = importlib.import_module(TRAINERS[config.trainer])
    return module.train_and_evaluate(config, workdir)


def initialize_multihost(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """`jax.distributed.initialize()`, then logs this process's place in the job."""
    import jax

    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    logging.info(
        "process %d of %d: %d local devices, %d in all",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def _quiet_libraries(record) -> bool:
    """Drops the INFO chatter of orbax and jax (dozens of lines per checkpoint); 30 = WARNING."""
    noisy = ("/orbax/", "/jax/_src/", "/tensorboardX/")
    return record.levelno >= 30 or not any(n in record.pathname for n in noisy)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.get_absl_handler().python_handler.addFilter(_quiet_libraries)
    from experiments.checkpoint import CheckpointMismatchError
    from experiments.input_pipeline import DatasetError
    from experiments.train import NonFiniteLossError

    if FLAGS.multihost:
        initialize_multihost(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif any(
        v is not None for v in (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    ):
        raise app.UsageError(
            "--coordinator_address / --num_processes / --process_id need --multihost"
        )
    logging.info("config:\n%s", FLAGS.config)
    try:
        summary = run(FLAGS.config, FLAGS.workdir)
    except (DatasetError, NonFiniteLossError, CheckpointMismatchError, ValueError) as e:
        logging.error("%s: %s", type(e).__name__, e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(
        f"test accuracy {summary['test_accuracy']:.4f} | params {summary['params']:,} "
        f"({summary['compression']:.3g}x dense) | FLOPs {summary['flops_ratio']:.3g}x dense | "
        f"{summary['wall_time_sec']:.0f}s | {FLAGS.workdir}/summary.json"
    )


if __name__ == "__main__":
    app.run(main)
