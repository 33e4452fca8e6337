"""What every command of the project (``prep``, ``ground``, ``evaluate.py``, ``train.py``,
``pretrain_audio.py``) shares at the command line: its exit codes, the one-line error, and shared
options declared once as a dataclass.

**Exit codes** (docs/reliability.md):

- ``0``: done.
- ``BAD_INPUT`` (2): bad input or configuration (a file, a flag, a value); one line
  ``error: ...`` on stderr naming the file or option and what to do. Typer's own usage errors
  (an unknown flag, a missing option) use 2 as well.
- ``PROBLEMS_FOUND`` (1): the command ran and reports problems it found in its input, each on a
  line of its own (``prep inspect --verify``: damaged samples; ``evaluate.py all``: the tables that
  failed, the others written). An unexpected fault of the program (a Python traceback) also ends
  with 1.

**Shared options** are a frozen dataclass whose fields are ``Annotated`` Typer options; a command
(or a Typer callback, for options given before a subcommand) takes one ``opts: ThatDataclass``
parameter and is decorated with ``with_options``, which shows Typer the fields as flags and hands
the command their values as one object.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import NoReturn

import typer

BAD_INPUT = 2
PROBLEMS_FOUND = 1
OPTIONS_PARAMETER = "opts"


def fail(message: str) -> NoReturn:
    """Print ``error: MESSAGE`` (one plain line: greppable in batch logs) and exit with BAD_INPUT."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(BAD_INPUT)


def _option_parameters(options_class: type) -> list[inspect.Parameter]:
    hints = typing.get_type_hints(options_class, include_extras=True)
    return [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=hints[f.name],
            default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default,
        )
        for f in dataclasses.fields(options_class)
    ]


def with_options(command: Callable) -> Callable:
    """``command(..., opts: SomeOptions)`` as a Typer command (or callback) taking the fields of the
    dataclass ``SomeOptions`` as flags, in field order after the command's own parameters; required
    ones first, the order ``--help`` lists them in."""
    hints = typing.get_type_hints(command, include_extras=True)
    options_class = hints[OPTIONS_PARAMETER]
    own = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
        for p in inspect.signature(command).parameters.values()
        if p.name != OPTIONS_PARAMETER
    ]
    shared = _option_parameters(options_class)
    names = [p.name for p in shared]

    @functools.wraps(command)
    def wrapper(**kwargs):
        opts = options_class(**{name: kwargs.pop(name) for name in names})
        return command(**kwargs, **{OPTIONS_PARAMETER: opts})

    # Keyword-only, so a required option may follow one with a default; sorted() is stable, so each
    # group keeps the declaration order.
    params = sorted([*own, *shared], key=lambda p: p.default is not inspect.Parameter.empty)
    wrapper.__signature__ = inspect.Signature(params, return_annotation=None)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
