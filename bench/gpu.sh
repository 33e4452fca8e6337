#!/usr/bin/env bash
# One GPU, one pass: the similarity benchmark in bf16, full paper-preset training steps at several
# batch sizes, the loader on 16 cores (finishing batches on the GPU), and a short real train.py
# run (bf16, loader, checkpoints). All stages take about 15 minutes; name some to run only those.
# Usage (on a GPU machine with torch/transformers/peft/accelerate installed):
#   bash bench/gpu.sh [OUT_DIR] [similarity] [steps] [steps32] [loader] [train]
set -uo pipefail
out=${1:-${OUT:-/tmp/gpu-bench}}
shift || true
stages=" ${*:-similarity steps steps32 loader train} "
want() { [[ "$stages" == *" $1 "* ]]; }
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$py" -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" | tee -a "$out/gpu.txt"

if want similarity; then
echo "== similarity: naive vs blocked vs fused (Triton) score backends, bf16 and fp32 =="
# each backend in its own process: time and peak memory of fwd+bwd, ratios to the naive einsum; the
# fused kernels compile and autotune once per shape (a few seconds) in the untimed warm-up step
timeout 120 "$py" bench/similarity.py --device cuda --dtype bfloat16 --batch-sizes 64 128 2>&1 | tee "$out/similarity.txt"
timeout 60 "$py" bench/similarity.py --device cuda --dtype float32 --batch-sizes 64 2>&1 | tee -a "$out/similarity.txt"
fi

if want steps; then
echo "== full training steps, paper preset (random weights), bf16 =="
# each batch size with transformers' conv front end and the channels-last one, in the same run
timeout 300 "$py" bench/train_step.py --preset paper --device cuda --batch-size 8 16 --steps 8 --warmup 3 --count-flops \
  --audio-channels-last both 2>&1 | tee "$out/train_step.txt"
fi
if want steps32; then
# B=32 does not fit 80 GB without activation checkpointing
timeout 200 "$py" bench/train_step.py --preset paper --device cuda --batch-size 32 --steps 4 --warmup 2 --gradient-checkpointing 2>&1 | tee -a "$out/train_step.txt"
fi

if want loader || want train; then
echo "== loader: 16 cores (the train stage reads its shards) =="
MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824 timeout 180 "$py" bench/loader.py --speech 320 \
  --sound 160 --batch-size 16 --rounds 1 --out /tmp/bench-loader 2>&1 | tee "$out/loader.txt"
fi

if want train; then
echo "== train.py: paper preset (random weights), bf16, real loader, 30 steps =="
timeout 200 "$py" train.py --config configs/paper.yaml model.pretrained=false data.speech=/tmp/bench-loader/speech \
  data.sound=/tmp/bench-loader/sound data.batch_size=16 data.num_workers=12 data.shuffle_buffer=200 \
  steps=30 warmup_steps=10 log_every=10 ckpt_every=20 out_dir=/tmp/gpu-run 2>&1 | tr '\r' '\n' | grep -v "it/s]$" | tee "$out/train.txt"
cat /tmp/gpu-run/summary.json 2>/dev/null | tee -a "$out/train.txt"
fi
