#!/usr/bin/env bash
# The demo's figures across what changes them without changing the method: the training seed, and
# the float rounding of another machine. Every condition is the demo's own run (scripts/lib.sh:
# audio pretraining, training, evaluation) with one thing changed:
#   seed1, seed2          training seed 1 or 2 (the demo's audio start)
#   start_threads2        the audio start pretrained at 2 threads (the demo: the cores less one; on 2 cores, 1)
#   avx2                  every step with ATEN_CPU_CAPABILITY=avx2: the vector kernels of a CPU without
#                         AVX-512 (the project's machine has it; check with
#                         python -c "import torch; print(torch.backends.cpu.get_cpu_capability())")
#   avx2_start_threads2   both
# The demo's run (runs/demo, seed 0) is the base row; run scripts/demo.sh first. Training itself gives
# the same weights at any thread count (docs/ablation.md), so only the start's thread count is varied.
# Then scripts/spread_report.py prints a row per condition and the spread over seeds, over machine
# conditions, and over both.
#
#   bash scripts/spread.sh            # 5 runs, 2 at a time at 1 thread each (beside other jobs on 2 cores: ~30 min a run)
#   bash scripts/spread.sh --jobs 1
#
# Resumable: a condition whose evaluation finished is kept (runs/spread/<condition>/demo/eval); delete
# it to run it again. Environment: scripts/lib.sh's, and
#   SPREAD_DIR=runs/spread  SPREAD_CONDITIONS="seed1 seed2 start_threads2 avx2 avx2_start_threads2"
set -euo pipefail
cd "$(dirname "$0")/.."
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
jobs=$(( cores >= 2 ? 2 : 1 ))
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
    --jobs=*) jobs=${1#--jobs=}; shift ;;
    *) echo "unknown argument $1 (known: --jobs N)" >&2; exit 2 ;;
  esac
done
if ! [[ "$jobs" =~ ^[1-9][0-9]*$ ]]; then echo "--jobs takes a whole number >= 1, got $jobs" >&2; exit 2; fi

source scripts/lib.sh
out=${SPREAD_DIR:-$runs/spread}
read -r -a conditions <<< "${SPREAD_CONDITIONS:-seed1 seed2 start_threads2 avx2 avx2_start_threads2}"
base=$runs/demo
if [ ! -f "$base/eval/results.json" ] || [ ! -f "$runs/audio_init.safetensors" ]; then
  echo "error: $base/eval/results.json or $runs/audio_init.safetensors is missing: run bash scripts/demo.sh first" >&2
  exit 2
fi

run_condition() {  # one condition, in a subshell of its own (its environment and runs directory)
  local cond=$1 dir=$out/$1 seed=0
  if [ -f "$dir/demo/eval/results.json" ]; then echo "== $cond: reusing $dir"; return; fi
  case "$cond" in
    seed[0-9]*) seed=${cond#seed} ;;
    start_threads2) export DEMO_PRETRAIN_THREADS=2 ;;
    avx2) export ATEN_CPU_CAPABILITY=avx2 ;;
    avx2_start_threads2) export ATEN_CPU_CAPABILITY=avx2 DEMO_PRETRAIN_THREADS=2 ;;
    *) echo "unknown condition $cond (known: seedN start_threads2 avx2 avx2_start_threads2)" >&2; return 2 ;;
  esac
  export OMP_NUM_THREADS=1  # the runs go side by side; the start's thread count is DEMO_PRETRAIN_THREADS
  mkdir -p "$dir"
  local demo_start=$runs
  runs=$dir  # lib.sh's pretrain_audio and train read and write the start under $runs
  if [ "$cond" = "seed$seed" ]; then
    ln -sfn "$(realpath "$demo_start/audio_init.safetensors")" "$dir/audio_init.safetensors"
  else
    echo "== $cond: pretraining the audio start"
    pretrain_audio
  fi
  echo "== $cond: training and evaluating"
  train "$dir/demo" seed="$seed"
  evaluate "$dir/demo/final" "$dir/demo/eval.partial" --no-progress all
  mv "$dir/demo/eval.partial" "$dir/demo/eval"  # a condition counts as done only with its whole evaluation
}

echo "== spread: ${conditions[*]} into $out, $jobs at a time"
make_world
for cond in "${conditions[@]}"; do
  case "$cond" in seed[0-9]*|start_threads2|avx2|avx2_start_threads2) ;; *)
    echo "unknown condition $cond (known: seedN start_threads2 avx2 avx2_start_threads2)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
started=$(date +%s)
pids=()
for ((lane = 0; lane < jobs; lane++)); do
  (
    for ((i = lane; i < ${#conditions[@]}; i += jobs)); do
      # not `( ... ) || ...`: errexit is off inside a subshell that is part of an || list
      set +e
      (set -e; run_condition "${conditions[$i]}") > "$out/${conditions[$i]}.log" 2>&1
      rc=$?
      set -e
      if [ "$rc" != 0 ]; then echo "== ${conditions[$i]} failed: see $out/${conditions[$i]}.log" >&2; exit 1; fi
      echo "== ${conditions[$i]} done ($(( ($(date +%s) - started) / 60 )) min)"
    done
  ) &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || exit 1
echo "== spread: $(( ($(date +%s) - started) / 60 )) min in this call"
$py scripts/spread_report.py "$base" "$out" --world "$world" --conditions "${conditions[@]}"
