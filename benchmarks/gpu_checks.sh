#!/usr/bin/env bash
# Every GPU check of the project in one command, with its numbers written under $OUT:
#   bench  bench_generate + bench_train on the device (SYS-1 throughput, fast vs reference FNO
#          path, batched ensembles, fast vs reference accuracy; all fp32)
#   bf16   bench_train --sections bf16: the same model trained in fp32 and in bf16 until the fp32
#          test rel-L2 is <= 3e-2, both errors, their ratio, prediction and forward-only deviation
#          (bf16 stays off by default until this passes on a GPU); its output is appended to
#          bench_train.log, so the 8-file limit holds
#   grid   `repro run-grid --grid gpu-demo` timed end to end (dry-run estimate first), then
#          `repro status`; its runs are exported (`repro export`) to $OUT/mlflow.db.gz
#
#   OUT=/tmp/gpu bash benchmarks/gpu_checks.sh                 # every section (bench bf16 grid) on cuda
#   OUT=/tmp/gpu bash benchmarks/gpu_checks.sh grid            # one section
#   OUT=/tmp/gpu bash benchmarks/gpu_checks.sh bf16            # the bf16 check alone (sized for ~1 min on an H200)
#   OUT=/tmp/gpu DEVICE=cpu SMOKE=1 bash benchmarks/gpu_checks.sh   # seconds-long CPU rehearsal
#
# On the lent device machine (python3 with torch, no MLflow): first download here, into `.whl`, the
# CPython 3.12 manylinux x86_64 wheels of mlflow-skinny and of the dependencies the device lacks:
#   pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     -d .whl --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \
#     --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
#     mlflow-skinny==3.17.2 sqlalchemy alembic mako sqlparse 'cachetools<8' \
#     'importlib-metadata<10' pydantic pydantic-core annotated-types typing-inspection fastapi \
#     starlette opentelemetry-api opentelemetry-sdk opentelemetry-proto \
#     opentelemetry-semantic-conventions databricks-sdk google-auth pyasn1 pyasn1-modules \
#     cryptography cffi pycparser typing-extensions greenlet
# then carry `.whl`; the wheels are installed into /tmp/site below.  Each section ends well inside
# the device tool's 10-minute limit per command, so they can also be run as separate calls.
# At most 8 files come back from the device tool: the summary, one log per step and the store.
# Then, here: `repro fit-laws --tracking-uri sqlite:///<store> --grid gpu-demo` and `repro report`.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-0}
OUT=${OUT:-$PWD/gpu-checks}
sections=("${@:-bench bf16 grid}")
read -r -a sections <<< "${sections[*]}"
for section in "${sections[@]}"; do  # before anything runs: a typo must not cost a 10-minute grid first
  case $section in bench|bf16|grid) ;; *) echo "unknown section '$section': allowed: bench, bf16, grid" >&2; exit 2 ;; esac
done
mkdir -p "$OUT"
if [ -d .whl ] && ! python3 -c "import mlflow" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "could not install the carried wheels" >&2; exit 2; }
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
# A fresh store and data folder per call: the timings are for a cold grid (and the store copied
# below is the one the grid wrote, whatever the caller's environment points at).
export REPRO_HOME=${REPRO_HOME:-$(mktemp -d /tmp/repro-gpu.XXXX)}
unset REPRO_TRACKING_URI REPRO_DATA_DIR
summary=$OUT/summary.txt
: > "$summary"
failed=0

# step NAME CMD...: run CMD, keep its log as $OUT/NAME.log and its wall time and exit status in the summary.
step() { step_into "$1" "$@"; }

# step_into LOG NAME CMD...: as step, with CMD's output in $OUT/LOG.log, which several steps of one
# call share (started afresh by the first): fewer files to return.
declare -A started_logs=()
step_into() {
  local log=$OUT/$1.log name=$2; shift 2
  local start=$SECONDS lines=0
  echo "== $name: $*" | tee -a "$summary"
  if [ -n "${started_logs[$log]:-}" ]; then lines=$(wc -l < "$log"); else : > "$log"; started_logs[$log]=1; fi
  { [ "$lines" = 0 ] || echo "== $name: $*"; "$@"; } >> "$log" 2>&1
  local rc=$?
  [ "$rc" = 0 ] || failed=1
  tail -n +"$((lines + 1))" "$log" | tail -n 40
  echo "== $name: exit $rc, wall $((SECONDS - start)) s" | tee -a "$summary"
}

{ python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__,
  'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nproc; } 2>&1 | tee -a "$summary"

grid=gpu-demo
if [ "$SMOKE" = 1 ]; then
  grid=$REPRO_HOME/smoke-grid.toml  # same shape as gpu-demo, tiny: 2 sizes, 2 N, 2 shifts, 3 arms, 2 LRs, 1 seed
  cat > "$grid" <<'EOF'
label = "gpu-checks-smoke"
resolution = 16
models = ["xxs", "xs"]
n_train = [8, 16]
arms = ["scratch", "transfer", "zero_shot"]
lrs = [1e-3, 3e-3]
seeds = [0]
batch_size = 8
[upstream]
n_train = 32
n_val = 16
n_test = 16
[downstream]
n_train = 16
n_val = 16
n_test = 16
[pretrain]
epochs = 2
lr = 1e-3
[finetune]
steps = 4
min_epochs = 1
max_epochs = 4
[[shifts]]
upstream = "poisson(1,5)"
downstream = "poisson(5,10)"
[[shifts]]
upstream = "advdiff(0.2,1)"
downstream = "advdiff(1,2)"
EOF
fi

for section in "${sections[@]}"; do
  case $section in
    bench)
      if [ "$SMOKE" = 1 ]; then
        step bench_generate python3 benchmarks/bench_generate.py --device "$DEVICE" --resolution 32 --n-ref 2 --n-batched 64
        step bench_train python3 benchmarks/bench_train.py --device "$DEVICE" --resolution 16 --sizes xxs --steps 1 --no-compile
      else
        step bench_generate python3 benchmarks/bench_generate.py --device "$DEVICE"
        # --no-compile: torch.compile (Triton) of 8 rungs at 128^2 has never been timed and could eat
        # the device budget; time it on its own (--sizes m,l --sections ladder) when a device allows.
        step bench_train python3 benchmarks/bench_train.py --device "$DEVICE" --no-compile
      fi ;;
    bf16)
      smoke=; [ "$SMOKE" = 1 ] && smoke=--smoke
      step_into bench_train bf16 python3 benchmarks/bench_train.py --device "$DEVICE" --sections bf16 $smoke
      sed -n '/^bf16 vs fp32/,/^  fp32 /p' "$OUT/bench_train.log" >> "$summary" ;;  # the verdict, at a glance
    grid)
      step grid_estimate python3 -m repro run-grid --grid "$grid" --device "$DEVICE" --dry-run
      step grid python3 -m repro run-grid --grid "$grid" --device "$DEVICE"
      step grid_status python3 -m repro status --grid "$grid"
      rm -f "$OUT/mlflow.db" "$OUT/mlflow.db.gz"
      step export python3 -m repro export --grid "$grid" --to "$OUT/mlflow.db"
      gzip -f "$OUT/mlflow.db" && ls -la "$OUT/mlflow.db.gz" | tee -a "$summary" ;;
  esac
done
echo "summary: $summary"
cat "$summary"
exit "$failed"  # non-zero when any step failed (each step's log is under $OUT)
