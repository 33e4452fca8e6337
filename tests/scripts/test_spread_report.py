"""scripts/spread_report.py: one row per run and the ranges over seeds, machine conditions and all
runs, on results.json files laid out as scripts/spread.sh writes them (figures chosen by the test)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _results(sound: float, speech: float, other: float, pred_dis: float) -> dict:
    def ap(value: float) -> dict:
        return {"mAP": value, "mIoU": 0.1}

    cross = {"sound": ap(sound), "speech": ap(speech), "opposite_head": {"sound": ap(other), "speech": ap(other)}}
    return {
        "table1": {"results": {"cross": cross}},
        "table2": {"results": {"speech": {"head": ap(speech + 0.1), "total": ap(0.6)}}},
        "table6": {"results": {"disentanglement": {"pred_dis": pred_dis}}},
    }


def _write(path: Path, results: dict) -> None:
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(results))


def test_rows_and_ranges_over_seeds_and_machine_conditions(tmp_path):
    world = tmp_path / "world"
    world.mkdir()
    (world / "world.json").write_text(json.dumps({"sets": {"is3": {"mean_mask_share": 0.05}}}))
    _write(tmp_path / "demo" / "eval", _results(0.60, 0.30, 0.10, 0.80))
    _write(tmp_path / "spread" / "seed1" / "demo" / "eval", _results(0.70, 0.20, 0.12, 0.70))
    _write(tmp_path / "spread" / "avx2" / "demo" / "eval", _results(0.65, 0.08, 0.12, 0.60))  # speech < 2x chance
    args = [str(tmp_path / "demo"), str(tmp_path / "spread"), "--world", str(world), "--conditions", "seed1", "avx2"]
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "spread_report.py"), *args], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    label = lambda line: line.split(" | ")[0].strip("| ").replace("**", "").split(" (")[0]  # noqa: E731
    rows = {label(line): line for line in run.stdout.splitlines() if line.startswith("|")}
    assert rows["training seed 1"].startswith("| training seed 1 | 70.0 | 20.0 | 12.0 | 12.0 | 30.0 | 60.0 | 70.0 |")
    assert rows["ATEN_CPU_CAPABILITY=avx2"].endswith("| FAILS |")
    assert "| [60.0, 70.0] | [20.0, 30.0] |" in rows["over seeds"] and rows["over seeds"].endswith("2 of 2 pass |")
    assert "| [60.0, 65.0] | [8.0, 30.0] |" in rows["over machine conditions"]
    assert rows["over all runs"].endswith("2 of 3 pass |")
    saved = json.loads((tmp_path / "spread" / "spread.json").read_text())
    assert set(saved["runs"]) == {"base", "seed1", "avx2"} and saved["runs"]["avx2"]["check"] is False
    missing = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "spread_report.py"), *args[:-1], "seed2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "seed2" in missing.stderr and "scripts/spread.sh" in missing.stderr
