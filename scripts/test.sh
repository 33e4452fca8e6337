#!/usr/bin/env bash
# Runs the test suite on the CPU; sets up .venv first. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# one BLAS/OpenMP thread per test process: pytest runs two processes on two cores, and
# oversubscribed OpenMP threads spin against each other (10x slower tests)
export CUDA_VISIBLE_DEVICES="" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
# glibc: keep freed memory instead of returning it to the kernel after every large tensor;
# the mmap/munmap churn otherwise costs CPU training steps about half their time
export MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824
# --no-loadscope-reorder: files run in collection order (tests/conftest.py puts the minute-long ones
# first); xdist would otherwise order them by test count, which leaves the one-test demo file for last
exec .venv/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder "$@"
