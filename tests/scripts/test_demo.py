"""The README's first command, CI-sized: generate -> train -> evaluate -> report, through scripts/demo.sh."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # about 4 min alone; each of its two scripts has 1,200 s (below)
def test_demo_script_end_to_end_on_a_ci_sized_world(tmp_path):
    env = {
        **os.environ,
        "DEMO_WORLD": str(tmp_path / "world"),
        "DEMO_SIZE": "ci",
        "DEMO_RUNS": str(tmp_path / "runs"),
        "DEMO_PRETRAIN_STEPS": "100",
        # CI-sized: a short run; the full demo trains longer (configs/demo.yaml)
        "DEMO_TRAIN_ARGS": "steps=150 warmup_steps=20 data.shuffle_buffer=100 ckpt_every=0 log_every=25",
        # CI-sized check: both heads beat the chance level (the demo itself requires 2x and more)
        "DEMO_REPORT_ARGS": "--min-ratio 1.0 --no-compare-heads",
    }
    result = subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Table 1" in result.stdout and "Does the method learn?" in result.stdout

    results = json.loads((tmp_path / "runs" / "demo" / "eval" / "results.json").read_text())
    world = json.loads((tmp_path / "world" / "world.json").read_text())
    chance = world["sets"]["is3"]["mean_mask_share"]
    cross = results["table1"]["results"]["cross"]
    assert cross["sound"]["mAP"] > chance and cross["speech"]["mAP"] > chance
    for table in ("table2", "table3", "table4", "table5", "table6"):
        assert table in results, f"{table} missing from results.json"
    summary = json.loads((tmp_path / "runs" / "demo" / "summary.json").read_text())
    assert summary["step"] == 150 and summary["bad_steps_total"] == 0
    assert list((tmp_path / "runs" / "demo" / "eval" / "overlays").glob("*.png"))
    grounded = json.loads((tmp_path / "runs" / "demo" / "ground" / "result.json").read_text())  # the last step
    assert set(grounded["heads"]) == {"sound", "speech", "total"} and "runs/demo/ground/overlays.png" in result.stdout
    pretrain = json.loads((tmp_path / "runs" / "audio_init.json").read_text())
    assert pretrain["steps"] == 100 and pretrain["loss_last"] < pretrain["loss_first"]

    # the second command of the README's ablation line: one seed of each loss next to the demo's model.
    # What is checked here is the mechanics (reuse, two copies, locks, the report), not the figures, so
    # its two new runs are shorter than the demo's model (the suite's time is the limit)
    ablation_env = {**env, "DEMO_TRAIN_ARGS": env["DEMO_TRAIN_ARGS"].replace("steps=150", "steps=60")}
    result = subprocess.run(
        ["bash", "scripts/demo.sh", "--ablation"],
        cwd=ROOT,
        env=ablation_env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ablation = tmp_path / "runs" / "ablation"
    assert "reusing the trained model" in result.stdout
    # two runs side by side on 2+ cores, whatever OMP_NUM_THREADS the test command set
    assert re.search(r"2 copies at \d+ thread\(s\) each", result.stdout), result.stdout[-3000:]
    logs = "".join(p.read_text() for p in sorted(ablation.glob("job*.log")))
    assert "== method seed 0: reusing" in logs  # the demo's model stands for the method's seed 0
    assert logs.count(": training ") == 2 and not list(ablation.glob("*/*.lock"))  # each run once, by one copy
    assert (ablation / "method" / "seed0").resolve() == (tmp_path / "runs" / "demo").resolve()
    summary = json.loads((ablation / "ablation.json").read_text())
    assert summary["seeds"] == {"method": 1, "cor_only": 1, "dis_only": 1}
    assert "With one seed there is no spread" in result.stdout and "Table 7." in result.stdout
    cor_only = json.loads((ablation / "cor_only" / "seed0" / "eval" / "results.json").read_text())
    assert cor_only["table1"]["heads"]["rule"] == "pred_dis"  # L_cor names no head: Pred.Dis does
    config = (ablation / "dis_only" / "seed0" / "config.yaml").read_text()
    assert re.search(r"^  correspondence: 0(\.0)?$", config, re.M) and re.search(r"^seed: 0$", config, re.M)
