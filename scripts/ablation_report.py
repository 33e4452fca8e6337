"""The loss ablation's tables over seeds: paper Tables 1, 6 and 7 in miniature, mean ± spread.

    python scripts/ablation_report.py runs/ablation [--losses method cor_only dis_only] [--seeds 3]

Reads ``<dir>/<loss>/seed<N>/eval/results.json`` (written by scripts/ablation.sh), prints each
table with one row per loss and ``mean ± sd [min, max]`` over the seeds in each cell, then the
differences between the method and each ablation that exceed the spread: all seeds of one loss
on one side of all seeds of the other (the seed ranges do not overlap). With one seed there is
no spread, and no difference is claimed. Writes ``<dir>/ablation.md`` and ``<dir>/ablation.json``
(every seed's figures). Exit status 1 if a run is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

LOSS_LABELS = {
    "method": "L_cor + L_dis (the method)",
    "cor_only": "L_cor only (DenseAV's objective)",
    "dis_only": "L_dis only",
    "own_heads": "L_cor by own head + L_dis (diagnostic)",
}


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    table: str
    higher_is_better: bool | None  # None: a diagnostic with no better direction
    read: Callable[[dict], float]


def _path(*keys: str) -> Callable[[dict], float]:
    def read(results: dict) -> float:
        node = results
        for key in keys:
            node = node[key]
        return 100.0 * float(node)

    return read


def _t1(*keys):
    return _path("table1", "results", "cross", *keys)


def _t6(cond, dataset, head, direction):
    return _path("table6", "results", cond, dataset, head, direction, "10")


def _t3(dataset, head, direction):
    return _path("table3", "results", dataset, head, direction, "10")


def _win_share(kind: int) -> Callable[[dict], float]:
    """The share of clean matched pairs of one audio type (0 speech, 1 sound) on which the sound head
    scores above the speech head: where L_cor's max over heads sends their gradient."""

    def read(results: dict) -> float:
        section = results["table6"]
        sound = section.get("heads", {}).get("sound_head", 0)
        return 100.0 * float(section["results"]["disentanglement"]["win_share"][sound][kind])

    return read


METRICS = (
    Metric("t1_sound", "sound head, sounding object mAP", "1", True, _t1("sound", "mAP")),
    Metric("t1_speech", "speech head, named object mAP", "1", True, _t1("speech", "mAP")),
    Metric(
        "t1_speech_on_sound", "speech head on the sounding object mAP", "1", False, _t1("opposite_head", "sound", "mAP")
    ),
    Metric(
        "t1_sound_on_speech", "sound head on the named object mAP", "1", False, _t1("opposite_head", "speech", "mAP")
    ),
    Metric(
        "t6_clean_places_i2a",
        "clean: speech set, sound head I→A",
        "6",
        False,
        _t6("clean", "places", "sound_head", "I->A"),
    ),
    Metric("t6_clean_places_a2i", "A→I", "6", False, _t6("clean", "places", "sound_head", "A->I")),
    Metric(
        "t6_clean_audioset_i2a",
        "sound set, speech head I→A",
        "6",
        False,
        _t6("clean", "audioset", "speech_head", "I->A"),
    ),
    Metric("t6_clean_audioset_a2i", "A→I", "6", False, _t6("clean", "audioset", "speech_head", "A->I")),
    Metric(
        "t6_mixed_places_i2a",
        "mixed: speech set, sound head I→A",
        "6",
        False,
        _t6("mixed", "places", "sound_head", "I->A"),
    ),
    Metric("t6_mixed_places_a2i", "A→I", "6", False, _t6("mixed", "places", "sound_head", "A->I")),
    Metric(
        "t6_mixed_audioset_i2a",
        "sound set, speech head I→A",
        "6",
        False,
        _t6("mixed", "audioset", "speech_head", "I->A"),
    ),
    Metric("t6_mixed_audioset_a2i", "A→I", "6", False, _t6("mixed", "audioset", "speech_head", "A->I")),
    Metric("pred_dis", "Pred.Dis", "6", True, _path("table6", "results", "disentanglement", "pred_dis")),
    Metric("act_dis", "Act.Dis", "6", True, _path("table6", "results", "disentanglement", "act_dis")),
    Metric("win_speech", "speech pairs won by the sound head", "6", None, _win_share(0)),
    Metric("win_sound", "sound pairs won by the sound head", "6", None, _win_share(1)),
    Metric("t7a_i2a", "(a) AudioSet, sound head I→A", "7", True, _t3("audioset", "sound_head", "I->A")),
    Metric("t7a_a2i", "A→I", "7", True, _t3("audioset", "sound_head", "A->I")),
    Metric("t7b_i2a", "(b) Places, sound head I→A", "7", False, _t3("places", "sound_head", "I->A")),
    Metric("t7b_a2i", "A→I", "7", False, _t3("places", "sound_head", "A->I")),
    Metric("t3_places_speech_i2a", "Places, speech head I→A", "3", True, _t3("places", "speech_head", "I->A")),
    Metric("t3_places_speech_a2i", "A→I", "3", True, _t3("places", "speech_head", "A->I")),
)
TABLES = {
    "1": "Table 1. Extended IS3, mixed audio, cross-object pairs (mAP; the last two columns: lower = disentangled)",
    "6": "Table 6. Retrieval R@10 with the opposite head (lower is better); Pred.Dis / Act.Dis (higher is better)",
    "7": "Table 7. The sound head's retrieval R@10: (a) on sounds (higher is better), (b) on speech (lower is better)",
    "3": "Table 3 (context). The speech head's retrieval R@10 on speech (higher is better)",
}


@dataclass
class Cell:
    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    def text(self) -> str:
        if not self.values:
            return "-"
        if len(self.values) == 1:
            return f"{self.values[0]:.1f}"
        return f"{self.mean:.1f} ± {self.sd:.1f} [{min(self.values):.1f}, {max(self.values):.1f}]"


def load_runs(root: Path, losses: list[str], seeds: int) -> tuple[dict, list[str]]:
    """``{loss: [results.json of seed 0, 1, ...]}`` and the missing runs' paths."""
    runs, missing = {}, []
    for loss in losses:
        runs[loss] = []
        for seed in range(seeds):
            path = root / loss / f"seed{seed}" / "eval" / "results.json"
            if path.is_file():
                runs[loss].append(json.loads(path.read_text()))
            else:
                missing.append(str(path))
    return runs, missing


def cells(runs: dict) -> dict[str, dict[str, Cell]]:
    out = {}
    for loss, results in runs.items():
        out[loss] = {}
        for m in METRICS:
            values = []
            for r in results:
                try:
                    values.append(m.read(r))
                except (KeyError, TypeError):
                    pass
            out[loss][m.key] = Cell(values)
    return out


def render_table(name: str, grid: dict[str, dict[str, Cell]]) -> str:
    metrics = [m for m in METRICS if m.table == name]
    lines = [
        f"**{TABLES[name]}**",
        "",
        "| loss | " + " | ".join(m.label for m in metrics) + " |",
        "|---" * (len(metrics) + 1) + "|",
    ]
    for loss, row in grid.items():
        lines.append(f"| {LOSS_LABELS.get(loss, loss)} | " + " | ".join(row[m.key].text() for m in metrics) + " |")
    return "\n".join(lines)


def _full_label(m: Metric) -> str:
    if m.label in ("A→I",):  # the column after an I→A one: name its whole measure
        previous = METRICS[METRICS.index(m) - 1]
        return previous.label.replace("I→A", "A→I")
    return m.label


def differences(grid: dict[str, dict[str, Cell]], base: str = "method") -> tuple[list[dict], list[str]]:
    """The method against each other loss, per metric: difference of means and whether every seed
    of one lies beyond every seed of the other."""
    rows, lines = [], []
    if base not in grid:
        return rows, lines
    for loss in grid:
        if loss == base:
            continue
        for m in METRICS:
            a, b = grid[base][m.key], grid[loss][m.key]
            if not a.values or not b.values:
                continue
            diff = a.mean - b.mean
            n = min(len(a.values), len(b.values))
            separated = n > 1 and (min(a.values) > max(b.values) or max(a.values) < min(b.values))
            better = None if m.higher_is_better is None else (diff > 0) == m.higher_is_better
            rows.append(
                {
                    "loss": loss,
                    "metric": m.key,
                    "table": m.table,
                    "method_minus_ablation": round(diff, 2),
                    "exceeds_spread": bool(separated),
                    "method_better": better if separated else None,
                }
            )
            if separated:
                verdict = "" if better is None else f"; the method is {'better' if better else 'worse'}"
                lines.append(
                    f"- Table {m.table}, {_full_label(m)}: method {a.mean:.1f} vs {LOSS_LABELS[loss]} "
                    f"{b.mean:.1f} ({diff:+.1f}{verdict})"
                )
    return rows, lines


def heads_note(runs: dict) -> list[str]:
    notes = []
    for loss, results in runs.items():
        rules = [r.get("table1", r.get("table3", {})).get("heads", {}) for r in results]
        named = [h for h in rules if h.get("rule") == "pred_dis"]
        if named:
            picks = ", ".join(f"seed {i}: sound = head {h['sound_head']}" for i, h in enumerate(rules) if h)
            notes.append(f"- {LOSS_LABELS.get(loss, loss)}: heads named by the assignment Pred.Dis picks ({picks}).")
        elif rules:
            notes.append(
                f"- {LOSS_LABELS.get(loss, loss)}: heads as configured (sound = head "
                f"{rules[0].get('sound_head', 0)}; L_dis names them, Eq. 10)."
            )
    return notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="the ablation folder (scripts/ablation.sh's ABLATION_DIR)")
    ap.add_argument("--losses", nargs="+", default=["method", "cor_only", "dis_only"], choices=list(LOSS_LABELS))
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")

    runs, missing = load_runs(args.root, args.losses, args.seeds)
    grid = cells(runs)
    n = {loss: len(results) for loss, results in runs.items()}
    parts = [
        f"# Loss ablation on the generated world ({', '.join(f'{LOSS_LABELS[k]}: {v} seed(s)' for k, v in n.items())})",
        "",
        "Percentages. A cell is one seed's figure, or mean ± sd [min, max] over the seeds.",
        "",
    ]
    for name in TABLES:
        parts += [render_table(name, grid), ""]
    parts += ["Heads:", *heads_note(runs), ""]
    rows, lines = differences(grid)
    if max(n.values(), default=0) < 2:
        parts += ["With one seed there is no spread: no difference is claimed (scripts/ablation.sh --seeds 3).", ""]
    else:
        parts += ["Differences beyond the spread (every seed of one loss beyond every seed of the other):", ""]
        parts += lines or ["- none"]
        parts.append("")
    text = "\n".join(parts)
    print(text)
    (args.root / "ablation.md").write_text(text + "\n")
    per_seed = {loss: {m.key: grid[loss][m.key].values for m in METRICS} for loss in grid}
    (args.root / "ablation.json").write_text(
        json.dumps({"seeds": n, "per_seed": per_seed, "differences": rows}, indent=1) + "\n"
    )
    if missing:
        print(
            f"missing runs ({len(missing)}): " + ", ".join(missing[:6]) + " - run scripts/ablation.sh to finish them",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
