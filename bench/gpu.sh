#!/usr/bin/env bash
# One GPU, one pass of at most 9.5 minutes (the per-stage timeouts add up to 570 s, model builds
# included): the score backends (similarity), every training-speed option as an A/B against the
# eager baseline at the paper preset B=16 (steps), the best checked option with selective
# checkpointing at the largest batch that fits (bigbatch), a small shard set (shards) and a short
# real train.py run at the best setting with the loader (train: items/s and data-wait share from
# summary.json). Everything lands in OUT_DIR; name stages to run only those.
# Usage (on a GPU machine with torch/transformers/peft/accelerate installed):
#   bash bench/gpu.sh [OUT_DIR] [similarity] [steps] [bigbatch] [shards] [train]
set -uo pipefail
out=${1:-${OUT:-/tmp/gpu-bench}}
shift || true
stages=" ${*:-similarity steps bigbatch shards train} "
want() { [[ "$stages" == *" $1 "* ]]; }
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
py=${PYTHON:-python3}
timeout 5 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
timeout 5 "$py" -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" | tee -a "$out/gpu.txt"

if want similarity; then
echo "== similarity: naive vs blocked vs fused (Triton) score backends, bf16 and fp32 =="
# each backend in its own process: time and peak memory of fwd+bwd, ratios to the naive einsum; the
# fused kernels compile and autotune once per shape (a few seconds) in the untimed warm-up step
timeout 120 "$py" bench/similarity.py --device cuda --dtype bfloat16 --batch-sizes 64 128 2>&1 | tee "$out/similarity.txt"
timeout 60 "$py" bench/similarity.py --device cuda --dtype float32 --batch-sizes 64 2>&1 | tee -a "$out/similarity.txt"
fi

if want steps; then
echo "== training steps, paper preset (random weights, dropout off), bf16, B=16: each option vs the baseline =="
# rows print as they finish, compiled variants last (each compiles HuBERT-Large and the ViT once):
# if the timeout cuts the stage, the earlier rows and their JSON records stand
rm -f "$out/train_step.jsonl"
timeout 190 "$py" bench/train_step.py --preset paper --device cuda --batch-size 16 --steps 4 --warmup 1 \
  --json "$out/train_step.jsonl" 2>&1 | tee "$out/train_step.txt"
fi

if want bigbatch; then
echo "== the best checked option + checkpointing of HuBERT's conv front end, growing batches until out of memory =="
timeout 60 "$py" bench/train_step.py --preset paper --device cuda --batch-size 32 48 --steps 3 --warmup 1 \
  --variants best --best-from "$out/train_step.jsonl" --set gradient_checkpointing=front_end --until-oom \
  --json "$out/train_step_bigbatch.jsonl" 2>&1 | tee -a "$out/train_step.txt"
fi

if want shards || want train; then
echo "== shards for the train stage (bench/loader.py builds them; its short loader figures come along) =="
MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824 timeout 40 "$py" bench/loader.py --speech 64 \
  --sound 32 --items 128 --batch-size 16 --rounds 1 --out /tmp/bench-loader 2>&1 | tee "$out/loader.txt"
fi

if want train; then
best=$(timeout 10 "$py" bench/train_step.py --print-best "$out/train_step.jsonl" 2>/dev/null)
echo "== train.py: paper preset (random weights), bf16, real loader, 25 steps, best setting: ${best:-the paper config} =="
# no warm-up stage: one stage, one compiled graph set; items/s and data wait leave out the first step
timeout 80 "$py" train.py --config configs/paper.yaml model.pretrained=false $best data.speech=/tmp/bench-loader/speech \
  data.sound=/tmp/bench-loader/sound data.batch_size=16 data.num_workers=12 data.shuffle_buffer=200 \
  steps=25 warmup_steps=0 log_every=5 ckpt_every=0 out_dir=/tmp/gpu-run 2>&1 | tr '\r' '\n' | grep -v "it/s]$" | tee "$out/train.txt"
cp /tmp/gpu-run/summary.json "$out/train_summary.json" 2>/dev/null && cat "$out/train_summary.json" | tee -a "$out/train.txt"
fi
