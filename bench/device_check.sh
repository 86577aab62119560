#!/usr/bin/env bash
# The GPU table on one H200, as three steps (each with its own time limit and its own JSON):
#   inference   bench/inference.py --gpu: 2:4 semi-structured kernels (to_sparse_semi_structured) vs
#               dense bf16 per LLaMA-2-7B linear at 1, 16, 2048 and 8192 tokens, and a whole
#               LLaMA-2-7B-shape forward (prefill 2048 tokens; one token decoded after 2048) pruned
#               2:4 by magnitude                                                   (about 1 min)
#   cached      bench/gpu_sweep.py --modes cached: the 9-point ATP beta sweep at LLaMA-2-7B shape
#               (random bf16 weights, 128 x 2048 calibration and 161 x 2048 evaluation tokens per
#               point, Wanda, S = 0.7) with cached statistics, and its floor        (about 2.5 min)
#   sequential  the same sweep in the paper-faithful sequential mode               (about 4.5 min)
# Estimates from the measured 34.5k tok/s forward (docs/benchmarks.md). JSON goes to $OUT when it is
# set (the device machine's return folder), else bench/results/.
#
#   bash bench/device_check.sh                    # all three steps (about 8 min)
#   bash bench/device_check.sh cached sequential  # some steps (e.g. one call each under a 10-min limit)
#   bash bench/device_check.sh --tiny             # every step at a tiny shape on the CPU
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PY="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}"
DIR="${OUT:-bench/results}"
mkdir -p "$DIR"
failed=0

step() { # step LIMIT_SECONDS NAME COMMAND...: run with a time limit, log its wall time, keep going
  local limit=$1 name=$2
  shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start))s"
  [[ $rc -eq 0 ]] || failed=1
}

tiny=""
steps=()
for arg in "$@"; do
  case "$arg" in
    --tiny) tiny="--tiny" ;;
    inference | cached | sequential) steps+=("$arg") ;;
    *)
      echo "device_check.sh: unknown argument '$arg'; allowed: --tiny, inference, cached, sequential" >&2
      exit 2
      ;;
  esac
done
[[ ${#steps[@]} -gt 0 ]] || steps=(inference cached sequential)

if [[ -z "$tiny" ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
for name in "${steps[@]}"; do
  case "$name" in
    inference)
      if [[ -n "$tiny" ]]; then
        step 300 "inference (tiny, CPU)" "$PY" bench/inference.py --tiny --out "$DIR/inference_tiny.json"
      else
        step 150 "2:4 inference" "$PY" bench/inference.py --gpu --out "$DIR/inference_gpu.json"
      fi
      ;;
    cached | sequential)
      step "$([[ $name == cached ]] && echo 240 || echo 420)" "$name sweep" \
        "$PY" bench/gpu_sweep.py $tiny --modes "$name" --json "$DIR/gpu_sweep_${name}${tiny:+_tiny}.json"
      ;;
  esac
done
ls -l "$DIR"
exit $failed
