#!/usr/bin/env bash
# The built-in demo, end to end on the CPU with no downloads:
#   1. generate the audio-visual world (prep synthetic) in the real shard and test-set formats,
#   2. pretrain the small HuBERT without labels (pretrain_audio.py; the paper starts from a
#      self-supervised HuBERT),
#   3. train the demo preset with `accelerate launch train.py` (warm-up, then the full objective),
#   4. evaluate every table of the paper with evaluate.py,
#   5. print the tables and check that both heads learned to localize their audio type.
#
#   bash scripts/demo.sh              # the method (2 cores, after installation: 13-14 min idle, ~40 min beside busy jobs)
#   bash scripts/demo.sh --ablation   # then: the loss ablation with one seed (L_cor only, L_dis only; Tables
#                                     # 1, 6, 7 side by side), reusing the first command's model (~13 min);
#                                     # scripts/ablation.sh runs it over several seeds
#   bash scripts/demo.sh --types 3    # three audio types: the world with music (shards/synthetic_types3) and a
#                                     # K = 3 model (configs/demo_types3.yaml: heads sound, speech, music) in
#                                     # runs/types3/; the default (--types 2) is the two-type demo above
#
# Environment: see scripts/lib.sh (DEMO_WORLD, DEMO_SIZE, DEMO_RUNS, DEMO_PRETRAIN_STEPS, DEMO_PRETRAIN_THREADS,
#   DEMO_TRAIN_ARGS, DEMO_TYPES; each step leaves one core free unless OMP_NUM_THREADS says otherwise), and
#   DEMO_REPORT_ARGS="--min-ratio 1"  extra scripts/demo_report.py options
set -euo pipefail
cd "$(dirname "$0")/.."
ablation=0
while [ $# -gt 0 ]; do
  case "$1" in
    --ablation) ablation=1; shift ;;
    --types) [ $# -gt 1 ] || { echo "error: --types needs 2 or 3" >&2; exit 2; }; DEMO_TYPES=$2; shift 2 ;;
    --types=*) DEMO_TYPES=${1#--types=}; shift ;;
    *) echo "unknown argument $1 (known: --ablation, --types 2|3)" >&2; exit 2 ;;
  esac
done
DEMO_TYPES=${DEMO_TYPES-2}
if [ "$DEMO_TYPES" != 2 ] && [ "$DEMO_TYPES" != 3 ]; then
  echo "error: --types $DEMO_TYPES: the generated world has 2 audio types (speech, sound) or 3 (and music)" >&2; exit 2
fi
if [ "$ablation" = 1 ] && [ "$DEMO_TYPES" != 2 ]; then
  echo "error: --ablation is the two-type demo's (scripts/ablation.sh); leave out --types $DEMO_TYPES" >&2; exit 2
fi
export DEMO_TYPES

source scripts/lib.sh
read -r -a report_extra <<< "${DEMO_REPORT_ARGS:-}"

echo "== 1/5 generating the world in $world"
make_world

if [ "$ablation" = 1 ] && [ -f "$runs/demo/eval/results.json" ] && [ -f "$runs/audio_init.safetensors" ]; then
  echo "== 2-4/5 reusing the trained model in $runs/demo (delete it to retrain)"
else
  echo "== 2/5 pretraining the audio backbone (masked prediction of MFCC clusters, no labels)"
  pretrain_audio --again
  echo "== 3/5 training $runs/demo (warm-up on L_cor, then L_cor + L_dis + regularizers)"
  train "$runs/demo"
  echo "== 4/5 evaluating $runs/demo/final"
  rm -rf "$runs/demo/eval"
  evaluate "$runs/demo/final" "$runs/demo/eval" --overlays 3 all
fi

echo "== 5/5 results"
$py scripts/demo_report.py "$runs/demo/eval" "$world" "${report_extra[@]}"

if [ "$ablation" = 1 ]; then
  echo "== ablation, one seed: L_cor only and L_dis only next to this model (scripts/ablation.sh)"
  ABLATION_REUSE_METHOD="$runs/demo" exec bash scripts/ablation.sh --seeds 1
fi

# The model on files of your own: one generated Extended-IS3 image with two objects, one object's
# sound mixed with the spoken name of the other (the sound head should find the first, the speech
# head the second). The pair is chosen by a rule, not by looks: the median of Table 1's cross pairs
# by the mean of the two heads' own APs (scripts/demo_example.py prints the rule and the pair's APs).
echo "== ground: the median pair of Table 1"
example=$($py scripts/demo_example.py "$runs/demo/eval" "$world/is3")   # image, sound, speech: one a line
mapfile -t example <<< "$example"
.venv/bin/ground --checkpoint "$runs/demo/final" --image "${example[0]}" --audio "${example[1]}" \
  --audio "${example[2]}" --out "$runs/demo/ground" --no-progress   # prints where the overlays, the MP4 and result.json are
