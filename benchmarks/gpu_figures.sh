#!/usr/bin/env bash
# Every figure of the project that needs a GPU, in one run of about 9 minutes on one
# H100/H200, in the order of the issue (each written to OUT as soon as it is measured):
#
#   (a) IRR on Llama-2-7B shapes, random weights: Fisher on 128 samples + recalibration of all
#       linears on 128 samples (goal: <= 5 min, <= 24 GiB GPU memory);
#   (b) the real-model demo's wall time on one GPU (goal: <= 3 min);
#   (c) HF vs vLLM generation throughput on a 7B shape, only if vLLM installs in the time left.
#
#   bash benchmarks/gpu_figures.sh OUT            # on the GPU machine
#   bash benchmarks/gpu_figures.sh OUT --tiny     # the same steps at tiny shapes (CPU check)
#
# Each step has its own time limit, so one slow step cannot eat the others' time; OUT/summary.md
# collects one line per step (exit code, seconds) and each step's output is OUT/<step>.log.
set -u
OUT=${1:?usage: gpu_figures.sh OUT [--tiny]}
TINY=${2:-}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
echo "# GPU figures ($(date -u +%FT%TZ), $(nvidia-smi -L 2>/dev/null | head -1 || echo 'no GPU'))" >"$SUMMARY"

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "- $name: exit $rc, $((SECONDS - start)) s (limit $limit s)" | tee -a "$SUMMARY"
  tail -n 25 "$OUT/$name.log" >>"$SUMMARY"
}

if [ -n "$TINY" ]; then
  IRR_ARGS=(--shape small --fisher-samples 4 --calib-samples 4 --seq-len 32)
  DEMO_ARGS=(--world toy --fast)
  GEN_ARGS=(--shape small --batch-sizes 1,4 --new-tokens 8 --batches 1)
  LIMITS=(240 240 120)
else
  IRR_ARGS=(--shape llama-7b)
  DEMO_ARGS=()
  GEN_ARGS=(--shape llama-7b)
  LIMITS=(330 200 150)
fi

python3 -c "import realignkit" 2>/dev/null || python3 -m pip install -q -e . >"$OUT/install.log" 2>&1

# (a) IRR at 7B shapes: Fisher, then recalibration in both mask selections
step irr "${LIMITS[0]}" python3 benchmarks/bench_irr.py "${IRR_ARGS[@]}" --modes fixed,adaptive

# (b) the real-model demo on one GPU (stages cached under OUT/demo; a rerun resumes)
step demo "${LIMITS[1]}" realignkit demo --out "$OUT/demo" "${DEMO_ARGS[@]}"

# (c) HF vs vLLM generation throughput, if vLLM installs in the time left
if [ -z "$TINY" ]; then
  timeout 120 python3 -m pip install -q vllm >"$OUT/vllm-install.log" 2>&1 \
    && echo "- vllm installed" >>"$SUMMARY" || echo "- vllm did not install in 120 s" >>"$SUMMARY"
fi
step generate "${LIMITS[2]}" python3 benchmarks/bench_generate.py "${GEN_ARGS[@]}"
echo "done: $SUMMARY"
