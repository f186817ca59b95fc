"""Regenerates docs/results/tnn_lenet5.{md,json,png}: LeNet-5 compression on Fashion-MNIST.

For every format (CP, TK, TT, TR, RCP, RTK, RTT, RTR) and rate (2%, 5%, 10%, 20% of the
compressed layers' parameters) it runs the `compress` trainer (configs/compress_lenet5.py)
with one shared dense teacher, and records the accuracy after decomposition, after phase 1
and after phase 1+2, with the measured compression. It then runs the convergence
comparison (phase 1 against end-to-end training of the same decomposition, accuracy every
`--curve_every` steps) for the formats given by --compare_formats at 10%.

    python scripts/tnn_lenet5_table.py [--runs runs/tnn_lenet5] [--jobs 2] [--formats cp,rcp]

Runs whose summary.json exists are reused, so an interrupted table resumes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = ("cp", "tk", "tt", "tr", "rcp", "rtk", "rtt", "rtr")
RATES = (0.02, 0.05, 0.1, 0.2)
PLAIN_OF = {"rcp": "cp", "rtk": "tk", "rtt": "tt", "rtr": "tr"}


def _launch(config_arg: str, workdir: str, log: str, extra: list[str]) -> int:
    cmd = [
        sys.executable,
        "-m",
        "experiments.main",
        f"--config=configs/compress_lenet5.py:{config_arg}",
        f"--workdir={workdir}",
        *extra,
    ]
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    with open(log, "w") as f:
        return subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode


def _summary(workdir: str) -> dict | None:
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/tnn_lenet5")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--rates", default=",".join(str(r) for r in RATES))
    parser.add_argument("--compare_formats", default="rcp,rtt,cp,tt")
    parser.add_argument("--curve_every", type=int, default=100)
    parser.add_argument("--out", default="docs/results/tnn_lenet5")
    parser.add_argument("--extra", default="", help="extra flags for every run, space separated")
    args = parser.parse_args()
    os.chdir(ROOT)
    runs = os.path.abspath(args.runs)
    teacher = os.path.join(runs, "teacher")
    os.makedirs(runs, exist_ok=True)
    extra = args.extra.split()
    t0 = time.time()

    # The dense teacher first (the runs below reuse it).
    if _summary(teacher) is None:
        print("training the dense teacher in", teacher, flush=True)
        code = subprocess.run(
            [
                sys.executable,
                "-m",
                "experiments.main",
                "--config=configs/lenet5.py",
                f"--workdir={teacher}",
            ],
            cwd=ROOT,
        ).returncode
        if code:
            sys.exit(f"teacher training failed ({code})")
    dense = _summary(teacher)

    jobs = []
    formats = args.formats.split(",")
    rates = [float(r) for r in args.rates.split(",")]
    for fmt in formats:
        for rate in rates:
            name = f"{fmt}_{rate:g}"
            arg = f"format={fmt},rate={rate},teacher_workdir={teacher}"
            jobs.append((name, arg, []))
    for fmt in args.compare_formats.split(","):
        if fmt:
            arg = (
                f"format={fmt},rate=0.1,teacher_workdir={teacher},compare=True,"
                f"curve_every={args.curve_every},phase2_steps=0"
            )
            jobs.append((f"compare_{fmt}_0.1", arg, ["--config.phase2.steps=0"]))

    def run(job):
        name, arg, job_extra = job
        workdir = os.path.join(runs, name)
        if _summary(workdir) is None:
            start = time.time()
            log = os.path.join(runs, f"{name}.log")
            code = _launch(arg, workdir, log, extra + job_extra)  # the job's flags win
            print(f"{name}: exit {code} in {time.time() - start:.0f}s", flush=True)
        return name, _summary(workdir)

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        results = dict(pool.map(run, jobs))

    table = []
    for fmt in formats:
        for rate in rates:
            s = results.get(f"{fmt}_{rate:g}")
            if s is None:
                table.append({"format": fmt, "rate": rate, "missing": True})
                continue
            table.append(
                {
                    "format": fmt,
                    "rate": rate,
                    "measured_fraction": s["compressed_layers"]["fraction"],
                    "model_compression": s["compression"],
                    "flops_ratio": s["flops_ratio"],
                    "ranks": {r["name"]: r["ranks"] for r in s["layers"]},
                    "decomposed": s["accuracy"]["decomposed"],
                    "phase1": s["accuracy"]["phase1"],
                    "phase2": s["accuracy"]["phase2"],
                }
            )
    curves = {}
    for fmt in args.compare_formats.split(","):
        s = results.get(f"compare_{fmt}_0.1")
        if s is not None:
            curves[fmt] = s["curves"]
    out = {
        "dense": {"test_accuracy": dense["test_accuracy"], "params": dense["params"]},
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "command": "python scripts/tnn_lenet5_table.py " + " ".join(sys.argv[1:]),
        "wall_time_sec": time.time() - t0,
        "table": table,
        "curves": curves,
    }
    with open(args.out + ".json", "w") as f:
        json.dump(out, f, indent=1)
    _plot(out, args.out + ".png")
    print(_markdown(out))


def _first_reaching(curve: list, target: float) -> int | None:
    for step, acc in curve:
        if acc >= target:
            return step
    return None


def _markdown(out: dict) -> str:
    dense = out["dense"]["test_accuracy"]
    lines = [
        f"Dense LeNet-5: {100 * dense:.2f}% test accuracy, {out['dense']['params']:,} parameters.",
        "",
        "| format | rate | measured | ranks (conv2 / fc1 / fc2) | decomposed | phase 1 "
        "| phase 1+2 | FLOPs vs dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in out["table"]:
        if r.get("missing"):
            lines.append(f"| {r['format']} | {r['rate']:.0%} | (run failed) | | | | | |")
            continue
        ranks = " / ".join(str(tuple(v)) for v in r["ranks"].values())
        p2 = "" if r["phase2"] is None else f"{100 * r['phase2']:.2f}%"
        lines.append(
            f"| {r['format']} | {r['rate']:.0%} | {r['measured_fraction']:.4f} | {ranks} | "
            f"{100 * r['decomposed']:.2f}% | {100 * r['phase1']:.2f}% | {p2} | "
            f"{r['flops_ratio']:.3f}x |"
        )
    if out["curves"]:
        lines += [
            "",
            "Convergence at 10% (steps from the same decomposition until the test accuracy "
            "first reaches the target; phase 1 = sequential block training, e2e = end-to-end "
            "cross-entropy training of all compressed and dense layers):",
            "",
            "| format | target | phase 1 steps | e2e steps | final phase 1 | final e2e |",
            "|---|---|---|---|---|---|",
        ]
        for fmt, c in out["curves"].items():
            for target in (0.8, 0.85, 0.88):
                p1 = _first_reaching(c["phase1"], target)
                e2e = _first_reaching(c["end_to_end"], target)
                last1 = c["phase1"][-1][1] if c["phase1"] else float("nan")
                last2 = c["end_to_end"][-1][1] if c["end_to_end"] else float("nan")
                lines.append(
                    f"| {fmt} | {target:.0%} | {p1 if p1 else 'not reached'} | "
                    f"{e2e if e2e else 'not reached'} | {100 * last1:.2f}% | {100 * last2:.2f}% |"
                )
    return "\n".join(lines)


def _plot(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, title in ((axes[0], "phase1", "phase 1"), (axes[1], "phase2", "phase 1+2")):
        for fmt in dict.fromkeys(r["format"] for r in out["table"]):
            pts = [
                (r["measured_fraction"], r[key])
                for r in out["table"]
                if r["format"] == fmt and not r.get("missing") and r[key] is not None
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                style = "o-" if fmt.startswith("r") else "s--"
                ax.plot(xs, [100 * y for y in ys], style, label=fmt, markersize=4)
        ax.axhline(100 * out["dense"]["test_accuracy"], color="k", lw=0.8, ls=":", label="dense")
        ax.set_xscale("log")
        ax.set_xlabel("measured fraction of the compressed layers' parameters")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
