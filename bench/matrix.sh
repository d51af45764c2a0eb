#!/usr/bin/env bash
# The omuda/PyTorch bench matrix: `omuda bench --compare-pytorch` for each
# network of the zoo's transformer path and DAFormer head, one after the
# other, then one table of ratios (omuda time / PyTorch time, same network,
# step and threads; < 1 means omuda is faster) against the targets: eval
# forward <= 0.7, train step and DACS iteration <= 0.8, peak RSS <= 1.0.
# Run it on an idle machine.
#
#   bench/matrix.sh [OUT]        default: runs/bench-matrix
#
# PyTorch: $OMUDA_TORCH_PYTHON (a Python with torch), as for --compare-pytorch.
set -euo pipefail
OUT=${1:-runs/bench-matrix}
BIN=${OMUDA_BIN:-target/release/omuda}
mkdir -p "$OUT"
run() {  # name, then bench arguments
  local name=$1; shift
  "$BIN" bench --compare-pytorch --quiet --json "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1 \
    || { echo "bench $name failed, see $OUT/$name.log" >&2; exit 1; }
}
# Repetitions by size: a 10 ms forward needs many for a stable median (with
# 5, the tiny networks' ratios moved by 0.2 between runs); MiT-B5 at 512² takes
# seconds per step.
run segformer_tiny --model segformer_tiny --crop 128x256 --iters 30 --warmup 5
run daformer_tiny --model daformer_tiny --crop 128x256 --iters 30 --warmup 5
run segformer_mitb0 --model segformer_mitb0 --crop 256 --iters 10 --warmup 3
run daformer_mitb0 --model daformer_mitb0 --crop 256 --iters 10 --warmup 3
run daformer_mitb5 --model daformer_mitb5 --crop 512 --batch 1 --no-uda
python3 - "$OUT" <<'PY' | tee "$OUT/matrix.md"
import json, os, sys
out = sys.argv[1]
rows = ["segformer_tiny", "daformer_tiny", "segformer_mitb0", "daformer_mitb0", "daformer_mitb5"]
targets = {"eval_forward": 0.7, "train_step": 0.8, "uda_iteration": 0.8, "peak_rss": 1.0}
def cell(r, key):
    if r is None:
        return "–"
    return f"**{r:.2f}**" if r > targets[key] else f"{r:.2f}"
print("| network, crop, batch | eval forward | train step | DACS iteration | peak RSS |")
print("|---|---:|---:|---:|---:|")
for name in rows:
    v = json.load(open(os.path.join(out, name + ".json")))
    p = v["pytorch"]
    ratio = lambda k: (v[k + "_s"] / p[k + "_s"]) if v.get(k + "_s") and p.get(k + "_s") else None
    crop = "x".join(str(c) for c in v["crop"])
    print(f"| `{name}` {crop}, b{v['batch']} | {cell(ratio('eval_forward'), 'eval_forward')} | "
          f"{cell(ratio('train_step'), 'train_step')} | {cell(ratio('uda_iteration'), 'uda_iteration')} | "
          f"{cell(v['peak_rss_mib'] / p['peak_rss_mib'], 'peak_rss')} |")
print()
print("omuda time / PyTorch time (wall, median of the timed repetitions: 30 for the tiny networks,"
      " 10 for MiT-B0, 5 for MiT-B5), same threads;"
      " bold: above the target (eval 0.7, train step and DACS iteration 0.8, RSS 1.0).")
PY
