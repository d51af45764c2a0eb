#!/usr/bin/env bash
# The GPU check: run whenever a machine with an NVIDIA GPU is available.
#
#   scripts/gpu-check.sh [OUT_DIR]
#
# 1. The CUDA binary: $OMUDA_CUDA_BIN if set (built on another machine with
#    scripts/cuda-toolchain.sh + `cargo build --release --features cuda`),
#    otherwise built here (needs cargo, the crates, and nvcc 13.0 on PATH or
#    CUDA_HOME; set CUDA_COMPUTE_CAP when nvidia-smi cannot tell it).
# 2. The test suite on the GPU (OMUDA_TEST_DEVICE=cuda) when cargo is present;
#    with a prebuilt binary, test binaries in $OMUDA_CUDA_TESTS (a folder) are
#    run instead, each with OMUDA_TEST_DEVICE=cuda.
# 3. `omuda bench --device cuda` at the reference sizes, in f32 and with
#    `--autocast bf16` (DAFormer: MiT-B5 + DAFormer head, 512x512 crops,
#    batch 2; HRDA: the same network and scale attention on 1024x1024 crops,
#    i.e. a 512x512 context plus a 512x512 detail crop per image and 3x3
#    overlapping teacher windows), sampling peak GPU memory with nvidia-smi
#    while each runs.
# 4. A table of iteration time and peak GPU memory next to the reference
#    repositories' numbers (DAFormer 1.44 s/iter on an RTX 2080 Ti; HRDA
#    2.9 s/iter and 22.5 GB on a Titan RTX).
#
# Output: OUT_DIR (default gpu-check/) holds the logs, bench JSON and table.md.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${1:-gpu-check}")
mkdir -p "$OUT"
log() { echo "gpu-check: $*" | tee -a "$OUT/summary.log" >&2; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1 \
  || { log "nvidia-smi failed: no GPU here?"; cat "$OUT/gpu.txt" >&2; exit 2; }
log "GPU: $(head -1 "$OUT/gpu.txt")"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')}

BIN=${OMUDA_CUDA_BIN:-}
if [ -z "$BIN" ]; then
  command -v cargo > /dev/null || { log "no cargo and no OMUDA_CUDA_BIN: nothing to run"; exit 2; }
  start=$(date +%s)
  (cd "$ROOT" && cargo build --release --features cuda) > "$OUT/build.log" 2>&1 \
    || { log "CUDA build failed, see $OUT/build.log"; tail -20 "$OUT/build.log" >&2; exit 1; }
  log "CUDA build: $(( $(date +%s) - start )) s"
  BIN=$ROOT/target/release/omuda
fi
"$BIN" --device cuda info > "$OUT/info.txt" 2>&1 || { log "omuda cannot open the GPU:"; cat "$OUT/info.txt" >&2; exit 1; }
log "$(tail -1 "$OUT/info.txt")"

tests="not run"
if [ -z "${OMUDA_CUDA_BIN:-}" ]; then
  start=$(date +%s)
  if (cd "$ROOT" && OMUDA_TEST_DEVICE=cuda cargo test --release --features cuda --workspace) > "$OUT/tests.log" 2>&1; then
    tests="passed"
  else
    tests="FAILED (see tests.log)"
  fi
  log "tests on cuda: $tests in $(( $(date +%s) - start )) s"
elif [ -n "${OMUDA_CUDA_TESTS:-}" ]; then
  tests="passed"
  for t in "$OMUDA_CUDA_TESTS"/*; do
    [ -x "$t" ] || continue
    OMUDA_TEST_DEVICE=cuda "$t" >> "$OUT/tests.log" 2>&1 || tests="FAILED (see tests.log)"
  done
  log "tests on cuda: $tests"
fi

# bench LABEL ARGS…: runs `omuda bench`, sampling GPU memory every 100 ms.
bench() {
  local label=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/mem-$label.txt" 2>/dev/null &
  local smi=$!
  "$BIN" --device cuda bench "$@" --json "$OUT/bench-$label.json" > "$OUT/bench-$label.log" 2>&1
  local rc=$?
  kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
  local peak; peak=$(sort -n "$OUT/mem-$label.txt" | tail -1)
  if [ $rc -ne 0 ]; then log "bench $label failed (see bench-$label.log)"; echo "| $label | failed | ${peak:-?} MiB |" >> "$OUT/rows.md"; return; fi
  local it; it=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('%.3f' % d['uda_iteration_s'])" "$OUT/bench-$label.json" 2>/dev/null || echo "?")
  echo "| $label | $it | ${peak:-?} MiB |" >> "$OUT/rows.md"
}
: > "$OUT/rows.md"
bench daformer_b5_512 --model daformer_mitb5 --crop 512 --batch 2 --iters 10 --method daformer
bench daformer_b5_512_bf16 --model daformer_mitb5 --crop 512 --batch 2 --iters 10 --method daformer --autocast bf16
bench hrda_b5_1024 --model daformer_mitb5 --crop 1024 --batch 2 --iters 10 --method hrda
bench hrda_b5_1024_bf16 --model daformer_mitb5 --crop 1024 --batch 2 --iters 10 --method hrda --autocast bf16

{
  echo "GPU: $(head -1 "$OUT/gpu.txt")"
  echo "tests on cuda: $tests"
  echo
  echo "| run | s/iteration (UDA step) | peak GPU memory |"
  echo "|---|---|---|"
  cat "$OUT/rows.md"
  echo
  echo "Reference repositories: DAFormer 1.44 s/iter on an RTX 2080 Ti; HRDA 2.9 s/iter, 22.5 GB on a Titan RTX."
  echo "hrda_b5_2x512 approximates HRDA's cost by two 512x512 crops per image (context + detail) through the same network."
} > "$OUT/table.md"
cat "$OUT/table.md"
