#!/usr/bin/env bash
# The paper's loss ablation in miniature, on the generated world, over several seeds:
#   method     L_cor + L_dis (+ DenseAV's regularizers)    heads named by the config (Eq. 10 fixes them)
#   cor_only   L_cor only: the DenseAV objective           heads named by Pred.Dis (nothing names them)
#   dis_only   L_dis only (the warm-up trains on L_dis)    heads named by the config
#   own_heads  (a diagnostic, not in the default list) the method with L_cor scoring each audio type
#              with its own head instead of the max over heads (docs/ablation.md)
# Every run starts from the same pretrained audio backbone (runs/audio_init.safetensors; pretrained
# once if missing) and differs only in the loss and the training seed (weights, batches, draws).
# Then Table 1 (Extended IS3, mixed audio), Table 6 and Table 7 side by side, mean ± spread over the
# seeds, with the differences that exceed the spread (scripts/ablation_report.py, docs/ablation.md).
#
#   bash scripts/ablation.sh                 # 3 seeds x 3 losses, 2 runs at a time on 2 cores
#   bash scripts/ablation.sh --seeds 5 --jobs 1
#   bash scripts/demo.sh --ablation          # one seed, next to the demo's model (about 13 min after demo.sh)
#
# Resumable: a run whose evaluation finished is kept (runs/ablation/<loss>/seed<N>/eval/results.json);
# delete it to run it again. Copies started side by side share the runs (each takes the next free one). Environment: scripts/lib.sh's, and
#   ABLATION_DIR=runs/ablation        where the runs go
#   ABLATION_LOSSES="method cor_only dis_only"   (add own_heads for the diagnostic)
#   ABLATION_REUSE_METHOD=runs/demo   a finished demo run (seed 0, same config) stands for method seed 0
#   ABLATION_REPORT_ARGS=...          extra scripts/ablation_report.py options
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=3
# the machine's cores: plain nproc honours OMP_NUM_THREADS, which a caller may have set to 1
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
jobs=$(( cores >= 2 ? 2 : 1 ))
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds=${2:?--seeds needs a number}; shift 2 ;;
    --seeds=*) seeds=${1#--seeds=}; shift ;;
    --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
    --jobs=*) jobs=${1#--jobs=}; shift ;;
    *) echo "unknown argument $1 (known: --seeds N, --jobs N)" >&2; exit 2 ;;
  esac
done
for value in "$seeds" "$jobs"; do
  if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
    echo "--seeds and --jobs take a whole number >= 1, got $value" >&2; exit 2
  fi
done

source scripts/lib.sh
out=${ABLATION_DIR:-$runs/ablation}
read -r -a losses <<< "${ABLATION_LOSSES:-method cor_only dis_only}"
read -r -a report_extra <<< "${ABLATION_REPORT_ARGS:-}"

overrides() {  # the train.py overrides of one loss
  case "$1" in
    method) ;;
    cor_only) echo "loss.disentanglement=0" ;;
    dis_only) echo "loss.correspondence=0" ;;
    own_heads) echo "loss.correspondence_heads=own" ;;
    *) echo "unknown loss $1 (known: method cor_only dis_only own_heads)" >&2; return 2 ;;
  esac
}
heads_rule() { [ "$1" = cor_only ] && echo pred-dis || echo config; }
for loss in "${losses[@]}"; do overrides "$loss" > /dev/null; done  # fail before any work

run_all() {  # every run not yet finished nor taken by another copy: train, then evaluate
  local seed loss run extra
  for ((seed = 0; seed < seeds; seed++)); do
    for loss in "${losses[@]}"; do
      run="$out/$loss/seed$seed"
      if [ "$loss" = method ] && [ "$seed" = 0 ] && [ -n "${ABLATION_REUSE_METHOD:-}" ]; then
        mkdir -p "$out/method"
        ln -sfn "$(realpath "$ABLATION_REUSE_METHOD")" "$run"
      fi
      if [ -f "$run/eval/results.json" ]; then
        echo "== $loss seed $seed: reusing $run"
        continue
      fi
      # several copies of this script may share the runs (the --jobs copies): a run is taken by
      # whoever creates its lock first; a lock left by a killed copy: delete $run.lock
      mkdir -p "$out/$loss"
      if ! mkdir "$run.lock" 2> /dev/null; then
        echo "== $loss seed $seed: in progress elsewhere ($run.lock), skipped here"
        continue
      fi
      trap 'rm -rf "$run.lock"' EXIT
      echo "== $loss seed $seed: training $run"
      read -r -a extra <<< "$(overrides "$loss")"
      train "$run" seed="$seed" "${extra[@]}"
      echo "== $loss seed $seed: evaluating (Tables 1, 3, 5, 6; heads: $(heads_rule "$loss"))"
      EVAL_ADE=0 evaluate "$run/final" "$run/eval.partial" --heads "$(heads_rule "$loss")" --no-progress all
      mv "$run/eval.partial" "$run/eval"   # a run counts as done only with its whole evaluation
      rm -rf "$run.lock"; trap - EXIT
    done
  done
}

if [ -n "${ABLATION_WORKER:-}" ]; then  # one of the --jobs copies: its share of the runs; the parent reports
  run_all
  exit 0
fi
echo "== ablation: ${losses[*]} x $seeds seed(s) into $out, $jobs run(s) at a time"
make_world
pretrain_audio
started=$(date +%s)
if [ "$jobs" -gt 1 ]; then
  # the demo's small model does not keep two cores busy, so $jobs runs side by side, with the
  # cores split between them, finish sooner; the same seed gives the same weights at any thread
  # count on one machine (docs/ablation.md). Each copy takes the next free run (the locks above).
  mkdir -p "$out"
  threads=$(( cores / jobs )); [ "$threads" -ge 1 ] || threads=1
  pids=()
  for ((job = 0; job < jobs; job++)); do
    ABLATION_WORKER=1 OMP_NUM_THREADS=$threads bash "$0" --seeds "$seeds" > "$out/job$job.log" 2>&1 &
    pids+=($!)
  done
  echo "   $jobs copies at $threads thread(s) each; their logs: $out/job*.log"
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  if [ "$failed" = 1 ]; then
    echo "a run of the ablation failed: see $out/job*.log" >&2; exit 1
  fi
else
  run_all
fi
echo "== ablation: $(( ($(date +%s) - started) / 60 )) min of training and evaluation in this call"
$py scripts/ablation_report.py "$out" --losses "${losses[@]}" --seeds "$seeds" "${report_extra[@]}"
