"""Metrics of a run: `metrics.jsonl`, TensorBoard event files, the progress line, the plot.

Every record is a flat dict with a `step` and a `split` ("train" or "test"). On resume the
JSONL file is cut back to the restored step, so an interrupted and an uninterrupted run
leave the same file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from experiments.sharding import is_primary_process

__all__ = [
    "MetricWriter",
    "read_metrics",
    "truncate_metrics",
    "progress_line",
    "format_duration",
    "plot_curves",
]

METRICS_FILE = "metrics.jsonl"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no NaN/Inf; keep them readable
    return value


def read_metrics(workdir: str, filename: str = METRICS_FILE) -> list[dict[str, Any]]:
    """The records of `workdir/metrics.jsonl` (or `filename`; [] if there is none)."""
    path = os.path.join(workdir, filename)
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything after it is lost anyway
    return records


def truncate_metrics(workdir: str, step: int, filename: str = METRICS_FILE) -> None:
    """Keeps only the records with `step <= step` (and drops a torn last line)."""
    path = os.path.join(workdir, filename)
    if not is_primary_process() or not os.path.exists(path):
        return
    kept = [r for r in read_metrics(workdir, filename) if r.get("step", 0) <= step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in kept:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


class MetricWriter:
    """Appends records to `metrics.jsonl` and writes TensorBoard scalars (tensorboardX).

    Only the primary process (0) writes; on the others every call is a no-op.
    """

    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self._file = self._tb = None
        if not is_primary_process():
            return
        os.makedirs(workdir, exist_ok=True)
        self._file = open(os.path.join(workdir, METRICS_FILE), "a")  # noqa: SIM115
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, scalars: Mapping[str, Any]) -> None:
        if self._file is None:
            return
        record = {"step": int(step), "split": split}
        record.update({k: _jsonable(v) for k, v in scalars.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None:
            for key, value in scalars.items():
                value = _jsonable(value)
                if isinstance(value, int | float):
                    self._tb.add_scalar(f"{split}/{key}", value, int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def format_duration(seconds: float) -> str:
    """E.g. 75 -> "1m15s", 3725 -> "1h02m"."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def progress_line(
    step: int, num_steps: int, scalars: Mapping[str, float], examples_per_sec: float
) -> str:
    """One line: step, loss, accuracy, examples/s and ETA."""
    eta = (num_steps - step) * scalars.get("_sec_per_step", float("nan"))
    parts = [f"step {step}/{num_steps}"]
    parts += [f"{k} {v:.4f}" for k, v in scalars.items() if not k.startswith("_")]
    parts += [f"{examples_per_sec:,.0f} ex/s", f"ETA {format_duration(eta)}"]
    return " | ".join(parts)


def plot_curves(records: Iterable[Mapping[str, Any]], path: str, title: str = "") -> str:
    """Saves a PNG of loss and accuracy against step, train and test (on the primary
    process only). Returns `path`."""
    if not is_primary_process():
        return path
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for split, style in (("train", "-"), ("test", "o-")):
            pts = [
                (r["step"], r[key])
                for r in records
                if r.get("split") == split and isinstance(r.get(key), int | float)
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, style, label=split, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
