"""NVTX ranges around the stages of one inference, so `nsys profile` shows preprocess / copy in / execute /
copy out on the GPU timeline. The `nvtx` package is optional: without it a range costs one no-op context."""

from __future__ import annotations

import contextlib

try:
    import nvtx as _nvtx
except ImportError:  # a CPU-only device: nothing to annotate for
    _nvtx = None

_COLORS = {"preprocess": "green", "copy in": "blue", "infer": "purple", "execute": "red", "copy out": "yellow"}


def nvtx_range(name: str):
    """A context manager marking `name` on the NVTX timeline (a no-op without the nvtx package)."""
    if _nvtx is None:
        return contextlib.nullcontext()
    return _nvtx.annotate(name, color=_COLORS.get(name, "white"), domain="edgecls")
