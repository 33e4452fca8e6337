#!/usr/bin/env bash
# The built-in demo, end to end on the CPU with no downloads:
#   1. generate the audio-visual world (prep synthetic) in the real shard and test-set formats,
#   2. pretrain the small HuBERT without labels (pretrain_audio.py; the paper starts from a
#      self-supervised HuBERT),
#   3. train the demo preset with `accelerate launch train.py` (warm-up, then the full objective),
#   4. evaluate every table of the paper with evaluate.py,
#   5. print the tables and check that both heads learned to localize their audio type.
#
#   bash scripts/demo.sh              # the method (about 10 minutes on 2 cores after installation)
#   bash scripts/demo.sh --ablation   # then: train the same model without L_dis and compare disentanglement
#                                     # (Tables 6-7 in miniature); reuses the first command's model
#
# Environment (for smaller or relocated runs, e.g. the test suite's CI-sized run):
#   DEMO_WORLD=shards/synthetic DEMO_SIZE=demo DEMO_RUNS=runs DEMO_PRETRAIN_STEPS=600
#   DEMO_TRAIN_ARGS="steps=200 ..."   extra train.py overrides
#   DEMO_REPORT_ARGS="--min-ratio 1"  extra scripts/demo_report.py options
set -euo pipefail
cd "$(dirname "$0")/.."
ablation=0
for arg in "$@"; do
  case "$arg" in
    --ablation) ablation=1 ;;
    *) echo "unknown argument $arg (known: --ablation)" >&2; exit 2 ;;
  esac
done

bash scripts/setup.sh
export CUDA_VISIBLE_DEVICES="" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# glibc: keep freed memory instead of returning it to the kernel after every large tensor;
# the mmap/munmap churn otherwise costs CPU training steps about half their time
export MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824
py=.venv/bin/python
world=${DEMO_WORLD:-shards/synthetic}
runs=${DEMO_RUNS:-runs}
read -r -a train_args <<< "${DEMO_TRAIN_ARGS:-}"
read -r -a report_extra <<< "${DEMO_REPORT_ARGS:-}"

echo "== 1/5 generating the world in $world"
.venv/bin/prep synthetic --out "$world" --size "${DEMO_SIZE:-demo}" --seed 0

train() {  # out_dir, extra overrides...
  local out=$1; shift
  rm -rf "$out"
  .venv/bin/accelerate launch --num_processes 1 --num_machines 1 --cpu --mixed_precision no --dynamo_backend no \
    train.py --config configs/demo.yaml data.speech="$world/speech/train" data.sound="$world/sound/train" \
    audio_init="$runs/audio_init.safetensors" out_dir="$out" "${train_args[@]}" "$@"
}

evaluate() {  # checkpoint, out_dir, subcommand...
  local ckpt=$1 out=$2; shift 2
  $py evaluate.py --checkpoint "$ckpt" --out "$out" --overlays 3 --batch-size 32 "$@" \
    --is3 "$world/is3" --ade-speech "$world/ade20k/ADE20KSpeechPrompted" --ade-sound "$world/ade20k/ADE20KSoundPrompted" \
    --places "$world/speech/val" --audioset "$world/sound/val" --pairs 200
}

if [ "$ablation" = 1 ] && [ -f "$runs/demo/eval/results.json" ] && [ -f "$runs/audio_init.safetensors" ]; then
  echo "== 2-4/5 reusing the trained model in $runs/demo (delete it to retrain)"
else
  echo "== 2/5 pretraining the audio backbone (masked prediction of MFCC clusters, no labels)"
  $py pretrain_audio.py --config configs/demo.yaml --shards "$world/speech/train,$world/sound/train" \
    --out "$runs/audio_init.safetensors" --steps "${DEMO_PRETRAIN_STEPS:-600}" "${train_args[@]}"
  echo "== 3/5 training $runs/demo (warm-up on L_cor, then L_cor + L_dis + regularizers)"
  train "$runs/demo"
  echo "== 4/5 evaluating $runs/demo/final"
  rm -rf "$runs/demo/eval"
  evaluate "$runs/demo/final" "$runs/demo/eval" all
fi
report_args=("$runs/demo/eval" "$world" "${report_extra[@]}")

if [ "$ablation" = 1 ]; then
  echo "== ablation: training $runs/demo_no_dis without L_dis"
  train "$runs/demo_no_dis" loss.disentanglement=0
  rm -rf "$runs/demo_no_dis/eval"
  evaluate "$runs/demo_no_dis/final" "$runs/demo_no_dis/eval" all
  report_args+=(--ablation "$runs/demo_no_dis/eval")
fi

echo "== 5/5 results"
$py scripts/demo_report.py "${report_args[@]}"

# The model on files of your own: one generated Extended-IS3 image with two objects, the first
# object's sound mixed with the spoken name of the second (the sound head should find the first,
# the speech head the second).
first=("$world"/is3/audio_wav/*.wav)
pair=$(basename "${first[0]}" .wav); pair=${pair%_*}        # <classA>_<classB>_<id>
object_a=${pair%%_*}; rest=${pair#*_}; object_b=${rest%%_*}
echo "== ground: $world/is3/images/${pair}_${object_a}.jpg with the sound of the $object_a and the spoken name of the $object_b"
.venv/bin/ground --checkpoint "$runs/demo/final" --image "$world/is3/images/${pair}_${object_a}.jpg" \
  --audio "$world/is3/audio_wav/${pair}_${object_a}.wav" --audio "$world/is3/speech_wav/${pair}_${object_b}.wav" \
  --out "$runs/demo/ground" --no-progress   # prints where the overlays, the MP4 and result.json are
