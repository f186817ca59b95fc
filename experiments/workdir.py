"""Workdir discipline: one run at a time, a config claim that binds only with real work,
finished runs left untouched.

`claim(workdir, config)` is the context every trainer runs in:

1. The workdir is created (or must be a writable directory) and locked: `workdir/.lock`
   held with `fcntl.flock` for the whole run (released by the OS however the process ends,
   `kill -9` included); a second run on a busy workdir gets `WorkdirBusyError` at once.
2. `config.json` is written, or compared with the one there (`ConfigMismatchError` naming
   the keys that differ; keys in `RESUME_MAY_CHANGE` may change at a resume).
3. If the run fails before any checkpoint exists under the workdir, the `config.json` it
   wrote is removed again, so the corrected command is not refused as "a different config".

`finished_summary(workdir)` is the summary of a run that completed (its `summary.json` is
written last, after every other file), so a trainer returns it without rewriting anything:
re-running a finished run leaves every file byte for byte as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from experiments.checkpoint import write_json
from experiments.sharding import is_primary_process

__all__ = [
    "WorkdirError",
    "WorkdirBusyError",
    "ConfigMismatchError",
    "RESUME_MAY_CHANGE",
    "claim",
    "check_resumable",
    "finished_summary",
    "has_checkpoint",
]

# Config keys that may change between an interrupted run and its resumption (a checkpoint
# restores onto any mesh).
RESUME_MAY_CHANGE = (
    "log_every",
    "eval_every",
    "checkpoint_every",
    "max_checkpoints",
    "debug",
    "mesh",
)

# Workdirs written before 2026-12-01 store the old "not set" markers ("" / 0 / -1) of these
# fields; they meant what None means now, so such runs still resume.
_LEGACY_UNSET = {
    "data_dir": "",
    "tfds_data_dir": "",
    "num_train": 0,
    "num_test": 0,
    "num_steps": 0,
    "eval_every": 0,
    "grad_clip": 0.0,
    "kill_at_step": -1,
    "rank": 0,
    "compression": 0.0,
    "conv_format": "",
    "num_modes": 0,
    "teacher_workdir": "",
    "linear_format": "",
    "curve_every": 0,
    "shard_params": "",
}

LOCK_FILE = ".lock"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"


class WorkdirError(OSError):
    """The workdir cannot be used (a file, not writable, busy, another run's)."""


class WorkdirBusyError(WorkdirError):
    """Another process holds the workdir's lock."""


class ConfigMismatchError(ValueError):
    """The workdir holds a run with a different config (`keys`: the dotted keys that differ)."""

    def __init__(self, workdir: str, keys: list[str]):
        self.workdir, self.keys = workdir, list(keys)
        super().__init__(
            f"{workdir} holds a run with a different config (differs in: {', '.join(keys)}). "
            "Resume with the same config, or use a new --workdir."
        )


def _legacy_unset_as_none(config: Any) -> Any:
    if not isinstance(config, Mapping):
        return config
    return {
        k: None
        if k in _LEGACY_UNSET
        and not isinstance(v, Mapping)
        and v == _LEGACY_UNSET[k]
        and type(v) is type(_LEGACY_UNSET[k])
        else _legacy_unset_as_none(v)
        for k, v in config.items()
    }


def _config_for_comparison(config: Mapping[str, Any]) -> dict[str, Any]:
    config = _legacy_unset_as_none(config)
    return {k: v for k, v in config.items() if k not in RESUME_MAY_CHANGE}


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _as_json(config: Any) -> dict[str, Any]:
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=str))


def check_resumable(workdir: str, config: Any) -> bool:
    """Writes `workdir/config.json`, or checks that a resumed run uses the same config.

    Returns:
      True when this call wrote a new config.json (no run was there before).

    Raises:
      ConfigMismatchError: naming the keys that differ.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    current = _as_json(config)
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        a, b = _config_for_comparison(saved), _config_for_comparison(current)
        if a != b:
            raise ConfigMismatchError(workdir, _diff_keys(a, b))
        return False
    write_json(path, current)
    return True


def has_checkpoint(workdir: str) -> bool:
    """Whether any complete orbax step directory exists anywhere under `workdir`."""
    for root, dirs, _ in os.walk(workdir):
        for d in dirs:
            if d.isdigit() and os.listdir(os.path.join(root, d)):
                return True
    return False


def finished_summary(workdir: str) -> dict[str, Any] | None:
    """The `summary.json` of a finished run in `workdir`, or None."""
    path = os.path.join(workdir, SUMMARY_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _make_dir(workdir: str) -> None:
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir={workdir} is a file, not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create --workdir={workdir}: {e.strerror}") from e
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir={workdir} is not writable")


@contextlib.contextmanager
def _lock(workdir: str) -> Iterator[None]:
    if not is_primary_process():  # one lock per job: the other hosts write no files
        yield
        return
    path = os.path.join(workdir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise WorkdirError(f"cannot write in --workdir={workdir}: {e.strerror}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WorkdirBusyError(
                    f"--workdir={workdir} is in use by another run (it holds {path}); wait for "
                    "it to finish or use another --workdir"
                ) from None
            raise
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def claim(workdir: str, config: Any) -> Iterator[None]:
    """Creates and locks `workdir` and claims it for `config` (see the module docstring).

    Raises:
      WorkdirError: not a directory, not writable; WorkdirBusyError: locked by another run.
      ConfigMismatchError: the workdir holds another config's run.
    """
    _make_dir(workdir)
    with _lock(workdir):
        wrote = check_resumable(workdir, config)
        try:
            yield
        except BaseException:
            if wrote and is_primary_process() and not has_checkpoint(workdir):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(workdir, CONFIG_FILE))
            raise
