"""Launches an experiment: `python -m experiments.main --config=CONFIG[:ARGS] --workdir=DIR`.

The config's `trainer` field picks the trainer (see TRAINERS); `--config.a.b=v` overrides a
field (the config is locked, so a mistyped key is an error). Rerunning with the same workdir
resumes from its newest checkpoint.
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
