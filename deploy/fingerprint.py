"""Hash the files a fit reads into a short fingerprint per name, for the DVC pipeline (dvc.yaml) to depend on.

    python -m deploy.fingerprint models/fingerprint.json code=main.py,lightning_modules quickstart=experiments/quickstart.yaml

writes {"code": "3fa1c2d9", "quickstart": "77ab01ce"}: 8 hex digits of a sha256 over each name's files (a folder
is every file under it but __pycache__/ and *.pyc, as .dvcignore has DVC skip them), their paths included, so a
renamed, added or removed file changes it too. A stage that lists these as `params` re-runs when one of its
entries changes, and `dvc exp show` gives each an 8-character column, where a folder listed in `deps` gets a
36-character hash.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import Iterator, Optional, Sequence

from deploy.atomic import atomic_write_json

DIGITS = 8


def _files(path: str) -> Iterator[str]:
    if os.path.isfile(path):
        yield path
        return
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such file or folder; fix the path in dvc.yaml's fingerprint command")
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        yield from (os.path.join(root, f) for f in files if not f.endswith(".pyc"))


def fingerprint(paths: Sequence[str]) -> str:
    """The first DIGITS hex digits of a sha256 over every file's path (with / separators) and content."""
    digest = hashlib.sha256()
    for name in sorted({os.path.normpath(f).replace(os.sep, "/") for path in paths for f in _files(path)}):
        with open(name, "rb") as handle:
            digest.update(name.encode() + b"\0" + hashlib.sha256(handle.read()).digest())
    return digest.hexdigest()[:DIGITS]


def _entry(text: str) -> tuple[str, list[str]]:
    name, sep, paths = text.partition("=")
    if not (sep and name and paths) or "." in name:
        raise argparse.ArgumentTypeError(f"{text!r}: write NAME=PATH[,PATH...], a name without dots "
                                         "(DVC reads a dot in a params name as nesting), e.g. code=main.py,deploy")
    return name, [p for p in paths.split(",") if p]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.fingerprint", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the JSON file to write, e.g. models/fingerprint.json")
    parser.add_argument("entries", nargs="+", type=_entry, metavar="NAME=PATH[,PATH...]",
                        help="a name and the files and folders it covers, e.g. code=main.py,lightning_modules")
    args = parser.parse_args(argv)
    try:
        values = {name: fingerprint(paths) for name, paths in args.entries}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write_json(args.out, values)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(" ".join(f"{name}={value}" for name, value in values.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
