"""Benchmarks, each a script: `python bench/<name>.py --help`."""
