#!/usr/bin/env bash
# The OMUDA plugin ablation on the three hosts of the calibrated built-in
# benchmark, one `omuda compare` per host: the host alone, + CAM, + FDM,
# + CDM and + all three, for each seed, on the target test split (paired
# gains with each seed's sign, per-class gains, charts: OUT/<host>/compare.md).
# The hosts are the presets synth-dacs, synth-daformer and synth-mic_daformer,
# the calibration's rows (scripts/calibrate.sh: `segformer_tiny` from the
# pretrained encoder, 800 iterations): DACS, DAFormer (RCS, FD with the
# weight dev chose, pseudo-label crop) and MIC(DAFormer). On the MIC host
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
for host in dacs daformer mic_daformer; do
  "$BIN" compare --preset "synth-$host" --plugins none,cam,fdm,cdm,cam+fdm+cdm \
    --seeds "$SEEDS" --out "$OUT" "$@"
done
