#!/usr/bin/env bash
# The OMUDA plugin ablation on the three hosts of the calibrated built-in
# benchmark, one `omuda compare` per host: the host alone, + CAM, + FDM,
# + CDM and + all three, for each seed, on the target test split (paired
# gains with each seed's sign, per-class gains, charts: OUT/<host>/compare.md).
# The hosts are the calibration's rows (scripts/calibrate.sh: `segformer_tiny`
# from the pretrained encoder, 800 iterations): DACS, DAFormer (RCS, FD with
# the weight dev chose, pseudo-label crop) and MIC(DAFormer). On the MIC host
# CAM replaces MIC's term; on the DAFormer host FDM replaces the feature
# distance. Finished runs are reused and an interrupted one resumes; extra
# arguments go to every compare (e.g. --shard K/N, --list, --collect).
#
#   scripts/ablation_hosts.sh [OUT] [SEEDS] [extra compare args...]
#   default: runs/hosts 0,1,2
set -euo pipefail
OUT=${1:-runs/hosts}
SEEDS=${2:-0,1,2}
shift $(( $# > 2 ? 2 : $# ))
BIN=${OMUDA_BIN:-target/release/omuda}
mkdir -p "$OUT/configs"
HOST='[uda]
pseudo_label_crop = [15, 120]
[data.rcs]
class_temp = 0.01
min_pixels = 50
min_crop_ratio = 0.5
[fd]
lambda = 0.05'
printf '%s\n' 'methods = ["dacs"]' > "$OUT/configs/dacs.toml"
printf '%s\n' 'methods = ["daformer"]' "$HOST" > "$OUT/configs/daformer.toml"
printf '%s\n' 'methods = ["mic_daformer"]' "$HOST" > "$OUT/configs/mic_daformer.toml"
for host in dacs daformer mic_daformer; do
  "$BIN" compare --preset "$OUT/configs/$host.toml" --plugins none,cam,fdm,cdm,cam+fdm+cdm \
    --seeds "$SEEDS" --out "$OUT" "$@"
done
