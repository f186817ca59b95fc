"""Injects the experiment system's known faults and reports what the CLI does with each.

    python scripts/fault_drill.py                      # this checkout
    python scripts/fault_drill.py --repo /path/to/old  # another checkout (e.g. a git worktree)
    python scripts/fault_drill.py --only lock,rerun --json out.json

Every fault runs `python -m experiments.main` (from `--repo`, with this interpreter) on small
synthetic runs in a fresh temporary directory and prints one row: the fault, the exit code,
how many lines stderr holds besides log records, and what happened. docs/reliability.md is
this table run on the code before and after the fixes. Needs root for the tmpfs faults
(full disk, read-only workdir); they say so otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

SMALL = (
    "--config.data.num_train=512",
    "--config.data.num_test=256",
    "--config.batch_size=32",
    "--config.log_every=5",
    "--config.tensorboard=False",
)
LENET = "--config=configs/lenet5.py:quick,dataset=synthetic"
DEBIAN = "/usr/share/datasets/fashion-mnist"
FAULTS: dict[str, Callable] = {}


def fault(name: str):
    def register(fn):
        FAULTS[name] = fn
        return fn

    return register


class Drill:
    """Runs the CLI of one checkout in a scratch directory."""

    def __init__(self, repo: str, scratch: str):
        self.repo, self.scratch = repo, scratch
        self.env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=repo)

    def path(self, *parts: str) -> str:
        return os.path.join(self.scratch, *parts)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "experiments.main", *args],
            cwd=self.repo,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str) -> tuple[int, list[str], str, float]:
        """(exit code, stderr lines that are not log records, stdout, seconds)."""
        t0 = time.perf_counter()
        proc = self.popen(*args)
        out, err = proc.communicate(timeout=1800)
        return proc.returncode, _plain_lines(err), out, time.perf_counter() - t0

    def python(self, code: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=self.repo,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        return (proc.stdout or proc.stderr).strip().splitlines()[-1]


def _is_record(line: str) -> bool:
    return line[:1] in "IWEF" and line[1:5].isdigit()


def _plain_lines(stderr: str) -> list[str]:
    """stderr without log records (and without the multi-line config an older launcher
    logged after a "config:" record)."""
    out, in_config_dump = [], False
    for line in stderr.splitlines():
        if _is_record(line):
            in_config_dump = line.rstrip().endswith("config:")
            continue
        if in_config_dump and not _is_config_line(line):
            in_config_dump = False  # e.g. a traceback right after the dump
        if line.strip() and not in_config_dump:
            out.append(line)
    return out


def _is_config_line(line: str) -> bool:
    """A line of ml_collections' YAML-like config dump ("key: value", indented, "- item")."""
    return bool(re.match(r"^(\s+\S.*|[A-Za-z_][\w.]*:( .*)?|- .*)$", line)) and not (
        line.startswith("Traceback")
    )


def _first(lines: list[str], width: int = 110) -> str:
    if not lines:
        return ""
    line = next((x for x in lines if x.startswith("error")), lines[-1])
    return line if len(line) <= width else line[: width - 3] + "..."


def _outcome(rc: int, lines: list[str], extra: str = "") -> str:
    text = f"exit {rc}, {len(lines)} stderr line(s)"
    if lines:
        text += f": {_first(lines)}"
    return text + (f"; {extra}" if extra else "")


def _snapshot(directory: str) -> dict[str, tuple[str, int]]:
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            p = os.path.join(root, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, directory)] = (
                    hashlib.sha256(f.read()).hexdigest(),
                    os.stat(p).st_mtime_ns,
                )
    return out


def _changed(before: dict, after: dict) -> str:
    added = sorted(set(after) - set(before))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    if not added and not changed:
        return "every file unchanged"
    return f"{len(changed)} file(s) rewritten, {len(added)} added (e.g. {(changed + added)[0]})"


@contextlib.contextmanager
def _tmpfs(path: str, size: str):
    os.makedirs(path)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True
    )
    if proc.returncode:
        raise RuntimeError("cannot mount a tmpfs (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)


# --------------------------------------------------------------------------- the faults


@fault("zipf0")
def _zipf0(d: Drill) -> str:
    ratio = d.python(
        "import importlib, numpy as np; from experiments import input_pipeline, train; "
        "c = importlib.import_module('configs.bayes_dlrm').get_config('quick'); "
        "c.data.zipf_exponent = 0.0; "
        "ds = input_pipeline.load_dataset(train.data_config(c)); "
        "n = np.bincount(np.asarray(ds.train['sparse'][:, 0]), minlength=200); "
        "print(f'{n.max() / n.mean():.1f}')"
    )
    return f"most frequent id / mean count: {ratio} (uniform ids: about 1.5; Zipf(1): about 33)"


def _data_dir_case(d: Drill, data_dir: str) -> str:
    rc, lines, out, _ = d.run(
        "--config=configs/lenet5.py:quick",
        f"--workdir={d.path('run', os.path.basename(data_dir))}",
        f"--config.data.data_dir={data_dir}",
        "--config.num_steps=2",
        "--config.data.num_train=256",
        "--config.data.num_test=256",
    )
    trained = "trained on another copy" if rc == 0 else ""
    return _outcome(rc, lines, trained)


@fault("data_dir_missing")
def _data_dir_missing(d: Drill) -> str:
    return _data_dir_case(d, d.path("no_such_dir"))


@fault("data_dir_flat_truncated")
def _data_dir_truncated(d: Drill) -> str:
    flat = d.path("flat")
    os.makedirs(flat)
    for name in sorted(os.listdir(DEBIAN)):
        with (
            open(os.path.join(DEBIAN, name), "rb") as src,
            open(os.path.join(flat, name), "wb") as f,
        ):
            data = src.read()
            f.write(data[: len(data) // 2] if name.startswith("train-images") else data)
    return _data_dir_case(d, flat)


@fault("lock")
def _lock(d: Drill) -> str:
    workdir = d.path("shared")
    args = (LENET, f"--workdir={workdir}", *SMALL, "--config.num_steps=40")
    procs = [d.popen(*args), d.popen(*args)]
    results = [(p.communicate(timeout=1800), p.returncode) for p in procs]
    codes = sorted(rc for _, rc in results)
    failed = [_first(_plain_lines(err), 80) for (_, err), rc in results if rc != 0]
    records = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    steps = [r["step"] for r in records if r["split"] == "train"]
    twice = len(steps) - len(set(steps))
    why = f" ({failed[0]})" if failed else ""
    return f"exit codes {codes}{why}; {twice} train record(s) written twice"


@fault("damaged_latest_checkpoint")
def _damaged(d: Drill) -> str:
    workdir = d.path("damaged")
    args = (LENET, f"--workdir={workdir}", *SMALL, "--config.num_steps=40")
    d.run(*args, "--config.checkpoint_every=15", "--config.debug.kill_at_step=35")
    step30 = os.path.join(workdir, "checkpoints", "30")
    for root, _, files in os.walk(step30):
        for name in files:
            if not name.endswith(".json") and not name.startswith("_"):
                p = os.path.join(root, name)
                os.truncate(p, os.path.getsize(p) // 3)
    rc, lines, _, _ = d.run(*args, "--config.checkpoint_every=15")
    return _outcome(rc, lines, "finished" if rc == 0 else "")


def _bad_value(d: Drill, name: str, *flags: str) -> str:
    rc, lines, out, secs = d.run(LENET, f"--workdir={d.path(name)}", *SMALL, *flags)
    extra = out.strip().split("|")[0].strip() if rc == 0 else ""
    return _outcome(rc, lines, extra)


@fault("negative_learning_rate")
def _neg_lr(d: Drill) -> str:
    return _bad_value(d, "neglr", "--config.num_steps=40", "--config.optimizer.learning_rate=-0.01")


@fault("negative_num_steps")
def _neg_steps(d: Drill) -> str:
    rc, lines, out, _ = d.run(
        LENET,
        f"--workdir={d.path('negsteps')}",
        *SMALL,
        "--config.num_steps=-5",
        "--config.num_epochs=0.25",
    )
    steps = ""
    summary = d.path("negsteps", "summary.json")
    if os.path.exists(summary):
        steps = f"trained {json.load(open(summary))['steps']} steps"
    return _outcome(rc, lines, steps)


@fault("nan_learning_rate")
def _nan_lr(d: Drill) -> str:
    return _bad_value(d, "nanlr", "--config.num_steps=40", "--config.optimizer.learning_rate=nan")


@fault("compress_negative_rate")
def _compress_rate(d: Drill) -> str:
    workdir = d.path("crate")
    rc, lines, _, secs = d.run(
        "--config=configs/compress_lenet5.py:quick,rate=-1",
        f"--workdir={workdir}",
        "--config.teacher.data.name=synthetic",
        "--config.teacher.num_steps=20",
    )
    teacher = os.path.exists(os.path.join(workdir, "teacher", "summary.json"))
    return _outcome(rc, lines, f"teacher trained first: {teacher}, {secs:.0f} s")


@fault("rejected_run_claims_workdir")
def _claim(d: Drill) -> str:
    workdir = d.path("claim")
    rc1, _, _, _ = d.run(
        LENET.replace("quick,", "quick,format=foo,"), f"--workdir={workdir}", *SMALL
    )
    rc2, lines, _, _ = d.run(LENET, f"--workdir={workdir}", *SMALL, "--config.num_steps=5")
    return f"format=foo exit {rc1}; the corrected command: " + _outcome(rc2, lines)


@fault("rerun_finished")
def _rerun(d: Drill) -> str:
    workdir = d.path("rerun")
    args = (LENET, f"--workdir={workdir}", *SMALL[:-1], "--config.num_steps=10")
    d.run(*args)
    before = _snapshot(workdir)
    rc, lines, _, _ = d.run(*args)
    return _outcome(rc, lines, _changed(before, _snapshot(workdir)))


@fault("compress_reusing_teacher")
def _teacher(d: Drill) -> str:
    teacher = d.path("teacher")
    common = (
        "--config.teacher.data.name=synthetic",
        "--config.teacher.data.num_train=256",
        "--config.teacher.data.num_test=128",
        "--config.teacher.num_steps=8",
        "--config.teacher.batch_size=32",
        "--config.phase1.steps_per_block=2",
        "--config.phase2.steps=2",
        f"--config.teacher_workdir={teacher}",
    )
    d.run("--config=configs/compress_lenet5.py:quick", f"--workdir={d.path('ca')}", *common)
    before = _snapshot(teacher)
    rc, lines, _, _ = d.run(
        "--config=configs/compress_lenet5.py:quick,rate=0.2", f"--workdir={d.path('cb')}", *common
    )
    return _outcome(rc, lines, "teacher: " + _changed(before, _snapshot(teacher)))


@fault("missing_config_file")
def _missing_config(d: Drill) -> str:
    return _outcome(*d.run("--config=configs/nope.py", f"--workdir={d.path('x')}")[:2])


@fault("mistyped_override")
def _typo(d: Drill) -> str:
    rc, lines, _, _ = d.run(
        "--config=configs/lenet5.py:quick",
        "--config.optimizr.learning_rate=0.1",
        f"--workdir={d.path('x')}",
    )
    return _outcome(rc, lines)


@fault("workdir_is_a_file")
def _workdir_file(d: Drill) -> str:
    path = d.path("afile")
    open(path, "w").close()
    return _outcome(*d.run(LENET, f"--workdir={path}", *SMALL)[:2])


@fault("read_only_workdir")
def _read_only(d: Drill) -> str:
    with _tmpfs(d.path("ro"), "1m") as disk:
        os.makedirs(os.path.join(disk, "run"))
        subprocess.run(["mount", "-o", "remount,ro", disk], check=True)
        return _outcome(*d.run(LENET, f"--workdir={disk}/run", *SMALL)[:2])


@fault("disk_full")
def _disk_full(d: Drill) -> str:
    with _tmpfs(d.path("full"), "256k") as disk:
        return _outcome(*d.run(LENET, f"--workdir={disk}/run", *SMALL, "--config.num_steps=40")[:2])


@fault("bayes_mlp_dataset")
def _bayes_dataset(d: Drill) -> str:
    rc, lines, _, _ = d.run(
        "--config=configs/bayes_mlp.py:quick,dataset=synthetic",
        f"--workdir={d.path('bmlp')}",
        "--config.num_steps=5",
    )
    return _outcome(rc, lines)


# fault -> (what goes wrong, the test that holds it, in tests/experiments/)
DESCRIPTIONS = {
    "zipf0": (
        "a 0.0 in the config (`data.zipf_exponent`)",
        "test_configs.py",
        "test_a_zero_in_a_config_reaches_the_data_pipeline",
    ),
    "data_dir_missing": (
        "`--config.data.data_dir` that does not exist",
        "test_input_pipeline.py",
        "test_explicit_data_dir_that_does_not_exist",
    ),
    "data_dir_flat_truncated": (
        "`data_dir` holding the four IDX files flat, one truncated",
        "test_input_pipeline.py",
        "test_explicit_data_dir_truncated_file_is_an_error",
    ),
    "lock": (
        "two runs started together on one workdir",
        "test_reliability.py",
        "test_two_runs_started_together_on_one_workdir",
    ),
    "damaged_latest_checkpoint": (
        "the newest checkpoint half-written (killed at 35, step 30 truncated)",
        "test_reliability.py",
        "test_a_damaged_latest_checkpoint_is_skipped_and_the_run_ends_the_same",
    ),
    "negative_learning_rate": (
        "`learning_rate=-0.01`",
        "test_reliability.py",
        "test_a_bad_value_is_rejected_naming_its_key",
    ),
    "negative_num_steps": (
        "`num_steps=-5`",
        "test_reliability.py",
        "test_a_bad_value_is_rejected_naming_its_key",
    ),
    "nan_learning_rate": (
        "`learning_rate=nan`",
        "test_reliability.py",
        "test_a_bad_value_is_rejected_naming_its_key",
    ),
    "compress_negative_rate": (
        "compress `:rate=-1`",
        "test_reliability.py",
        "test_compress_rejects_a_bad_rate_before_training_any_teacher",
    ),
    "rejected_run_claims_workdir": (
        "`format=foo`, then the corrected command in the same workdir",
        "test_reliability.py",
        "test_a_rejected_run_does_not_claim_the_workdir",
    ),
    "rerun_finished": (
        "re-running a finished run",
        "test_reliability.py",
        "test_rerunning_a_finished_run_changes_no_file",
    ),
    "compress_reusing_teacher": (
        "a second compression reusing a teacher",
        "test_reliability.py",
        "test_a_reused_teacher_is_left_untouched_and_one_with_other_data_is_refused",
    ),
    "missing_config_file": (
        "a missing config file",
        "test_reliability.py",
        "test_user_mistakes_get_one_or_two_lines",
    ),
    "mistyped_override": (
        "a mistyped `--config.` override",
        "test_reliability.py",
        "test_user_mistakes_get_one_or_two_lines",
    ),
    "workdir_is_a_file": (
        "`--workdir` that is a file",
        "test_reliability.py",
        "test_a_workdir_that_is_a_file_or_under_a_file_gets_one_line",
    ),
    "read_only_workdir": (
        "a read-only workdir (tmpfs remounted ro)",
        "test_reliability.py",
        "test_a_read_only_workdir_gets_one_line",
    ),
    "disk_full": (
        "a full disk (256 kB tmpfs)",
        "test_reliability.py",
        "test_a_full_disk_gets_one_line_and_keeps_no_claim",
    ),
    "bayes_mlp_dataset": (
        "`bayes_mlp.py:dataset=`",
        "test_reliability.py",
        "test_every_image_config_takes_dataset",
    ),
}


def table(before: dict[str, str], after: dict[str, str]) -> str:
    """A markdown table of two drills (before and after) with the tests that hold each."""
    rows = ["| fault | before | after | test (tests/experiments/) |", "|---|---|---|---|"]
    for name in FAULTS:
        what, test_file, test = DESCRIPTIONS[name]
        cells = [before.get(name, "not run"), after.get(name, "not run")]
        # the scratch directory differs from run to run
        cells = [re.sub(r"/tmp/tmp\w+", "$SCRATCH", c).replace("|", "/") for c in cells]
        rows.append(f"| {what} (`{name}`) | {cells[0]} | {cells[1]} | `{test_file}::{test}` |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )
    parser.add_argument("--only", default="", help="comma-separated fault names")
    parser.add_argument("--json", default=None, help="also write {fault: outcome} here")
    parser.add_argument(
        "--table", nargs=2, metavar=("BEFORE", "AFTER"), help="print the table of two --json files"
    )
    args = parser.parse_args(argv)
    if args.table:
        before, after = (json.load(open(p)) for p in args.table)
        print(table(before, after))
        return
    names = [n for n in args.only.split(",") if n] or list(FAULTS)
    unknown = sorted(set(names) - set(FAULTS))
    if unknown:
        parser.error(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")
    results = {}
    for name in names:
        with tempfile.TemporaryDirectory() as scratch:
            try:
                results[name] = FAULTS[name](Drill(os.path.abspath(args.repo), scratch))
            except Exception as e:  # a drill that cannot run says why, the others go on
                results[name] = f"drill failed: {type(e).__name__}: {e}"
        print(f"{name:28s} {results[name]}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
