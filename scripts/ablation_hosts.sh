#!/usr/bin/env bash
# The OMUDA plugin ablation on the three hosts of the built-in benchmark, one
# `omuda compare` per host: the host alone, + CAM, + FDM, + CDM and + all
# three, 3 seeds each, on the target test split (paired gains, per-class
# gains, charts in OUT/<host>/compare.md). On the MIC host CAM replaces MIC's
# mask; on the DAFormer host FDM replaces the feature distance. Finished runs
# are reused, an interrupted one resumes. Split the grids across processes or
# machines with --shard K/N (docs/running.md).
#
#   scripts/ablation_hosts.sh [OUT] [SEEDS] [extra compare args...]
#   default: runs/hosts 0,1,2
set -euo pipefail
OUT=${1:-runs/hosts}
SEEDS=${2:-0,1,2}
shift $(( $# > 2 ? 2 : $# ))
BIN=${OMUDA_BIN:-target/release/omuda}
for preset in synth-dacs synth-daformer synth-mic_daformer; do
  "$BIN" compare --preset "$preset" --plugins none,cam,fdm,cdm,cam+fdm+cdm \
    --seeds "$SEEDS" --out "$OUT" "$@"
done
