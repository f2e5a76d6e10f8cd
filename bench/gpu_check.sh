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

# Three shards in parallel (the GPU has room; the session's minutes are few): the long
# cross-entropy files with the VAE ops, the distillation and mixup ops, everything else.
cd tests
shard_1="ops/test_continual_cross_entropy.py ops/test_continual_long_rows.py ops/test_vae_ops.py"
shard_2="ops/test_cka.py ops/test_kd_loss.py ops/test_mixup_ops.py"
pytest_shard() {
  timeout "${PFL_TEST_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider -m "cuda or triton" --benchmark-disable "$@" 2>&1
}
pytest_shard $shard_1 --junitxml="$OUT/junit-1.xml" >"$OUT/pytest-1.log" &
pytest_shard $shard_2 --junitxml="$OUT/junit-2.xml" >"$OUT/pytest-2.log" &
pytest_shard . ../bench $(printf -- '--ignore=%s ' $shard_1 $shard_2) --junitxml="$OUT/junit-3.xml" >"$OUT/pytest-3.log"
wait
for shard in 1 2 3; do
  grep -E "^(FAILED|ERROR)" "$OUT/pytest-$shard.log" | head -n 20
  log "tests shard $shard: $(tail -n 1 "$OUT/pytest-$shard.log")"
done
cd ..

pyfastlab info --json >"$OUT/info.json"
pyfastlab check --seed 0 2>&1 | tail -n 3 | tee -a "$OUT/summary.txt"
# One family at a time, each saved as it ends, so a run cut short keeps what finished.
for family in continual distill mixup vae vidvrd; do
  COLUMNS=200 timeout "${PFL_BENCH_TIMEOUT:-300}" pyfastlab bench --device cuda --family "$family" ${PFL_BENCH_ARGS:-} \
    --out "$OUT/bench-$family" 2>&1 | tee "$OUT/bench-$family.log" | tail -n 30
  # flatten: the device tool returns files at most two folders down
  for f in "$OUT/bench-$family"/*/*; do mv "$f" "$OUT/bench-$family-$(basename "$f")"; done
  rm -rf "$OUT/bench-$family"
done
log "done in $(( $(date +%s) - start )) s"
