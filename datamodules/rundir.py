"""Files the data layer leaves in a run directory (split lists, excluded images) and in its cache, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Iterable, Optional

import xxhash

from deploy.images import name_fields, name_from_fields

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two workers may then both list the same file
    fcntl = None


def write_text_atomic(path: str, text: str, errors: str = "strict") -> None:
    """Write to a temp file beside ``path`` and rename it into place: a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors=errors) as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


CHECKSUM_KEY = "xxh3_128"  # of the object's other keys, as canonical JSON


def _canonical_digest(data: dict) -> str:
    return xxhash.xxh3_128_hexdigest(json.dumps(data, sort_keys=True, separators=(",", ":")).encode())


def write_json_checked(path: str, data: dict, indent: Optional[int] = 1) -> None:
    """A cache file: ``data`` plus a checksum of it, so a reader can tell what was written from what is there now."""
    write_text_atomic(path, json.dumps({**data, CHECKSUM_KEY: _canonical_digest(data)}, indent=indent))


def read_json_checked(path: str) -> tuple[Optional[dict], Optional[str]]:
    """(data, None) when ``path`` holds what ``write_json_checked`` wrote; (None, why not) otherwise, and (None, None)
    when there is no file (a cache not built yet needs no word)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
    if not isinstance(data, dict):
        return None, "is not a JSON object"
    digest = data.pop(CHECKSUM_KEY, None)
    if digest is None:
        return None, "has no checksum (an older version wrote it)"
    if digest != _canonical_digest(data):
        return None, "does not match its checksum (changed since it was written)"
    return data, None


def write_split_lists(run_dir: str, splits: dict[str, Iterable[tuple[str, str]]]) -> list[str]:
    """``split/<name>.jsonl``: one ``{"file": ..., "class": ...}`` JSON object a line per sample, so a split can be
    audited and reused; JSON escapes a tab or a newline in a file name, which a tab-separated line could not hold.
    A name that is not valid UTF-8 is ``{"file_bytes": <base64 of its bytes>, "file_shown": ..., "class": ...}``
    (``deploy.images.name_fields``; ``read_split_list`` gives the name back)."""
    written = []
    for name, rows in splits.items():
        path = os.path.join(run_dir, "split", f"{name}.jsonl")
        write_text_atomic(path, "".join(json.dumps({**name_fields(f), "class": c}, ensure_ascii=False) + "\n"
                                        for f, c in rows))
        written.append(path)
    return written


def read_split_list(run_dir: str, name: str) -> list[tuple[str, str]]:
    """(file, class) rows of a run's ``split/<name>.jsonl``, or of the ``split/<name>.txt`` (file<TAB>class) that
    runs before it wrote. A file is named as ``os.fsdecode`` names it, whatever its bytes."""
    path = os.path.join(run_dir, "split", f"{name}.jsonl")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return [(name_from_fields(row), row["class"]) for row in map(json.loads, f) if row]
    with open(os.path.join(run_dir, "split", f"{name}.txt"), encoding="utf-8", errors="surrogateescape") as f:
        return [tuple(line.rstrip("\n").split("\t", 1)) for line in f if line.strip()]


# excluded_images.txt holds each name as the file system has it, byte for byte (a name that is not UTF-8 stays its
# bytes, as `ls` or `find` print it); read it back with errors="surrogateescape" to get os.fsdecode's names.
def write_excluded(run_dir: str, excluded: list[tuple[str, str]]) -> str:
    """``excluded_images.txt``: one ``file<TAB>reason`` line per image left out of the data set."""
    path = os.path.join(run_dir, "excluded_images.txt")
    write_text_atomic(path, "".join(f"{f}\t{r}\n" for f, r in excluded), errors="surrogateescape")
    return path


def append_excluded_once(run_dir: str, file: str, reason: str) -> bool:
    """Add ``file<TAB>reason`` to ``excluded_images.txt`` unless ``file`` is listed there already; True if added.

    Loader workers of every rank call this when a file goes bad mid-fit; an exclusive lock makes the check and
    the append one step, so each file is listed once per run however many workers and epochs meet it.
    """
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "excluded_images.txt"), "a+", encoding="utf-8", errors="surrogateescape") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        f.seek(0)
        if any(line.split("\t", 1)[0] == file for line in f):
            return False
        f.write(f"{file}\t{reason}\n")  # "a" mode: the write lands at the end whatever was read
        return True
