#!/usr/bin/env bash
# Calibration of the built-in benchmark: does each published direction of
# GTA5 -> Cityscapes hold on it? Trains every row on the same network (the
# built-in `segformer_tiny` from the pretrained encoder, 800 iterations)
# for each seed, then writes the paired table (docs/results.md).
#
#   scripts/calibrate.sh [OUT] [SEEDS]      default: runs/calibration 0,1,2
#
# Rows already finished (their summary.json exists) are kept. Needs the
# release binary (cargo build --release) or OMUDA_BIN.
set -euo pipefail
OUT=${1:-runs/calibration}
SEEDS=${2:-0,1,2}
BIN=${OMUDA_BIN:-target/release/omuda}
mkdir -p "$OUT/configs"

# Rare Class Sampling with the published temperature, min_pixels scaled to
# 128x256 frames (see configs/synth-daformer.toml).
RCS='[data.rcs]
class_temp = 0.01
min_pixels = 50
min_crop_ratio = 0.5'
# DAFormer's pseudo-label crop: rows 15 / 120 of a 512-high crop.
PL_CROP='[uda]
pseudo_label_crop = [15, 120]'

row() { local name=$1; shift; printf '%s\n' "$@" > "$OUT/configs/$name.toml"; }
# Every row reads the built-in benchmark (`omuda config`) and changes only
# what it names. `daformer` is the DACS step with the thing-class feature
# distance (FD) to the frozen pretrained encoder; RCS and the pseudo-label
# crop are settings. The EMA teacher keeps DACS's alpha 0.99 in every row.
row source_only_scratch 'methods = ["source_only"]' '[model]' 'weights = "none"'
row source_only 'methods = ["source_only"]'
row oracle 'methods = ["oracle"]'
row dacs 'methods = ["dacs"]'
row dacs_rcs 'methods = ["dacs"]' "$RCS"
row dacs_fd 'methods = ["daformer"]'
# The feature-distance weight searched on the dev split (published: 0.005).
row dacs_fd_lambda_0.02 'methods = ["daformer"]' '[fd]' 'lambda = 0.02'
row dacs_fd_lambda_0.05 'methods = ["daformer"]' '[fd]' 'lambda = 0.05'
row dacs_fd_lambda_0.1 'methods = ["daformer"]' '[fd]' 'lambda = 0.1'
row dacs_fd_lambda_0.2 'methods = ["daformer"]' '[fd]' 'lambda = 0.2'
# DAFormer and MIC(DAFormer) with the published FD weight, then with the one
# dev chose (0.05); MIC's mask ratio, weight and block size searched on dev.
FD='[fd]
lambda = 0.05'
row daformer 'methods = ["daformer"]' "$PL_CROP" "$RCS"
row mic_daformer 'methods = ["mic_daformer"]' "$PL_CROP" "$RCS"
row daformer_lambda_0.05 'methods = ["daformer"]' "$PL_CROP" "$RCS" "$FD"
row mic_daformer_lambda_0.05 'methods = ["mic_daformer"]' "$PL_CROP" "$RCS" "$FD"
row mic_daformer_ratio_0.5 'methods = ["mic_daformer"]' "$PL_CROP" "$RCS" "$FD" '[mic]' 'mask_ratio = 0.5'
row mic_daformer_mic_lambda_0.5 'methods = ["mic_daformer"]' "$PL_CROP" "$RCS" "$FD" '[mic]' 'lambda = 0.5'
row mic_daformer_block_16 'methods = ["mic_daformer"]' "$PL_CROP" "$RCS" "$FD" '[mic]' 'block_size = 16' 'reference_height = 0'

ROWS="source_only_scratch source_only dacs dacs_rcs dacs_fd dacs_fd_lambda_0.02 dacs_fd_lambda_0.05 dacs_fd_lambda_0.1 dacs_fd_lambda_0.2 daformer mic_daformer daformer_lambda_0.05 mic_daformer_lambda_0.05 mic_daformer_ratio_0.5 mic_daformer_mic_lambda_0.5 mic_daformer_block_16 oracle"
start=$(date +%s)
for r in $ROWS; do
  if [ -f "$OUT/$r/summary.json" ]; then echo "calibrate: $r done earlier"; continue; fi
  "$BIN" train --config "$OUT/configs/$r.toml" --seeds "$SEEDS" --out "$OUT/$r" > "$OUT/$r.log" 2>&1 \
    || { echo "calibrate: $r failed, see $OUT/$r.log" >&2; exit 1; }
  echo "calibrate: $r finished ($(( $(date +%s) - start )) s so far)"
done
echo "calibrate: all rows in $(( $(date +%s) - start )) s"
python3 "$(dirname "$0")/calibration_table.py" "$OUT" | tee "$OUT/table.md"
python3 "$(dirname "$0")/calibration_table.py" "$OUT" dev > "$OUT/table-dev.md"
