#!/usr/bin/env python3
"""Summarise `omuda train` runs of several seeds as a Markdown table.

Usage: scripts/synth-results.py RUN_DIR [RUN_DIR ...]
Each RUN_DIR is an `--out` folder holding `<method>/metrics.json`. Prints,
per method, target-test and source-val mIoU per seed, their mean ± std
(sample std), and the per-class target IoU averaged over seeds.
Standard library only.
"""
import json
import statistics
import sys
from pathlib import Path


def load(run_dirs):
    runs = {}
    for d in run_dirs:
        for m in sorted(Path(d).glob("*/metrics.json")):
            data = json.loads(m.read_text())
            runs.setdefault(data["method"], []).append(data)
    return runs


def mean_std(values):
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    runs = load(sys.argv[1:])
    if not runs:
        sys.exit("no metrics.json found under " + ", ".join(sys.argv[1:]))
    print("| method | seeds | target-test mIoU per seed | target-test mIoU | source-val mIoU | train time (s) |")
    print("|---|---|---|---|---|---|")
    for method, rs in runs.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        t = [r["target_test"]["miou"] for r in rs]
        s = [r["source_val"]["miou"] for r in rs]
        secs = [r["train_seconds"] for r in rs]
        print(
            f"| {method} | {','.join(str(r['seed']) for r in rs)} | {', '.join(f'{x:.2f}' for x in t)} "
            f"| {mean_std(t)} | {mean_std(s)} | {statistics.mean(secs):.0f} |"
        )
    names = next(iter(runs.values()))[0]["target_test"]["class_names"]
    methods = list(runs)
    print()
    print("Per-class target-test IoU, mean over seeds:")
    print()
    print("| class | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    for i, name in enumerate(names):
        cells = []
        for m in methods:
            vals = [r["target_test"]["per_class_iou"][i] for r in runs[m]]
            vals = [v for v in vals if v is not None]
            cells.append(f"{statistics.mean(vals):.1f}" if vals else "n/a")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
