"""Side-by-side table of benchmark runs of `scripts/bench.py` (e.g. before and after a change).

    python scripts/bench_compare.py before=a.json after=b.json [after2=c.json ...]

Prints, per case, each run's ratios to dense (forward, forward+backward; training steps:
the step ratio; the embedding: XLA's working memory), the planned FLOPs / dense and the
contraction path the planner chose, so a
redesign can show that its numbers did not move. Ratios are what compare across runs: each
is measured against dense in the same process.
"""

from __future__ import annotations

import json
import sys


def _cells(row: dict | None) -> list[str]:
    if row is None:
        return ["-"] * 4
    if row["kind"] == "train_step":
        return [f"{row['ratio']:.3f}x", "-", "-", "-"]
    if row["kind"] == "embed":
        return ["-", f"{row['memory_bytes']['total'] / 1e6:.1f} MB", "-", "-"]
    flops = row.get("flops_ratio")
    return [
        f"{row['fwd_ratio']:.3f}x",
        f"{row['fwd_bwd_ratio']:.3f}x",
        "-" if flops is None else f"{flops:.3f}",
        str(row.get("path", "-")),
    ]


def main(argv: list[str]) -> None:
    runs = []
    for arg in argv:
        name, _, path = arg.partition("=")
        if not path:
            raise SystemExit(f"give runs as NAME=PATH.json, got {arg!r}")
        with open(path) as f:
            runs.append((name, {r["case"]: r for r in json.load(f)["rows"]}))
    cases = list(dict.fromkeys(c for _, rows in runs for c in rows))
    head = ["case"] + [
        f"{name} {what}"
        for name, _ in runs
        for what in ("fwd (step)", "fwd+bwd (memory)", "FLOPs", "path")
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for case in cases:
        cells = [c for _, rows in runs for c in _cells(rows.get(case))]
        print(f"| {case} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
