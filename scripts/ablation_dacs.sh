#!/usr/bin/env bash
# The OMUDA plugins on the DACS host of the built-in benchmark: DACS + CAM,
# + FDM, + CDM and + all three at their design defaults, 3 seeds each, then
# the paired table against DACS (the calibration's DACS row: the same
# configuration). Rows already finished are kept.
#
#   scripts/ablation_dacs.sh [OUT] [SEEDS]      default: runs/plugins 0,1,2
set -euo pipefail
OUT=${1:-runs/plugins}
SEEDS=${2:-0,1,2}
BIN=${OMUDA_BIN:-target/release/omuda}
mkdir -p "$OUT"
[ -f "$OUT/dacs/summary.json" ] || "$BIN" train --method dacs --seeds "$SEEDS" --out "$OUT/dacs" > "$OUT/dacs.log" 2>&1
for p in cam fdm cdm all; do
  r=dacs_$p
  [ -f "$OUT/$r/summary.json" ] && continue
  if [ $p = all ]; then list='"cam", "fdm", "cdm"'; else list="\"$p\""; fi
  "$BIN" train --method dacs --set "plugins=[$list]" --seeds "$SEEDS" --out "$OUT/$r" > "$OUT/$r.log" 2>&1
done
python3 "$(dirname "$0")/ablation_table.py" "$OUT/dacs" \
  +CAM="$OUT/dacs_cam" +FDM="$OUT/dacs_fdm" +CDM="$OUT/dacs_cdm" "+CAM+FDM+CDM=$OUT/dacs_all" | tee "$OUT/table.md"
