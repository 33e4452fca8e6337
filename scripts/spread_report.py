"""The demo's figures across seeds and machine conditions (scripts/spread.sh), with their spread.

    python scripts/spread_report.py runs/demo runs/spread --world shards/synthetic [--conditions ...]

Reads the demo's run (``BASE/eval/results.json``, seed 0, the base row) and each condition's
``DIR/<condition>/demo/eval/results.json``; prints one row per run with Table 1's four mAPs (mixed
audio, cross-object pairs), Table 2's speech-prompted mAPs, Pred.Dis and whether the demo's learning
check passes, then the range [min, max] of each figure over the seeds (the base row and ``seedN``),
over the machine conditions (the base row and the rest) and over all runs. Writes
``DIR/spread.md`` and ``DIR/spread.json``. Exit status 1 if a run is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ablation_report import METRICS
from demo_report import learning_check

_BY_KEY = {m.key: m for m in METRICS}
COLUMNS = (
    ("t1_sound", "T1 sound head, sounding obj.", _BY_KEY["t1_sound"].read),
    ("t1_speech", "T1 speech head, named obj.", _BY_KEY["t1_speech"].read),
    ("t1_speech_on_sound", "T1 speech head, sounding obj.", _BY_KEY["t1_speech_on_sound"].read),
    ("t1_sound_on_speech", "T1 sound head, named obj.", _BY_KEY["t1_sound_on_speech"].read),
    ("t2_speech_head", "T2 speech head", lambda r: 100 * r["table2"]["results"]["speech"]["head"]["mAP"]),
    ("t2_speech_total", "T2 total", lambda r: 100 * r["table2"]["results"]["speech"]["total"]["mAP"]),
    ("pred_dis", "Pred.Dis", _BY_KEY["pred_dis"].read),
)
CONDITIONS = {
    "base": "the demo (seed 0, start at 1 thread, default kernels)",
    "start_threads2": "audio start at 2 threads",
    "avx2": "ATEN_CPU_CAPABILITY=avx2",
    "avx2_start_threads2": "avx2 and start at 2 threads",
}


def describe(condition: str) -> str:
    if condition.startswith("seed"):
        return f"training seed {condition[4:]}"
    return CONDITIONS.get(condition, condition)


def _range(values: list[float]) -> str:
    return f"[{min(values):.1f}, {max(values):.1f}]" if values else "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", type=Path, help="the demo's run directory (runs/demo)")
    ap.add_argument("spread_dir", type=Path)
    ap.add_argument("--world", type=Path, required=True, help="the generated world (its chance level)")
    ap.add_argument(
        "--conditions", nargs="+", default=["seed1", "seed2", "start_threads2", "avx2", "avx2_start_threads2"]
    )
    args = ap.parse_args(argv)

    chance = json.loads((args.world / "world.json").read_text())["sets"]["is3"]["mean_mask_share"]
    paths = {"base": args.base / "eval" / "results.json"}
    paths.update({c: args.spread_dir / c / "demo" / "eval" / "results.json" for c in args.conditions})
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        print(f"error: missing {', '.join(missing)}: run scripts/spread.sh", file=sys.stderr)
        return 1
    rows = {}
    for name, path in paths.items():
        results = json.loads(path.read_text())
        rows[name] = {key: read(results) for key, _, read in COLUMNS}
        rows[name]["check"] = learning_check(results, chance)[0]

    header = "| run | " + " | ".join(label for _, label, _ in COLUMNS) + " | learning check |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, row in rows.items():
        cells = " | ".join(f"{row[key]:.1f}" for key, _, _ in COLUMNS)
        lines.append(f"| {describe(name)} | {cells} | {'passes' if row['check'] else 'FAILS'} |")
    groups = {
        "over seeds": [n for n in rows if n == "base" or n.startswith("seed")],
        "over machine conditions": [n for n in rows if not n.startswith("seed")],
        "over all runs": list(rows),
    }
    for label, names in groups.items():
        cells = " | ".join(_range([rows[n][key] for n in names]) for key, _, _ in COLUMNS)
        passed = sum(rows[n]["check"] for n in names)
        lines.append(f"| **{label}** ({len(names)} runs) | {cells} | {passed} of {len(names)} pass |")
    table = "\n".join(lines)
    print(f"The demo's figures (mAP and Pred.Dis, %), chance {100 * chance:.1f}:\n\n{table}")
    (args.spread_dir / "spread.md").write_text(table + "\n")
    (args.spread_dir / "spread.json").write_text(json.dumps({"chance": chance, "runs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
