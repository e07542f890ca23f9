"""The kit's input errors and the one-line error wrapper every entry point uses.

A bad study name, override, config value, data file, model source or claims file raises one of the
:data:`INPUT_ERRORS` before any work; entry points (``studykit``, ``python -m studykit.train`` / ``.score`` /
``.nuggets``) print it as one line and exit with status 2.
"""
from __future__ import annotations

import sys
from typing import Callable


class ConfigError(ValueError):
    """A study name, override or config value that does not compose or is not allowed."""


class DataError(ValueError):
    """Malformed or empty input data; the message names the source, the row and the field."""


class ModelSourceError(RuntimeError):
    """The configured model cannot be found or loaded (missing package, file or path)."""


class ClaimsError(ValueError):
    """A claims file that does not follow the schema."""


INPUT_ERRORS = (ConfigError, DataError, ModelSourceError, ClaimsError)


def one_line_errors(entry_point: Callable[[], None], prog: str) -> int:
    """Run ``entry_point``; an input error becomes one line on stderr and exit status 2 (0 on success)."""
    try:
        entry_point()
    except INPUT_ERRORS as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0
