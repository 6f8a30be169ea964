"""What both commands (`python main.py`, `python -m deploy`) share about failing: the exit statuses, the debug
switch, and an exception said as one line. Torch-free, so a device without torch imports it.

Exit statuses:
  0    done.
  1    part of the work failed and the rest is done: a fit-end step (`main.py`; the bundle is written without it),
       or some inputs (`deploy`; every other input printed). One `error:` line each on stderr.
  2    a usage, config, data or machine error (a full disk, too little memory): one `error:` line on stderr, and
       nothing already done is lost or changed.
  141  stdout was closed early (`... | head -1`): the command stops quietly, as any Unix tool does.
"""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_PARTLY_FAILED = 1
EXIT_USAGE = 2
EXIT_PIPE_CLOSED = 128 + 13  # what a shell reports for a program killed by SIGPIPE

DEBUG_VARIABLE = "EDGECLS_DEBUG"


def debug_mode() -> bool:
    """EDGECLS_DEBUG set to anything but empty or 0: errors keep their traceback, warnings Python's format."""
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def first_line(exc: BaseException, limit: int = 400) -> str:
    """The first non-empty line of an exception's message (its type where it has none, or where the type is what
    tells a bare KeyError or a bug apart), short enough for a log line."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if not text or not isinstance(exc, (ValueError, RuntimeError, OSError)):
        text = f"{type(exc).__name__}: {text}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def message_line(exc: BaseException) -> str:
    """The first line of an exception's message as it is (its type's name where it has none): for sentences that
    already say what failed around it."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
