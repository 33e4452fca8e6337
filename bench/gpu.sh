#!/usr/bin/env bash
# One GPU, one pass: the similarity benchmark in bf16, full paper-preset training steps at several
# batch sizes, the loader on 16 cores, and a short real train.py run (bf16, loader, checkpoints).
# Usage (on a GPU machine with torch/transformers/peft/accelerate installed):
#   bash bench/gpu.sh [OUT_DIR]
set -uo pipefail
out=${1:-${OUT:-/tmp/gpu-bench}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$py" -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" | tee -a "$out/gpu.txt"

echo "== similarity: blocked vs naive, bf16 and fp32 =="
timeout 150 "$py" bench/similarity.py --device cuda --dtype bfloat16 --batch-sizes 16 64 128 2>&1 | tee "$out/similarity.txt"
timeout 90 "$py" bench/similarity.py --device cuda --dtype float32 --batch-sizes 64 2>&1 | tee -a "$out/similarity.txt"

echo "== full training steps, paper preset (random weights), bf16 =="
timeout 240 "$py" bench/train_step.py --preset paper --device cuda --batch-size 8 16 --steps 8 --warmup 3 2>&1 | tee "$out/train_step.txt"
# B=32 does not fit 80 GB without activation checkpointing
timeout 200 "$py" bench/train_step.py --preset paper --device cuda --batch-size 32 --steps 4 --warmup 2 --gradient-checkpointing 2>&1 | tee -a "$out/train_step.txt"

echo "== loader: 16 cores =="
timeout 150 "$py" bench/loader.py --speech 320 --sound 160 --batch-size 16 --out /tmp/bench-loader 2>&1 | tee "$out/loader.txt"

echo "== train.py: paper preset (random weights), bf16, real loader, 30 steps =="
timeout 200 "$py" train.py --config configs/paper.yaml model.pretrained=false data.speech=/tmp/bench-loader/speech \
  data.sound=/tmp/bench-loader/sound data.batch_size=16 data.num_workers=12 data.shuffle_buffer=200 \
  steps=30 warmup_steps=10 log_every=10 ckpt_every=20 out_dir=/tmp/gpu-run 2>&1 | tr '\r' '\n' | grep -v "it/s]$" | tee "$out/train.txt"
cat /tmp/gpu-run/summary.json 2>/dev/null | tee -a "$out/train.txt"
