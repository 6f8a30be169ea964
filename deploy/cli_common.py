"""What every `python -m deploy` command shares: exit statuses, the one-line error and warning, the
out-of-memory sentence, artifact selection."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Optional

import numpy as np

from deploy.bundle import verify_artifact

from deploy.errors import EXIT_OK, EXIT_PIPE_CLOSED, EXIT_USAGE  # noqa: F401 (the statuses every command shares)
from deploy.errors import EXIT_PARTLY_FAILED as EXIT_INPUTS_FAILED  # noqa: F401

# ONNX Runtime's arena ("Failed to allocate memory"), C++ std::bad_alloc, CUDA and errno ENOMEM texts.
_ALLOCATION_FAILURE = re.compile(r"failed to allocate|bad_alloc|out of memory|cannot allocate memory", re.IGNORECASE)


class UsageError(Exception):
    """A run that cannot go on as asked (nothing to do, a batch that does not fit); the message says what to change."""


def error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def is_allocation_failure(exc: BaseException) -> bool:
    """MemoryError, or a runtime's own exception type whose message says an allocation failed."""
    return isinstance(exc, MemoryError) or bool(_ALLOCATION_FAILURE.search(str(exc)))


def out_of_memory(artifact: str, batch: int, flag: str, smaller: str) -> UsageError:
    if batch <= 1:
        return UsageError(f"out of memory running {artifact} at batch size 1; free memory on this device "
                          "(stop other processes) or use a smaller artifact, e.g. --format onnx-int8")
    return UsageError(f"out of memory running {artifact} at batch size {batch}; try a smaller one, e.g. {flag} {smaller}")


def select(bundle, fmt: Optional[str], precision: Optional[str] = None) -> dict:
    entry = bundle.artifact(fmt, precision)
    verify_artifact(bundle.path, entry)
    return entry


def providers(args: argparse.Namespace) -> list[str]:
    return [p.strip() for p in args.providers.split(",") if p.strip()]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def stdout_closed() -> int:
    # The reader (`| head -1`) has what it wanted. Point stdout at /dev/null so that the interpreter's final
    # flush does not raise again and print "Exception ignored ... BrokenPipeError" on the way out.
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # an in-process caller's stdout may have no file descriptor
        pass
    return EXIT_PIPE_CLOSED
