"""The browser test never disappears silently in CI: without chromium it is skipped with its reason
outside CI and fails under CI=true (a real pytest run of tests/ground/test_serve.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_browser_test(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS")}
    env["CHROMIUM_BINARY"] = str(tmp_path / "no-chromium")
    if ci is not None:
        env["CI"] = ci
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        "tests/ground/test_serve.py",
        "-k",
        "test_page_refuses_missing_and_silent_audio",
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize(
    "ci, rc, words",
    [
        (None, 0, "1 skipped"),
        ("true", 1, "CI must run the browser test: .ci/run installs chromium"),
    ],
)
def test_missing_chromium_skips_outside_ci_and_fails_in_ci(tmp_path, ci, rc, words):
    result = _run_browser_test(tmp_path, ci)
    assert result.returncode == rc, result.stdout[-3000:] + result.stderr[-3000:]
    assert words in result.stdout and "no-chromium (apt-get install chromium)" in result.stdout
