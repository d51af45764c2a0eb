#!/usr/bin/env bash
# The plugin ablation of docs/results.md, one `omuda train --seeds` per row
# (the same runs as scripts/ablation_hosts.sh, laid out as train folders), then
# the paired tables per host with scripts/ablation_table.py. The hosts are the
# presets synth-dacs, synth-daformer and synth-mic_daformer; their own rows
# are the calibration's (scripts/calibrate.sh trains them into OUT_CAL).
#
#   scripts/ablation_rows.sh [OUT] [SEEDS] [OUT_CAL]
#   default: runs/hostrows 0,1,2 runs/calibration
set -euo pipefail
OUT=${1:-runs/hostrows}
SEEDS=${2:-0,1,2}
CAL=${3:-runs/calibration}
BIN=${OMUDA_BIN:-target/release/omuda}
HERE=$(dirname "$0")
mkdir -p "$OUT"
for host in dacs daformer mic_daformer; do
  for p in cam fdm cdm all; do
    row=${host}_$p
    [ -f "$OUT/$row/summary.json" ] && continue
    if [ $p = all ]; then list='["cam", "fdm", "cdm"]'; else list="[\"$p\"]"; fi
    "$BIN" train --config "synth-$host" --set "plugins=$list" --seeds "$SEEDS" \
      --out "$OUT/$row" > "$OUT/$row.log" 2>&1
  done
done
for pair in dacs:dacs daformer:daformer_lambda_0.05 mic_daformer:mic_daformer_lambda_0.05; do
  host=${pair%%:*}; cal=${pair#*:}
  python3 "$HERE/ablation_table.py" "$CAL/$cal" +CAM="$OUT/${host}_cam" +FDM="$OUT/${host}_fdm" \
    +CDM="$OUT/${host}_cdm" "+CAM+FDM+CDM=$OUT/${host}_all" > "$OUT/table_$host.md"
done
