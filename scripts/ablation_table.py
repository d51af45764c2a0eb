#!/usr/bin/env python3
"""Plugin ablation over one host: target-test mIoU per seed, mean ± std,
the paired gain over the host with each seed's sign, the dev gain (the
split settings are chosen on), and per-class test gains.

    python3 scripts/ablation_table.py HOST_DIR LABEL=DIR [LABEL=DIR ...]

Each DIR is an `omuda train --seeds` folder (`seed_<s>/<method>/metrics.json`).
"""
import glob
import json
import os
import statistics
import sys

CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
           "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
           "truck", "bus", "train", "motorcycle", "bicycle"]


def runs(folder):
    found = {}
    for path in glob.glob(os.path.join(folder, "seed_*", "*", "metrics.json")):
        with open(path) as f:
            m = json.load(f)
        found[m["seed"]] = m
    return found


def sd(v):
    return statistics.stdev(v) if len(v) > 1 else float("nan")


def main():
    host = runs(sys.argv[1])
    rows = [(a.split("=", 1)[0], runs(a.split("=", 1)[1])) for a in sys.argv[2:]]
    seeds = sorted(host)
    print("| row | " + " | ".join(f"seed {s}" for s in seeds)
          + " | mean ± std | test gain ± std | signs | dev gain ± std | dev signs |")
    print("|---|" + "---:|" * len(seeds) + "---|---|---|---|---|")
    test = lambda m: m["target_test"]["miou"]
    dev = lambda m: m["target_dev"]["miou"]
    vals = [test(host[s]) for s in seeds]
    print("| host | " + " | ".join(f"{v:.2f}" for v in vals)
          + f" | **{statistics.mean(vals):.2f}** ± {sd(vals):.2f} | | | | |")
    for label, r in rows:
        vals = [test(r[s]) for s in seeds]
        g = [test(r[s]) - test(host[s]) for s in seeds]
        gd = [dev(r[s]) - dev(host[s]) for s in seeds]
        sign = lambda v: " ".join("+" if x > 0 else ("−" if x < 0 else "0") for x in v)
        print(f"| {label} | " + " | ".join(f"{v:.2f}" for v in vals)
              + f" | **{statistics.mean(vals):.2f}** ± {sd(vals):.2f}"
              + f" | {statistics.mean(g):+.2f} ± {sd(g):.2f} | {sign(g)}"
              + f" | {statistics.mean(gd):+.2f} ± {sd(gd):.2f} | {sign(gd)} |")
    print("\nPer-class test IoU gain over the host (mean over seeds):\n")
    print("| class | " + " | ".join(l for l, _ in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for c, name in enumerate(CLASSES):
        cells = []
        for _, r in rows:
            d = [r[s]["target_test"]["per_class_iou"][c] - host[s]["target_test"]["per_class_iou"][c]
                 for s in seeds
                 if r[s]["target_test"]["per_class_iou"][c] is not None
                 and host[s]["target_test"]["per_class_iou"][c] is not None]
            cells.append(f"{statistics.mean(d):+.1f}" if d else "n/a")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
