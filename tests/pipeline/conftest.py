"""Fixtures of the pipeline tests: the session's S3-compatible server (tests/support/s3.py)."""

from tests.support.s3 import s3_env, s3_server  # noqa: F401 - pytest finds fixtures by name
