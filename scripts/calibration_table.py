#!/usr/bin/env python3
"""Markdown tables of a calibration run (scripts/calibrate.sh): every row's
target-test mIoU per seed, mean ± std, and the paired gain over the row it is
compared with, with its sign on each seed; then per-class IoU means. With
`dev` as second argument, the same on the target dev split (the split
settings are chosen on).

    python3 scripts/calibration_table.py runs/calibration [test|dev]
"""
import glob
import json
import os
import statistics
import sys

CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
           "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
           "truck", "bus", "train", "motorcycle", "bicycle"]

# row, label, the row it is compared with, the published direction
ROWS = [
    ("source_only_scratch", "source-only, from scratch", None, ""),
    ("source_only", "source-only, pretrained", "source_only_scratch", "pretrained > scratch"),
    ("dacs", "DACS", "source_only", "DACS > source-only"),
    ("dacs_rcs", "DACS + RCS", "dacs", "≥ DACS"),
    ("dacs_fd", "DACS + FD (λ 0.005, published)", "dacs", "> DACS"),
    ("dacs_fd_lambda_0.02", "DACS + FD (λ 0.02)", "dacs", "> DACS"),
    ("dacs_fd_lambda_0.05", "DACS + FD (λ 0.05, chosen on dev)", "dacs", "> DACS"),
    ("dacs_fd_lambda_0.1", "DACS + FD (λ 0.1)", "dacs", "> DACS"),
    ("dacs_fd_lambda_0.2", "DACS + FD (λ 0.2)", "dacs", "> DACS"),
    ("daformer", "DAFormer, FD λ 0.005 (published)", "dacs", "> DACS"),
    ("daformer_lambda_0.05", "DAFormer (RCS + FD λ 0.05 + PL crop)", "dacs", "> DACS"),
    ("mic_daformer", "MIC(DAFormer, FD λ 0.005)", "daformer", "> DAFormer"),
    ("mic_daformer_lambda_0.05", "MIC(DAFormer)", "daformer_lambda_0.05", "> DAFormer"),
    ("mic_daformer_ratio_0.5", "MIC(DAFormer), mask ratio 0.5", "daformer_lambda_0.05", "> DAFormer"),
    ("mic_daformer_mic_lambda_0.5", "MIC(DAFormer), MIC λ 0.5", "daformer_lambda_0.05", "> DAFormer"),
    ("mic_daformer_block_16", "MIC(DAFormer), 16-px blocks", "daformer_lambda_0.05", "> DAFormer"),
    ("oracle", "oracle (target labels)", None, ""),
]


def runs(out, row):
    """{seed: metrics} of one row."""
    found = {}
    for path in glob.glob(os.path.join(out, row, "seed_*", "*", "metrics.json")):
        with open(path) as f:
            m = json.load(f)
        found[m["seed"]] = m
    return found


def fmt(v):
    return "n/a" if v is None else f"{v:.2f}"


def mean_std(v):
    if not v:
        return None, None
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else None)


def main(out, split="target_test"):
    data = {r: runs(out, r) for r, *_ in ROWS}
    seeds = sorted({s for d in data.values() for s in d})
    print(f"Target **{split.split('_')[1]}** mIoU (%), seeds {seeds}; gains paired per seed.\n")
    print("| row | " + " | ".join(f"seed {s}" for s in seeds)
          + " | mean ± std | compared with | paired gain ± std | sign per seed | direction holds |")
    print("|---|" + "---:|" * len(seeds) + "---|---|---|---|---|")
    for row, label, ref, direction in ROWS:
        d = data[row]
        if not d:
            continue
        vals = [d[s][split]["miou"] if s in d else None for s in seeds]
        m, sd = mean_std([v for v in vals if v is not None])
        cells = [fmt(v) for v in vals]
        ms = f"**{fmt(m)}** ± {fmt(sd)}"
        if ref and data[ref]:
            diffs = [d[s][split]["miou"] - data[ref][s][split]["miou"]
                     for s in seeds if s in d and s in data[ref]]
            gm, gsd = mean_std(diffs)
            signs = " ".join("+" if x > 0 else ("−" if x < 0 else "0") for x in diffs)
            strict = not direction.startswith("≥")
            holds = all(x > 0 for x in diffs) if strict else gm >= 0
            verdict = ("yes" if holds else "no") + f" ({direction})"
            ref_label = next(lbl for r, lbl, *_ in ROWS if r == ref)
            print(f"| {label} | " + " | ".join(cells)
                  + f" | {ms} | {ref_label} | {gm:+.2f} ± {fmt(gsd)} | {signs} | {verdict} |")
        else:
            print(f"| {label} | " + " | ".join(cells) + f" | {ms} | | | | |")

    print("\nPer-class target-test IoU (%), mean over seeds:\n")
    present = [r for r, *_ in ROWS if data[r]]
    print("| class | " + " | ".join(present) + " |")
    print("|---|" + "---:|" * len(present))
    for c, name in enumerate(CLASSES):
        row_vals = []
        for r in present:
            v = [m[split]["per_class_iou"][c] for m in data[r].values()
                 if m[split]["per_class_iou"][c] is not None]
            row_vals.append(fmt(statistics.mean(v)) if v else "n/a")
        print(f"| {name} | " + " | ".join(row_vals) + " |")

    print("\nTraining time per run (s, training loop alone, mean over seeds):\n")
    print("| row | s/run |")
    print("|---|---:|")
    for r in present:
        t = [m["train_seconds"] for m in data[r].values()]
        print(f"| {r} | {statistics.mean(t):.0f} |")


if __name__ == "__main__":
    split = "target_dev" if len(sys.argv) > 2 and sys.argv[2] == "dev" else "target_test"
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/calibration", split)
