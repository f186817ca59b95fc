"""Prints a results table from the `summary.json` of one or more run directories.

python scripts/results_table.py runs/lenet5_dense [runs/lenet5_tt ...] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def rows(workdirs: list[str]) -> list[dict]:
    out = []
    for d in workdirs:
        path = os.path.join(d, "summary.json")
        if not os.path.exists(path):
            sys.exit(f"no summary.json in {d}: has the run finished?")
        with open(path) as f:
            s = json.load(f)
        formats = sorted({layer["format"] for layer in s["layers"]} - {"dense"}) or ["dense"]
        rate = s.get("compressed_layers", {}).get("fraction")
        out.append(
            {
                "run": os.path.basename(os.path.normpath(d)),
                "data": s["dataset"],
                "formats": "+".join(formats),
                "compressed layers": "-" if rate is None else f"{rate:.3f}x",
                "test acc": f"{100 * s['test_accuracy']:.2f}%",
                "params": f"{s['params']:,}",
                "vs dense": f"{s['compression']:.3f}x",
                "FLOPs vs dense": f"{s['flops_ratio']:.3f}x",
                "steps": str(s.get("steps", s.get("phase1_steps", 0) + s.get("phase2_steps", 0))),
                "wall": f"{s['wall_time_sec']:.0f}s",
                "plot": os.path.join(d, "curves.png"),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    args = parser.parse_args()
    table = rows(args.workdirs)
    keys = list(table[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in table:
        print("| " + " | ".join(r[k] for k in keys) + " |")


if __name__ == "__main__":
    main()
