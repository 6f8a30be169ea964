"""A user's mistake said in one sentence: jsonargparse's and argparse's nested messages condensed, a misspelt option
named with its closest match, an older edgecls's key with today's, a YAML file that does not load with its line."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

from cli.errors import DISK_FULL, allocation_failed
from cli.old_configs import todays_option, todays_value
from training.checkpoint_io import DiskFull


def one_sentence(exc: BaseException, command: str, argv: list[str], options: Sequence[str] = ()) -> str:
    """The error as one line: our own messages already are; jsonargparse's nested ones are condensed. `options`:
    the command's long options, to name the one a misspelt option was meant to be."""
    from argparse import ArgumentError

    text = str(exc).strip()
    if isinstance(exc, ArgumentError):
        return parse_error_sentence(exc, command, argv, options)
    if isinstance(exc, OSError) and not isinstance(exc, DiskFull) and exc.errno in DISK_FULL:
        folder = os.path.dirname(os.path.abspath(exc.filename)) if exc.filename else os.getcwd()
        try:
            free = f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free"
        except OSError:
            free = "free space unknown"
        return (f"no space left on the disk holding {folder} ({free}) while writing {exc.filename or 'a file'}; the "
                "checkpoints already written are kept: free space and resume with --ckpt_path last")
    size = allocation_failed(exc)
    if size is not None:
        return (f"out of memory: allocating {size or 'memory'} failed, so the images and the network do not fit at "
                "these settings; lower data.image_size or data.batch_size (data.eval_batch_size), or data.num_workers")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) <= 1:
        return text or type(exc).__name__
    return f"{lines[0].rstrip(':')} (EDGECLS_DEBUG=1 shows the details)"


def _type_name(text: str) -> str:
    text = re.sub(r"<class '([\w.]+)'>", r"\1", text)
    text = re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", text)  # pytorch_lightning.x.Callback -> Callback
    text = re.sub(r"(?:typing\.)?Literal\[(.*?)\]", r"\1", text)  # Literal['a', 'b'] -> 'a', 'b'
    return text.replace("NoneType", "null")


def _cause(exc: BaseException, kind: type) -> Optional[BaseException]:
    """The exception of `kind` that `exc` was raised from (jsonargparse re-raises its causes as ArgumentError)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def parse_error_sentence(exc: BaseException, command: str, argv: list[str], options: Sequence[str] = ()) -> str:
    """jsonargparse's error as one sentence. What its exceptions carry as objects is read from them: the YAML
    loader's error (a config that is not YAML) and the KeyError of a key no parser of the subcommand has, which
    carries that parser (the key itself is only in its message). A bad value, an unknown command-line option and a class_path that does not import are
    text only (ArgumentError's argument_name is None, the TypeError/ValueError it was raised from has no fields),
    so those are read from the message."""
    import yaml

    text = str(exc).strip()
    help_hint = f"see 'python main.py {command} --help'" if command else "see 'python main.py --help'"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    head = lines[0] if lines else text
    if _cause(exc, yaml.YAMLError) is not None:
        return yaml_syntax_sentence(argv) or re.sub(r"\s+", " ", " ".join(lines))
    unknown_key = _cause(exc, KeyError)  # jsonargparse's NSKeyError, with the parser that has no such key
    if unknown_key is not None and getattr(unknown_key, "subcommand_parser", None) is not None:
        subcommand = unknown_key.subcommand_parser.prog.split()[-1]
        key = re.search(r"option '([^']+)'", str(unknown_key.args[0] if unknown_key.args else unknown_key))
        if key:
            return (f"{key.group(1)} is not a setting of '{subcommand}' (a misspelt or misplaced key in the YAML or "
                    f"on the command line); {help_hint}")
    match = re.match(r'Parser key "([^"]+)":\s*(.*)', head)
    if not match:
        if head.startswith("unrecognized arguments"):
            return unknown_option_sentence(head, command, options) + f"; {help_hint}"
        return re.sub(r"\s+", " ", " ".join(lines))
    key, rest = match.group(1), " ".join([match.group(2), *lines[1:]]).strip()
    given = _given_value(argv, key)
    now = todays_value(key, given)
    if now is not None:  # a name of an older edgecls's README
        return f"{key}: {given!r} is an older edgecls's name, now {now} (--{key} {now})"
    class_path = re.search(r"Problem with given class_path '([^']+)':\s*(.*?)(?:\s+- |$)", rest)
    if class_path:
        return f"{key}: class_path '{class_path.group(1)}' cannot be used ({class_path.group(2).strip()})"
    value = re.search(r"Given value: (.*)$", rest) or re.search(r"Got value: (.*)$", rest)
    subtypes = re.search(r"Subtypes: \[(.*?)\] Errors:", rest)
    expected = re.search(r"Expected a (.*?)\. Got value:", rest)
    wanted = subtypes.group(1) if subtypes else expected.group(1) if expected else ""
    if value and wanted:
        return f"{key}: {value.group(1).strip()!r} is not a valid value (expected {_type_name(wanted)}); {help_hint}"
    return f"{key}: " + re.sub(r"\s+", " ", rest)


def _given_value(argv: Sequence[str], key: str) -> Optional[str]:
    """The value the command line gave `--key` (the last one), if it did."""
    given = None
    for i, arg in enumerate(argv):
        if arg == f"--{key}" and i + 1 < len(argv):
            given = argv[i + 1]
        elif arg.startswith(f"--{key}="):
            given = arg.split("=", 1)[1]
    return given


def long_options(parsers: Sequence[Any], command: str) -> list[str]:
    """The long options `command`'s parser accepts (every parser's, where the command is not known)."""
    mine = [p for p in parsers if p.prog.split()[-1] == command] or parsers
    # argparse keeps a parser's option strings only in this private mapping (no public accessor)
    return sorted({o for p in mine for o in p._option_string_actions if o.startswith("--")})


def unknown_option_sentence(head: str, command: str, options: Sequence[str]) -> str:
    """`unrecognized arguments: --trainer.max_epoch 3` as the option that is not one and the option it is closest to."""
    import difflib

    unknown = [a.split("=", 1)[0] for a in head.split(":", 1)[1].split() if a.startswith("--")]
    if not unknown:
        return head
    option = unknown[0]
    now = todays_option(option)  # a key of an older edgecls's README
    if now is not None:
        return f"{option} is not {f'an option of {command!r}' if command else 'an option'}: it is an older edgecls's key, now {now}"
    # among options as deep as it (--model.lrr is not --model, a whole group's)
    close = difflib.get_close_matches(option, [o for o in options if o.count(".") == option.count(".")], 1, 0.75)
    where = f"an option of '{command}'" if command else "an option"
    return f"{option} is not {where}" + (f" (the closest is {close[0]})" if close else "")


def yaml_syntax_sentence(argv: list[str]) -> Optional[str]:
    """jsonargparse says a config is not YAML but not which one: find the --config file that does not load."""
    import yaml

    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for name in files:
        try:
            yaml.safe_load(Path(name).read_text())
        except OSError:
            continue
        except yaml.YAMLError as exc:
            mark, context = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or "a syntax error"
            # PyYAML notices an unclosed bracket only at the next key; where it opened is the line to fix
            opened = f" ({exc.context} opened at line {context.line + 1})" if context is not None and exc.context else ""
            return f"{name} is not valid YAML{at}: {problem}{opened}; fix the file"
    return None
