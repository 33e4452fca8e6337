"""scripts/demo_example.py: the demo's `ground` example is the median pair of Table 1 by the mean of
the heads' own APs; on a small per-item table chosen by the test, and on a generated IS3 tree."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.testsets.is3 import read_is3
from scripts.demo_example import median_item
from tests.support.testsets import make_is3_tree

ROOT = Path(__file__).resolve().parents[2]


def test_the_median_of_the_mean_ap_ties_by_key_and_leaves_out_empty_masks():
    keys = ["a", "b", "c", "d", "e", "f"]
    sound = [0.9, 0.1, 0.5, 0.7, None, 0.3]
    speech = [0.9, 0.1, 0.1, 0.3, 0.8, 0.3]  # means: a .9, b .1, c .3, d .5, e left out, f .3
    chosen = median_item(keys, sound, speech)
    # ranked b .1 < c .3 < f .3 (tie, by key) < d .5 < a .9: five pairs, the third is the median
    assert (keys[chosen.index], chosen.rank, chosen.count, chosen.left_out) == ("f", 3, 5, 1)
    assert chosen.score == pytest.approx(0.3)
    # an even count takes the lower of the two middle pairs
    assert keys[median_item(keys[:4], sound[:4], speech[:4]).index] == "c"
    with pytest.raises(ValueError, match="no pair has both APs"):
        median_item(["x"], [None], [0.5])


def run(*args):
    return subprocess.run(
        [sys.executable, "scripts/demo_example.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True
    )


def test_prints_the_median_pairs_files_from_the_eval_folder(tmp_path):
    is3 = make_is3_tree(tmp_path / "is3")
    pairs, _ = read_is3(is3, require_speech=True).pairs("cross")
    keys = [p.key for p in pairs]  # six cross pairs of three images
    per_item = {"keys": keys, "sound_AP": [0.2, 0.9, 0.4, 0.6, 0.8, 0.1], "speech_AP": [0.2, 0.5, 0.4, 0.2, 0.6, 0.1]}
    # means .2 .7 .4 .4 .7 .1: ranked 5, 0, 2, 3 (tie, by key), 1, 4 -> the lower median is pair 2
    results = {"table1": {"per_item": {"cross": per_item}, "settings": {"speech_window": "advanced"}}}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps(results))
    done = run(tmp_path / "eval", is3)
    assert done.returncode == 0, done.stderr
    chosen = pairs[2]
    assert done.stdout.splitlines() == [
        str(chosen.sound.image_path),
        str(chosen.sound.audio_path),
        str(chosen.speech.speech_path),
    ]
    assert all(Path(line).is_file() for line in done.stdout.splitlines())
    said = f"{chosen.key}: the sound of the {chosen.sound.target} and the spoken name of the {chosen.speech.target}"
    assert said in done.stderr
    assert "the median pair is 3 of 6" in done.stderr and "sound head AP 40.0, speech head AP 40.0" in done.stderr

    # an evaluation from before the per-item APs: one line, exit 2, what to do
    (tmp_path / "eval" / "results.json").write_text(json.dumps({"table1": {"results": {}}}))
    done = run(tmp_path / "eval", is3)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and "run evaluate.py" in done.stderr
