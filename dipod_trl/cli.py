"""How the command-line scripts fail: bad arguments, files, YAML or settings print one `error:` line and exit 2.

Tracebacks stay available behind `--debug` or `DIPOD_DEBUG=1`. Once training has started, only the library's own
stopping errors (a refused checkpoint, a streak of non-finite updates) are shortened; anything else keeps its
traceback, because it is a bug to report rather than a setting to fix.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from contextlib import contextmanager

DEBUG_ENV = "DIPOD_DEBUG"


def debug_requested(argv: Sequence[str] | None) -> tuple[bool, list[str]]:
    """(`--debug` given or `DIPOD_DEBUG` set, the arguments without `--debug`). `argv=None` reads `sys.argv[1:]`."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")
    return debug, [a for a in args if a != "--debug"]


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (KeyError, ImportError, OSError)) and type(error).__name__ not in text:
        text = f"{type(error).__name__}: {text}"
    return text


@contextmanager
def user_errors(debug: bool, catch: tuple[type[BaseException], ...] = (Exception,)):
    """Turn `catch` exceptions into `error: <message>` on stderr and exit status 2 (unless `debug`)."""
    try:
        yield
    except catch as error:
        if debug:
            raise
        print(f"error: {one_line(error)} [traceback: --debug or {DEBUG_ENV}=1]", file=sys.stderr)
        raise SystemExit(2) from None

