"""K = 3 end to end at the smallest size: the generated world with music (`prep synthetic --music`),
`train.py` with three typed streams and three heads (sound, speech, music), and `evaluate.py table6`
with the music retrieval set, each through its command line (`prep` as a process; the two scripts'
Typer apps in this process, which spares two imports of torch). `scripts/demo.sh --types 3` runs the
same chain at demo size; at the test suite's CI size it takes about a minute, over this file's budget.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import evaluate
import train

ROOT = Path(__file__).resolve().parents[2]
TYPES = ("sound", "speech", "music")
ENV = {
    **os.environ,
    "CUDA_VISIBLE_DEVICES": "",
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
}


def _prep(args: list[str]) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("prep")), *args], env=ENV, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _invoke(app, args: list[str]) -> None:
    threads = torch.get_num_threads()  # the trainer sets its own count; the next test gets ours back
    try:
        result = CliRunner().invoke(app, args)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output[-3000:] + repr(result.exception)


def _scalar_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (run_dir / "train").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


@pytest.mark.slow
def test_a_three_type_world_trains_three_heads_and_table6_reports_every_pair(tmp_path):
    world, run, out = tmp_path / "world", tmp_path / "run", tmp_path / "eval"
    # the smallest world that trains and evaluates: 16 training items and 8 retrieval pairs a type
    sizes = ["--train", "16", "--val", "8", "--is3-images", "1", "--ade-images", "1", "--shard-size", "16"]
    _prep(["synthetic", "--out", str(world), "--size", "ci", *sizes, "--music", "-w", "0", "--no-progress"])
    assert {p.name for p in world.iterdir() if p.is_dir()} >= {"speech", "sound", "music"}

    streams = [f"data.streams.{t}={world / t / 'train'}" for t in ("speech", "sound", "music")]
    tiny = ["data.batch_size=4", "data.num_workers=0", "data.clip_seconds=1.0", "data.shuffle_buffer=8"]
    steps = ["steps=4", "warmup_steps=2", "optim.lr_warmup_steps=2", "log_every=1", "ckpt_every=0"]
    heads = f"model.head_types=[{','.join(TYPES)}]"
    _invoke(train.app, ["--config", str(ROOT / "configs/tiny.yaml"), *streams, heads, *tiny, *steps, f"out_dir={run}"])

    for config in (run / "model_config.json", run / "final" / "config.json"):  # the run's and the checkpoint's
        text = json.loads(config.read_text())
        model = text.get("model", text)
        fields = [model[k] for k in ("head_types", "num_heads", "sound_head", "speech_head")]
        assert fields == [list(TYPES), 3, 0, 1]
    # L_cor (Eq. 7) over every type, and after the warm-up L_dis (Eq. 9) over the mixture's three types
    summary = json.loads((run / "summary.json").read_text())
    last = summary["last_loss"]
    assert summary["step"] == 4 and summary["bad_steps_total"] == 0
    for term in ("cor", "dis"):
        assert last[term] == pytest.approx(sum(last[f"{term}/{t}"] for t in TYPES), rel=1e-5)
    tags = _scalar_tags(run)
    assert {f"loss/{term}/{t}" for term in ("cor", "dis") for t in TYPES} <= tags

    sets = ["--places", str(world / "speech/val"), "--audioset", str(world / "sound/val")]
    sets += ["--set", f"music={world / 'music/val'}"]
    args = ["--checkpoint", str(run / "final"), "--out", str(out), "--no-progress", "table6", *sets]
    _invoke(evaluate.app, args)
    table6 = json.loads((out / "results.json").read_text())["table6"]
    assert table6["num_heads"] == 3 and table6["counts"]["music_pairs"] == 8
    pairs = table6["results"]["pairs"]
    assert set(pairs) == {"music/sound", "music/speech", "sound/speech"}
    # each pair by the heads its types name: head k answers head_types[k]
    assert [pairs[p]["heads"] for p in sorted(pairs)] == [[2, 0], [2, 1], [0, 1]]
    for pair in pairs.values():
        assert 0.0 <= pair["disentanglement"]["pred_dis"] <= 1.0
    tables = (out / "tables.md").read_text()
    assert all(f"Types {p} (heads" in tables for p in pairs)
