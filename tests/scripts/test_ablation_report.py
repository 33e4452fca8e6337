"""scripts/ablation_report.py: cells over seeds, the spread rule and the head note, on results.json
files laid out as scripts/ablation.sh writes them (figures chosen by the test)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _results(sound_map: float, places_sound_r10: float, heads: dict) -> dict:
    def recall(r10: float) -> dict:
        return {"I->A": {"1": 0.0, "5": 0.0, "10": r10}, "A->I": {"1": 0.0, "5": 0.0, "10": r10}}

    head = {"mAP": sound_map, "mIoU": 0.1}
    retrieval = {
        "places": {"sound_head": recall(places_sound_r10), "speech_head": recall(0.3), "total": recall(0.3)},
        "audioset": {"sound_head": recall(0.4), "speech_head": recall(0.05), "total": recall(0.4)},
    }
    return {
        "table1": {
            "heads": heads,
            "results": {"cross": {"sound": head, "speech": head, "opposite_head": {"sound": head, "speech": head}}},
        },
        "table3": {"heads": heads, "results": retrieval},
        "table6": {
            "heads": heads,
            "results": {
                "clean": {
                    "places": {"sound_head": recall(places_sound_r10)},
                    "audioset": {"speech_head": recall(0.05)},
                },
                "mixed": {"places": {"sound_head": recall(0.05)}, "audioset": {"speech_head": recall(0.05)}},
                "disentanglement": {"pred_dis": 0.8, "act_dis": 0.7, "win_share": [[0.25, 1.0], [0.75, 0.0]]},
            },
        },
    }


def _write(root: Path, loss: str, seed: int, results: dict) -> None:
    path = root / loss / f"seed{seed}" / "eval" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(results))


def _report(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ablation_report.py"), str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_means_spreads_and_the_differences_beyond_them(tmp_path):
    config = {"rule": "config", "sound_head": 0, "speech_head": 1}
    for seed, (m_map, c_map, m_sp, c_sp) in enumerate(
        [(0.70, 0.40, 0.30, 0.20), (0.60, 0.50, 0.10, 0.25), (0.80, 0.45, 0.20, 0.22)]
    ):
        _write(tmp_path, "method", seed, _results(m_map, m_sp, config))
        _write(
            tmp_path,
            "cor_only",
            seed,
            _results(
                c_map, c_sp, {"rule": "pred_dis", "sound_head": seed % 2, "speech_head": 1 - seed % 2, "pred_dis": 0.7}
            ),
        )
    done = _report(tmp_path, "--losses", "method", "cor_only", "--seeds", "3")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "| L_cor + L_dis (the method) | 70.0 ± 10.0 [60.0, 80.0] |" in out  # sample sd of 60, 70, 80
    assert "seed 0: sound = head 0, seed 1: sound = head 1, seed 2: sound = head 0" in out
    # Table 1 sound mAP: 60..80 against 40..50, separated; the sound head's speech R@10 ranges overlap
    assert (
        "- Table 1, sound head, sounding object mAP: method 70.0 vs L_cor only (DenseAV's objective) 45.0 "
        "(+25.0; the method is better)" in out
    )
    summary = json.loads((tmp_path / "ablation.json").read_text())
    rows = {r["metric"]: r for r in summary["differences"]}
    assert rows["t1_sound"]["exceeds_spread"] and not rows["t6_clean_places_i2a"]["exceeds_spread"]
    assert summary["per_seed"]["method"]["t1_sound"] == [70.0, 60.0, 80.0]
    assert summary["per_seed"]["method"]["win_speech"] == [25.0] * 3  # the configured sound head is head 0
    assert (tmp_path / "ablation.md").read_text().strip() == out.strip()


def test_one_seed_claims_nothing_and_a_missing_run_fails(tmp_path):
    _write(tmp_path, "method", 0, _results(0.7, 0.3, {"rule": "config", "sound_head": 0, "speech_head": 1}))
    done = _report(tmp_path, "--losses", "method", "dis_only", "--seeds", "1")
    assert done.returncode == 1
    assert "With one seed there is no spread: no difference is claimed" in done.stdout
    assert "missing runs (1):" in done.stderr and "dis_only/seed0/eval/results.json" in done.stderr
