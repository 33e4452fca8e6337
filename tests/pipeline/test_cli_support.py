"""pipeline.cli_support (the one-line error and its exit code, shared options as one object) and
pipeline.progress (the one progress bar)."""

from dataclasses import dataclass
from typing import Annotated

import typer
from typer.testing import CliRunner

from pipeline.cli_support import BAD_INPUT, fail, with_options
from pipeline.progress import progress_bar


@dataclass(frozen=True)
class Shared:
    level: Annotated[int, typer.Option(min=0, help="A shared level.")] = 1
    name: Annotated[str, typer.Option(help="A shared name.")] = "x"


def test_shared_options_before_a_subcommand_reach_it_as_one_object_and_bad_input_is_one_line():
    app = typer.Typer()
    seen = []

    @app.callback()
    @with_options
    def main(ctx: typer.Context, opts: Shared) -> None:
        if opts.name == "bad":
            fail(f"--name {opts.name!r} is not accepted; pass another")
        ctx.obj = opts

    @app.command()
    def run(ctx: typer.Context, count: Annotated[int, typer.Option(help="Its own option.")] = 0) -> None:
        seen.append((ctx.obj, count))

    runner = CliRunner()
    result = runner.invoke(app, ["--level", "3", "run", "--count", "2"])
    assert result.exit_code == 0, result.output
    assert seen == [(Shared(level=3, name="x"), 2)]
    refused = runner.invoke(app, ["--name", "bad", "run"])
    assert refused.exit_code == BAD_INPUT == 2
    assert refused.output.splitlines() == ["error: --name 'bad' is not accepted; pass another"]
    assert "A shared level." in runner.invoke(app, ["--help"]).output


def test_the_progress_bar_draws_on_stderr_and_not_when_disabled(capsys):
    for _ in progress_bar(3, "things", iterable=range(3)):
        pass
    drawn = capsys.readouterr()
    assert drawn.out == "" and "things: 100%" in drawn.err and "3/3" in drawn.err
    with progress_bar(3, "quiet", enabled=False) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""
