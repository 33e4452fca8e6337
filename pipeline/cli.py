"""`prep`: build, inspect and repair WebDataset shards.

Each concern registers its own commands here, so this file stays a table of contents.
"""

import typer

app = typer.Typer(no_args_is_help=True, help="Build, inspect and repair WebDataset shards.")
shards_app = typer.Typer(no_args_is_help=True, help="Turn a corpus into shards.")
app.add_typer(shards_app, name="shards")
app.command("extend-is3")(__import__("evaluation.extend_is3", fromlist=["_"]).extend_is3_command)

if __name__ == "__main__":
    app()
