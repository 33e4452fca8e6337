"""The demo's `ground` example, chosen by a rule rather than by looks: the median pair of Table 1.

    python scripts/demo_example.py EVAL_DIR IS3_DIR [--pairing cross]

The rule: take Table 1's pairs of the given pairing (cross: the sound of one object mixed with the
spoken name of the other object of the same image), score each by the mean of its two own APs
(the sound head's AP on the sounding object, the speech head's AP on the named object:
``table1.per_item`` of EVAL_DIR/results.json, written by evaluate.py), sort by that score (ties by
key) and take the median, the lower one of an even count. Pairs with an AP that is null (an empty
mask) are left out and counted.

Prints the rule, the pair and its APs on stderr, and on stdout three lines for scripts/demo.sh: the
pair's image, the sounding object's sound and the named object's speech. Bad input: one `error:`
line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

EXIT_BAD_INPUT = 2


@dataclass
class MedianItem:
    index: int  # into the pairing's per-item lists
    rank: int  # 1-based, ascending by score
    count: int  # pairs ranked
    left_out: int  # pairs with a null AP
    score: float  # mean of the two APs


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def median_item(keys: list[str], sound_ap: list, speech_ap: list) -> MedianItem:
    """The pair at the (lower) median of the mean of its two APs, ties broken by key."""
    if not len(keys) == len(sound_ap) == len(speech_ap):
        raise ValueError(f"per-item lists differ in length: {len(keys)} keys, {len(sound_ap)}, {len(speech_ap)} APs")
    ranked = [i for i in range(len(keys)) if _finite(sound_ap[i]) and _finite(speech_ap[i])]
    if not ranked:
        raise ValueError("no pair has both APs")
    scores = {i: (sound_ap[i] + speech_ap[i]) / 2 for i in ranked}
    ranked.sort(key=lambda i: (scores[i], keys[i]))
    at = (len(ranked) - 1) // 2
    chosen = ranked[at]
    return MedianItem(chosen, at + 1, len(ranked), len(keys) - len(ranked), scores[chosen])


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def _per_item(eval_dir: Path, pairing: str) -> tuple[dict, dict]:
    """table1.per_item.<pairing> and table1.settings of EVAL_DIR/results.json."""
    path = eval_dir / "results.json"
    if not path.is_file():
        _fail(f"{path} is missing: run evaluate.py's table1 (or all) into {eval_dir} first (scripts/demo.sh does)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        _fail(f"{path} is not valid JSON ({exc}); evaluate again into a new folder")
    table1 = results.get("table1") if isinstance(results, dict) else None
    items = table1.get("per_item", {}).get(pairing) if isinstance(table1, dict) else None
    if not isinstance(items, dict) or not all(k in items for k in ("keys", "sound_AP", "speech_AP")):
        _fail(
            f"{path} has no per-item APs of Table 1's {pairing} pairs (table1.per_item.{pairing}): "
            f"it predates them; run evaluate.py's table1 into {eval_dir} again"
        )
    return items, table1.get("settings") or {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", type=Path, help="evaluate.py's --out folder (results.json with Table 1)")
    ap.add_argument("is3_dir", type=Path, help="the Extended IS3 tree Table 1 was evaluated on")
    ap.add_argument("--pairing", default="cross", choices=("cross", "same"))
    args = ap.parse_args()

    items, settings = _per_item(args.eval_dir, args.pairing)
    try:
        chosen = median_item(items["keys"], items["sound_AP"], items["speech_AP"])
    except (TypeError, ValueError) as exc:
        _fail(f"{args.eval_dir / 'results.json'}: table1.per_item.{args.pairing}: {exc}")
    key = items["keys"][chosen.index]

    from pipeline.testsets.common import DatasetError  # the project's IS3 reader finds the pair's files
    from pipeline.testsets.is3 import read_is3

    try:
        pairs, _ = read_is3(args.is3_dir, require_speech=True).pairs(args.pairing)
    except (DatasetError, OSError, ValueError) as exc:
        _fail(f"{args.is3_dir}: {exc}")
    pair = next((p for p in pairs if p.key == key), None)
    if pair is None:
        _fail(f"{args.is3_dir} has no pair {key}: give the IS3 tree that {args.eval_dir} was evaluated on")

    sound_ap, speech_ap = items["sound_AP"][chosen.index], items["speech_AP"][chosen.index]
    left_out = f"; {chosen.left_out} with an empty mask left out" if chosen.left_out else ""
    frames = "over the object word's frames" if settings.get("speech_window") == "advanced" else "over all frames"
    print(
        f"   the example is chosen by a rule: Table 1's {args.pairing} pairs ranked by the mean of the sound head's AP "
        f"on the sounding object and the speech head's AP on the named object; the median pair is "
        f"{chosen.rank} of {chosen.count}{left_out}:\n"
        f"   {key}: the sound of the {pair.sound.target} and the spoken name of the {pair.speech.target}; "
        f"sound head AP {100 * sound_ap:.1f}, speech head AP {100 * speech_ap:.1f} "
        f"(mean {100 * chosen.score:.1f}; evaluate.py's Table 1, the speech head {frames})",
        file=sys.stderr,
    )
    print(pair.sound.image_path, pair.sound.audio_path, pair.speech.speech_path, sep="\n")


if __name__ == "__main__":
    main()
