#!/usr/bin/env python3
"""Target dev and test mIoU of finished runs, per seed and mean, one line per
run folder. Hyperparameters are chosen on the dev column.

    python3 scripts/dev_scores.py runs/search/fd_0.1 runs/calibration/dacs ...
"""
import glob
import json
import os
import statistics
import sys


def scores(folder, split):
    found = {}
    for path in glob.glob(os.path.join(folder, "seed_*", "*", "metrics.json")):
        with open(path) as f:
            m = json.load(f)
        found[m["seed"]] = m[split]["miou"] * (100 if m[split]["miou"] <= 1 else 1)
    return found


def main():
    print("| run | dev per seed | dev mean | test mean |")
    print("|---|---|---:|---:|")
    for folder in sys.argv[1:]:
        dev, test = scores(folder, "target_dev"), scores(folder, "target_test")
        if not dev:
            print(f"| {folder} | (no finished seed) | | |")
            continue
        seeds = sorted(dev)
        per = " ".join(f"{dev[s]:.2f}" for s in seeds)
        print(f"| {folder} | {per} | {statistics.mean(dev.values()):.2f} "
              f"| {statistics.mean(test.values()):.2f} |")


if __name__ == "__main__":
    main()
