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

import errno
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


def run(config, workdir: str, typed_args: tuple[str, ...] = ()) -> dict:
    """Validates `config` (nothing is read or written before), then runs the trainer
    `config.trainer` on it; returns its summary.

    Raises:
      schema.ConfigError: a bad value, naming its key (and the config argument that set it,
        among `typed_args`).
    """
    from experiments import schema

    schema.validate(config, typed_args=typed_args)
    module = importlib.import_module(TRAINERS[config.trainer])
    return module.train_and_evaluate(config, workdir)


# OS errors that are the user's or the machine's, not the code's: one line, no traceback.
_USER_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that describe a user mistake (reported in one line)."""
    from experiments.checkpoint import CheckpointError
    from experiments.input_pipeline import DatasetError
    from experiments.loop import NonFiniteLossError
    from experiments.schema import ConfigError
    from experiments.workdir import ConfigMismatchError, WorkdirError

    return (
        ConfigError,
        ConfigMismatchError,
        WorkdirError,
        DatasetError,
        NonFiniteLossError,
        CheckpointError,
    )


def _load_config():
    """`FLAGS.config`; a missing or broken config file or a mistyped override -> one line."""
    try:
        config = FLAGS.config
        config.get("trainer")  # a config that failed to load raises here
        return config
    except (OSError, KeyError, AttributeError, ValueError, TypeError, SyntaxError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        lines = [line.strip() for line in str(text).splitlines() if line.strip()]
        # a config file that cannot be read: its OS error; otherwise the whole message
        detail = next((line for line in reversed(lines) if "Errno" in line), " ".join(lines))
        raise SystemExit(f"error: --config: {detail}") from None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad `--config` (a missing file, an unknown config
    argument, a mistyped `--config.` override) reported in one line instead of a traceback."""
    try:
        return FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError) as e:
        chain = [e]
        while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
            chain.append(chain[-1].__cause__ or chain[-1].__context__)
        messages = [_message(c) for c in chain]
        # the outermost names the flag; one that embeds a traceback gives way to the root cause
        text = next((m for m in messages if "Did you mean" in m), None)
        if text is None:
            text = messages[0] if "Traceback" not in messages[0] else messages[-1]
        raise SystemExit(f"error: {text}\nPass --helpshort for the flags.") from None


def _message(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split("\n")[:2]) if str(e) else type(e).__name__


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
    config = _load_config()
    from experiments.schema import typed_config_args

    typed_args = typed_config_args(FLAGS["config"].config_filename)
    if FLAGS.multihost:
        initialize_multihost(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif any(
        v is not None for v in (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    ):
        raise app.UsageError(
            "--coordinator_address / --num_processes / --process_id need --multihost"
        )
    logging.info("config: %s", config.to_json_best_effort(sort_keys=True))
    try:
        summary = run(config, FLAGS.workdir, typed_args)
    except _user_errors() as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        if e.errno not in _USER_ERRNOS:
            raise  # an internal error keeps its traceback
        print(f"error: {e.strerror}: {e.filename or FLAGS.workdir}", file=sys.stderr)
        sys.exit(1)
    except ValueError as e:  # bad layer specs and the like, found while building the model
        logging.debug("traceback", exc_info=True)
        print(f"error: {_one_line(e)} (--verbosity=1 shows the traceback)", file=sys.stderr)
        sys.exit(1)
    print(
        f"test accuracy {summary['test_accuracy']:.4f} | params {summary['params']:,} "
        f"({summary['compression']:.3g}x dense) | FLOPs {summary['flops_ratio']:.3g}x dense | "
        f"{summary['wall_time_sec']:.0f}s | {FLAGS.workdir}/summary.json"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
