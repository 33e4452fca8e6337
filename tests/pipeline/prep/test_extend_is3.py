"""The Extended-IS3 builder: phrases, offline speech with word timings, deterministic files."""

import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from pipeline import format as fmt
from pipeline.prep import extend_is3 as X
from pipeline.testsets.common import DatasetError, load_clip
from pipeline.testsets.is3 import read_is3
from tests.support.testsets import is3_stems, make_is3_tree


def test_readable_phrases():
    assert X.readable_phrase("acousticguitar") == "acoustic guitar"
    assert X.readable_phrase("subway") == "subway train"  # target token of subwaytrain images
    assert X.readable_phrase("computerkeyboard") == "computer keyboard"
    # not in the table: split into known words, camelCase / separators, else left as is
    assert X.readable_phrase("firealarm") == "fire alarm"
    assert X.readable_phrase("steamTrain") == "steam train"
    assert X.readable_phrase("qwzx") == "qwzx"
    assert X.prompt_text("owl", "a picture of {article} {phrase}") == "a picture of an owl"
    with pytest.raises(ValueError, match="phrase"):
        X.prompt_text("owl", "no placeholder")


def test_build_extended_is3_offline(tmp_path):
    root = make_is3_tree(tmp_path / "is3", extended=False)
    summary = X.build_extended_is3(root, backend="espeak", template="a picture of {article} {phrase}", progress=False)
    assert summary["spoken"] == 6 and not summary["skipped"]
    doc = json.loads((root / "speech_prompts.json").read_text())
    assert doc["backend"] == "espeak" and doc["voice"] == "en-us" and doc["timing"] == "engine"
    item = doc["items"]["acousticguitar_dog_7514_acousticguitar"]
    assert item["phrase"] == "acoustic guitar" and item["text"] == "a picture of an acoustic guitar"
    assert [w["word"] for w in item["words"]] == ["a", "picture", "of", "an", "acoustic", "guitar"]
    start, end = item["object_span"]
    assert start == item["words"][4]["start"] and end == item["words"][5]["end"] and 0 < start < end
    audio, sr = sf.read(root / "speech_wav" / "acousticguitar_dog_7514_acousticguitar.wav")
    assert sr == fmt.SAMPLE_RATE and audio.ndim == 1 and end <= audio.shape[0] / sr + 1e-3
    assert doc["items"]["fireworks_subwaytrain_10415_subway"]["phrase"] == "subway train"

    ds = read_is3(root, require_speech=True)
    assert ds.extended and len(ds.annotations) == 6 and ds.speech_meta["backend"] == "espeak"
    clip = load_clip(ds.annotations[0].speech_path)
    assert clip.valid >= fmt.MIN_DURATION_S * fmt.SAMPLE_RATE

    # deterministic: a rebuild gives byte-identical files
    before = {p.name: p.read_bytes() for p in (root / "speech_wav").iterdir()}
    before_json = (root / "speech_prompts.json").read_bytes()
    with pytest.raises(DatasetError, match="overwrite"):
        X.build_extended_is3(root, progress=False)
    X.build_extended_is3(root, template="a picture of {article} {phrase}", overwrite=True, progress=False)
    assert before == {p.name: p.read_bytes() for p in (root / "speech_wav").iterdir()}
    assert before_json == (root / "speech_prompts.json").read_bytes()


def test_short_names_are_padded_to_a_usable_clip(tmp_path):
    root = make_is3_tree(tmp_path / "is3", extended=False)
    X.build_extended_is3(root, progress=False)  # bare names: "dog" is shorter than half a second
    for stem in is3_stems():
        audio, _ = sf.read(root / "speech_wav" / f"{stem}.wav")
        assert audio.shape[0] >= fmt.MIN_DURATION_S * fmt.SAMPLE_RATE
        assert np.abs(audio).max() > 0.01


def test_prep_command(tmp_path):
    from pipeline.prep.cli import app

    root = make_is3_tree(tmp_path / "is3", extended=False)
    result = CliRunner().invoke(app, ["extend-is3", str(root), "--voice", "en-us+f3"])
    assert result.exit_code == 0, result.output
    assert "6 annotations spoken" in result.output
    assert json.loads((root / "speech_prompts.json").read_text())["voice"] == "en-us+f3"
    bad = CliRunner().invoke(app, ["extend-is3", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "does not exist" in bad.output
