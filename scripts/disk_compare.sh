#!/usr/bin/env bash
# The DACS comparison (alone and with CAM + FDM + CDM) on the built-in pair
# written to disk in the GTA5 and Cityscapes layouts: `omuda synth export`,
# `omuda prepare`, then `omuda compare` through the files loader.
#
#   scripts/disk_compare.sh [OUT] [SEEDS]      default: runs/disk 0
set -euo pipefail
OUT=${1:-runs/disk}
SEEDS=${2:-0}
BIN=${OMUDA_BIN:-target/release/omuda}
mkdir -p "$OUT"
[ -d "$OUT/gta" ] || "$BIN" synth export --layout gta --out "$OUT/gta" > /dev/null
[ -d "$OUT/cityscapes" ] || "$BIN" synth export --layout cityscapes --out "$OUT/cityscapes" > /dev/null
"$BIN" prepare "$OUT/gta" --kind gta
"$BIN" prepare "$OUT/cityscapes" --kind cityscapes --splits train,dev,val
cat > "$OUT/files.toml" <<TOML
# The built-in benchmark's DACS on its export, through the files loader:
# native size (no resize), whole-frame crops.
base = "synth-dacs"
[data]
dataset = "files"
[data.source]
kind = "gta"
root = "$OUT/gta"
scale = [256, 128]
crop = [128, 256]
[data.target]
kind = "cityscapes"
root = "$OUT/cityscapes"
split = "train"
scale = [256, 128]
crop = [128, 256]
[data.dev]
kind = "cityscapes"
root = "$OUT/cityscapes"
split = "dev"
scale = [256, 128]
[data.val]
kind = "cityscapes"
root = "$OUT/cityscapes"
split = "val"
scale = [256, 128]
[data.loader]
workers = 1
prefetch = 4
TOML
"$BIN" compare --preset "$OUT/files.toml" --plugins none,cam+fdm+cdm --seeds "$SEEDS" --out "$OUT/compare"
