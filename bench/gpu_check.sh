#!/usr/bin/env bash
# One short GPU session: build for sm_90 against the machine's torch, run the CUDA and Triton
# tests and the CUDA benchmark cases, and leave everything under $OUT (default: ./gpu-results).
# Usage (from the repo root, on the GPU machine): bash bench/gpu_check.sh
set -uo pipefail
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PFL_CUDA_ARCHS=${PFL_CUDA_ARCHS:-9.0} PYFASTLAB_CHECK=1
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

log "machine: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
log "python: $(python3 --version); torch: $(python3 -c 'import torch; print(torch.__version__, torch.version.cuda)')"
# The GPU image has the build and test tools and no network: report what is missing, fetch nothing.
missing=$(python3 - <<'PY'
import importlib.util
names = ["scikit_build_core", "cmake", "ninja", "pytest", "pytest_benchmark", "hypothesis", "rich", "matplotlib", "triton"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
PY
)
[ -z "$missing" ] || log "missing Python packages (carry them as wheels): $missing"

start=$(date +%s)
python3 -m pip install -v --no-build-isolation --no-deps -C cmake.define.PFL_CUDA_ARCHS="$PFL_CUDA_ARCHS" . \
  >"$OUT/build.log" 2>&1 || { log "BUILD FAILED"; tail -n 60 "$OUT/build.log"; exit 1; }
log "build: $(( $(date +%s) - start )) s; $(grep -h -- '-- pyfastlab:' "$OUT/build.log" | sed 's/^.*-- //' | sort -u | tr '\n' ' ')"

# Two shards in parallel (the GPU has room; the session's minutes are few): the long cross-entropy
# files in one, everything else in the other.
cd tests
heavy="ops/test_continual_cross_entropy.py ops/test_continual_long_rows.py"
pytest_shard() {
  python3 -m pytest -q -p no:cacheprovider -m "cuda or triton" --benchmark-disable "$@" 2>&1
}
pytest_shard $heavy --junitxml="$OUT/junit-1.xml" >"$OUT/pytest-1.log" &
pytest_shard . ../bench $(printf -- '--ignore=%s ' $heavy) --junitxml="$OUT/junit-2.xml" >"$OUT/pytest-2.log"
wait
for shard in 1 2; do
  grep -E "^(FAILED|ERROR)" "$OUT/pytest-$shard.log" | head -n 20
  log "tests shard $shard: $(tail -n 1 "$OUT/pytest-$shard.log")"
done
cd ..

pyfastlab info --json >"$OUT/info.json"
pyfastlab check --seed 0 2>&1 | tail -n 3 | tee -a "$OUT/summary.txt"
COLUMNS=200 pyfastlab bench --device cuda --out "$OUT/bench" 2>&1 | tee "$OUT/bench.log" | tail -n 40
# flatten: the device tool returns files at most two folders down
for f in "$OUT"/bench/*/*; do mv "$f" "$OUT/bench-$(basename "$f")"; done
rm -rf "$OUT/bench"
log "done in $(( $(date +%s) - start )) s"
