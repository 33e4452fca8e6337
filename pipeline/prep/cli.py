"""`prep`: build, inspect and repair WebDataset shards.

Each concern registers its own commands here, so this file stays a table of contents.
"""

import typer

from pipeline.prep import extend_is3
from pipeline.prep import inspect as inspect_shards
from pipeline.prep.commands import audioset, generic, places, retry
from pipeline.prep.synthetic.cli import synthetic_app

app = typer.Typer(no_args_is_help=True, help="Build, inspect and repair WebDataset shards.")
shards_app = typer.Typer(no_args_is_help=True, help="Turn a corpus into shards.")
app.add_typer(shards_app, name="shards")

shards_app.command("places")(places.command)
shards_app.command("audioset")(audioset.command)
shards_app.command("manifest")(generic.manifest_command)
shards_app.command("videos")(generic.videos_command)
app.command("retry")(retry.command)
app.command("inspect")(inspect_shards.command)
app.command("extend-is3")(extend_is3.extend_is3_command)
app.add_typer(synthetic_app, name="synthetic")

if __name__ == "__main__":
    app()
