"""The `prep` Typer commands that build and repair shards: each parses its options, calls a corpus
reader (``pipeline.prep.places``, ``pipeline.prep.audioset``) or ``pipeline.prep.retry``, and turns
their ``ValueError`` into the one-line ``error: ...`` with exit code 2."""
