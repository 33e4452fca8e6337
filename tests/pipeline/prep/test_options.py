"""pipeline.prep.commands.options: the shared build options as one object, shown to Typer as flags
(``pipeline.cli_support.with_options``)."""

import inspect
from typing import Annotated

import typer
from typer.main import get_command
from typer.testing import CliRunner

from pipeline.cli_support import with_options
from pipeline.prep.build import DEFAULT_SHARD_SIZE
from pipeline.prep.cli import app
from pipeline.prep.commands import audioset, places
from pipeline.prep.commands.options import BuildOptions

SHARED_FLAGS = ["--out", "--workers", "--part", "--shard-size", "--limit", "--progress"]


def flags(command) -> list[str]:
    return [opt for param in get_command(app).commands["shards"].commands[command].params for opt in param.opts]


def test_every_corpus_command_takes_the_shared_flags_once():
    for command in ("places", "audioset", "manifest", "videos"):
        got = flags(command)
        for flag in SHARED_FLAGS:
            assert got.count(flag) == 1, (command, flag)
    assert flags("places")[:2] == ["--metadata", "-m"] and flags("places")[2:4] == ["--out", "-o"]


def test_the_command_receives_one_options_object(tmp_path):
    seen = []

    @with_options
    def toy(name: Annotated[str, typer.Option(help="A corpus option.")] = "x", *, opts: BuildOptions) -> None:
        seen.append((name, opts))

    toy_app = typer.Typer()
    toy_app.command()(toy)
    toy_app.command("other")(lambda: None)
    result = CliRunner().invoke(
        toy_app, ["toy", "--out", str(tmp_path), "--workers", "3", "--limit", "5", "--no-progress", "--name", "y"]
    )
    assert result.exit_code == 0, result.output
    assert seen == [
        (
            "y",
            BuildOptions(
                out=str(tmp_path), workers=3, part="0/1", shard_size=DEFAULT_SHARD_SIZE, limit=5, progress=False
            ),
        )
    ]
    missing = CliRunner().invoke(toy_app, ["toy"])
    assert missing.exit_code == 2 and "--out" in missing.output


def test_corpus_modules_declare_no_shared_option_parameters():
    for module in (places, audioset):
        own = inspect.signature(module.command.__wrapped__).parameters
        assert not set(own) & {"out", "workers", "part", "shard_size", "limit", "progress"}
        assert own["opts"].annotation in (BuildOptions, "BuildOptions")
