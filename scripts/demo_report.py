"""Print the demo's tables and check that the method learned the generated world.

    python scripts/demo_report.py EVAL_DIR WORLD_DIR

The check (issue: "it must show that the method learns"), on the generated Extended-IS3 set with
mixed audio (cross-object pairs): both heads reach an mAP of at least twice the chance level (the
AP of a constant heatmap = the mean object-mask share, recorded in world.json), and each head
localizes its own audio type's object better than the other head does. Exit status 1 if not.
The loss ablation (Tables 1, 6 and 7 over seeds) is scripts/ablation_report.py's.
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


def learning_check(
    results: dict, chance: float, min_ratio: float = 2.0, compare_heads: bool = True
) -> tuple[bool, list[str]]:
    cross = results["table1"]["results"]["cross"]
    lines, ok = [], True
    for head, other in (("sound", "speech"), ("speech", "sound")):
        ap, opposite = cross[head]["mAP"], cross["opposite_head"][head]["mAP"]
        passed = ap >= min_ratio * chance and (ap > opposite or not compare_heads)
        ok &= passed
        lines.append(
            f"  {head} head: mAP {100 * ap:5.1f} = {ap / chance:4.1f} x chance ({100 * chance:.1f}); "
            f"the {other} head on the same objects: {100 * opposite:5.1f}  "
            f"[{'ok' if passed else 'NOT MET'}]"
        )
    return ok, lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", type=Path)
    ap.add_argument("world_dir", type=Path)
    ap.add_argument("--min-ratio", type=float, default=2.0, help="required mAP / chance level of each head")
    ap.add_argument(
        "--no-compare-heads",
        action="store_true",
        help="do not require each head to beat the other head on its own audio type's objects",
    )
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
        print(
            f"\nOverlay pictures (image, sound-head map, speech-head map): {args.eval_dir / 'overlays'} "
            f"({len(pictures)} files, e.g. {pictures[0].name})"
        )
    if not ok:
        print("\nThe learning check was NOT met (see above).")
        sys.exit(1)
    print("\nThe learning check is met: both heads localize their own audio type in the mixture.")


if __name__ == "__main__":
    main()
