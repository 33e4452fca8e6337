# Shared by scripts/demo.sh and scripts/ablation.sh (sourced, not run): the environment, the
# generated world, the audio-backbone pretraining and one training + evaluation of the demo preset.
#
# Environment (for smaller or relocated runs, e.g. the test suite's CI-sized runs):
#   DEMO_WORLD=shards/synthetic DEMO_SIZE=demo DEMO_RUNS=runs DEMO_PRETRAIN_STEPS=600
#   DEMO_TYPES=2                      3: the world with music (prep synthetic --music) and a K = 3 model
#                                     (configs/demo_types3.yaml); its defaults are DEMO_WORLD=shards/synthetic_types3
#                                     and DEMO_RUNS=runs/types3, so the two-type demo's files stay as they are
#   DEMO_TRAIN_ARGS="steps=200 ..."   extra train.py overrides (every run)
#   DEMO_PRETRAIN_THREADS=2           the audio pretraining's CPU threads (default: OMP_NUM_THREADS below); the
#                                     audio start's last bits, and so the demo's figures, depend on it
bash scripts/setup.sh
export CUDA_VISIBLE_DEVICES="" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# glibc: keep freed memory instead of returning it to the kernel after every large tensor;
# the mmap/munmap churn otherwise costs CPU training steps about half their time
export MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824
# a shared machine: each step leaves one core to the rest (unless the caller chose a thread count).
# OpenMP threads wait at every parallel region for the slowest of them, so one whose core another
# process holds stalls every step (docs/training.md, "CPU threads"); the trainer sets its own count.
demo_cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( demo_cores > 1 ? demo_cores - 1 : 1 ))}
py=.venv/bin/python
types=${DEMO_TYPES:-2}
case "$types" in
  2) world=${DEMO_WORLD:-shards/synthetic} runs=${DEMO_RUNS:-runs} config=configs/demo.yaml
     world_args=() ;;
  3) world=${DEMO_WORLD:-shards/synthetic_types3} runs=${DEMO_RUNS:-runs/types3} config=configs/demo_types3.yaml
     world_args=(--music) ;;
  *) echo "error: DEMO_TYPES=$types: the generated world has 2 audio types (speech, sound) or 3 (and music)" >&2
     exit 2 ;;
esac
read -r -a train_args <<< "${DEMO_TRAIN_ARGS:-}"

make_world() {  # the generated world (resumes; the same seed and size give the same files)
  .venv/bin/prep synthetic --out "$world" --size "${DEMO_SIZE:-demo}" --seed 0 "${world_args[@]}"
}

pretrain_audio() {  # the label-free audio start every training run shares, once
  if [ -f "$runs/audio_init.safetensors" ] && [ "${1:-}" != "--again" ]; then
    echo "   reusing $runs/audio_init.safetensors (delete it to pretrain again)"
    return
  fi
  local shards="$world/speech/train,$world/sound/train"
  if [ "$types" = 3 ]; then shards+=",$world/music/train"; fi
  $py pretrain_audio.py --config "$config" --shards "$shards" \
    --out "$runs/audio_init.safetensors" --steps "${DEMO_PRETRAIN_STEPS:-600}" \
    ${DEMO_PRETRAIN_THREADS:+--threads "$DEMO_PRETRAIN_THREADS"} "${train_args[@]}"
}

train() {  # out_dir, extra overrides...
  local out=$1; shift
  local streams=(data.speech="$world/speech/train" data.sound="$world/sound/train")
  if [ "$types" = 3 ]; then  # the typed streams of the config, here in this world
    streams=(data.streams.speech="$world/speech/train" data.streams.sound="$world/sound/train"
             data.streams.music="$world/music/train")
  fi
  rm -rf "$out"
  .venv/bin/accelerate launch --num_processes 1 --num_machines 1 --cpu --mixed_precision no --dynamo_backend no \
    train.py --config "$config" "${streams[@]}" \
    audio_init="$runs/audio_init.safetensors" out_dir="$out" "${train_args[@]}" "$@"
}

evaluate() {  # checkpoint, out_dir, evaluate.py options and subcommand...; on the world's test sets
  # (the ADE20K sets too unless EVAL_ADE=0: the ablation's tables do not use them)
  local ckpt=$1 out=$2; shift 2
  local sets=(--is3 "$world/is3" --places "$world/speech/val" --audioset "$world/sound/val" --pairs 200)
  if [ "${EVAL_ADE:-1}" = 1 ]; then
    sets+=(--ade-speech "$world/ade20k/ADE20KSpeechPrompted" --ade-sound "$world/ade20k/ADE20KSoundPrompted")
  fi
  if [ "$types" = 3 ]; then  # the music retrieval set: Table 3 reports it, Table 6 adds each pair of types
    sets+=(--set music="$world/music/val")
  fi
  $py evaluate.py --checkpoint "$ckpt" --out "$out" --batch-size 32 "$@" "${sets[@]}"
}
