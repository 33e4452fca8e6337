"""Print the demo's tables and check that the method learned the generated world.

    python scripts/demo_report.py EVAL_DIR WORLD_DIR [--ablation EVAL_DIR_WITHOUT_DIS]

The check (issue: "it must show that the method learns"), on the generated Extended-IS3 set with
mixed audio (cross-object pairs): both heads reach an mAP of at least twice the chance level (the
AP of a constant heatmap = the mean object-mask share, recorded in world.json), and each head
localizes its own audio type's object better than the other head does. Exit status 1 if not.
With --ablation, the disentanglement comparison of the two runs (paper Tables 6 and 7 in
miniature) is printed as well.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _load(eval_dir: Path) -> dict:
    path = eval_dir / "results.json"
    if not path.exists():
        sys.exit(f"{path} is missing: run evaluate.py first (scripts/demo.sh does)")
    return json.loads(path.read_text())


def learning_check(results: dict, chance: float, min_ratio: float = 2.0,
                   compare_heads: bool = True) -> tuple[bool, list[str]]:
    cross = results["table1"]["results"]["cross"]
    lines, ok = [], True
    for head, other in (("sound", "speech"), ("speech", "sound")):
        ap, opposite = cross[head]["mAP"], cross["opposite_head"][head]["mAP"]
        passed = ap >= min_ratio * chance and (ap > opposite or not compare_heads)
        ok &= passed
        lines.append(f"  {head} head: mAP {100 * ap:5.1f} = {ap / chance:4.1f} x chance ({100 * chance:.1f}); "
                     f"the {other} head on the same objects: {100 * opposite:5.1f}  "
                     f"[{'ok' if passed else 'NOT MET'}]")
    return ok, lines


def _r10(table6: dict, condition: str, dataset: str, head: str, direction: str) -> str:
    try:
        return f"{100 * table6['results'][condition][dataset][head][direction]['10']:.1f}"
    except (KeyError, TypeError):
        return "-"


def ablation_table(full: dict, no_dis: dict) -> str:
    """Paper Tables 6-7 in miniature: opposite-head retrieval and Pred.Dis/Act.Dis, with and without L_dis."""
    rows = []
    for label, res in (("L_cor + L_dis (the method)", full), ("L_cor only (no L_dis)", no_dis)):
        t6 = res.get("table6", {})
        cells = [_r10(t6, cond, dataset, head, direction)
                 for cond in ("clean", "mixed")
                 for dataset, head in (("places", "sound_head"), ("audioset", "speech_head"))
                 for direction in ("I->A", "A->I")]
        dis = t6.get("results", {}).get("disentanglement", {})
        cells += [f"{100 * dis[k]:.1f}" if isinstance(dis.get(k), (int, float)) else "-" for k in ("pred_dis", "act_dis")]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    header = ("| training loss | clean: speech set, sound head I->A | A->I | sound set, speech head I->A | A->I "
              "| mixed: speech set, sound head I->A | A->I | sound set, speech head I->A | A->I | Pred.Dis | Act.Dis |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")
    return header + "\n" + "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", type=Path)
    ap.add_argument("world_dir", type=Path)
    ap.add_argument("--ablation", type=Path, help="evaluation folder of the model trained without L_dis")
    ap.add_argument("--min-ratio", type=float, default=2.0, help="required mAP / chance level of each head")
    ap.add_argument("--no-compare-heads", action="store_true",
                    help="do not require each head to beat the other head on its own audio type's objects")
    args = ap.parse_args()

    results = _load(args.eval_dir)
    print((args.eval_dir / "tables.md").read_text())
    world = json.loads((args.world_dir / "world.json").read_text())
    chance = world["sets"]["is3"]["mean_mask_share"]
    ok, lines = learning_check(results, chance, args.min_ratio, not args.no_compare_heads)
    print("Does the method learn? Extended IS3, mixed audio, cross-object pairs:")
    print("\n".join(lines))
    pictures = sorted((args.eval_dir / "overlays").glob("*.png"))
    if pictures:
        print(f"\nOverlay pictures (image, sound-head map, speech-head map): {args.eval_dir / 'overlays'} "
              f"({len(pictures)} files, e.g. {pictures[0].name})")
    if args.ablation:
        print("\nDisentanglement with and without L_dis (retrieval R@10 with the opposite head: lower is better)\n")
        print(ablation_table(results, _load(args.ablation)))
    if not ok:
        print("\nThe learning check was NOT met (see above).")
        sys.exit(1)
    print("\nThe learning check is met: both heads localize their own audio type in the mixture.")


if __name__ == "__main__":
    main()
