"""A recipe's trainer.callbacks may name a shared list file as one of its entries, so that a recipe adds a step of
its own to a shared fit-end chain with one line:

    trainer:
      callbacks:
        - fit_end/minmax.yaml                                     # the shared chain (relative to the recipe)
        - {class_path: size_budget.SizeBudget, init_args: {max_mb: 2.0}}

(`callbacks: fit_end/minmax.yaml` alone, the whole list from a file, is jsonargparse's own and stays as it is.) The
fit-end steps run in the order their inputs allow (callbacks.fit_end.order_steps), so where the line goes in the list
does not matter. jsonargparse checks each list entry as a class, not as a file, while it reads the recipe, so such a
recipe is given to it as its content with the entries spliced in (a YAML string, which --config also takes), its
experiment name kept from the file's name as old_configs does for a migrated file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from cli.errors import UserError
from cli.old_configs import yaml_load

LIST_SUFFIXES = (".yaml", ".yml")


def _is_file(argument: str) -> bool:
    """--config also takes a YAML string (old_configs gives one), which may be too long for a file name."""
    try:
        return Path(argument).is_file()
    except OSError:
        return False


def _is_list_file(entry: Any) -> bool:
    return isinstance(entry, str) and entry.endswith(LIST_SUFFIXES)


def spliced_recipe(recipe: Path) -> Optional[dict[str, Any]]:
    """The recipe with each list-file entry of trainer.callbacks replaced by that file's entries; None where the
    recipe has no such entry."""
    try:
        config = yaml_load(recipe.read_text())
    except Exception:  # noqa: BLE001 (not readable or not YAML: jsonargparse says so in its own sentence)
        return None
    callbacks = (config.get("trainer") or {}).get("callbacks") if isinstance(config, dict) else None
    if not isinstance(callbacks, list) or not any(_is_list_file(c) for c in callbacks):
        return None
    spliced: list[Any] = []
    for entry in callbacks:
        if not _is_list_file(entry):
            spliced.append(entry)
            continue
        listed = recipe.parent / entry
        try:
            steps = yaml_load(listed.read_text())
        except OSError as exc:
            raise UserError(f"{recipe}: trainer.callbacks names {entry}, which cannot be read ({exc.strerror}); give "
                            "a list file's path relative to the recipe, e.g. fit_end/minmax.yaml") from None
        if not isinstance(steps, list):
            raise UserError(f"{recipe}: trainer.callbacks names {entry}, which is not a YAML list of callbacks; "
                            "give a file like experiments/fit_end/minmax.yaml")
        spliced.extend(steps)
    experiment = config.get("experiment") or recipe.stem
    return {**config, "experiment": experiment, "trainer": {**config["trainer"], "callbacks": spliced}}


def splice_callback_lists(argv: list[str]) -> Optional[list[str]]:
    """`argv` with each `--config <recipe>` whose trainer.callbacks names a list file replaced by the recipe with
    the list spliced in; None where no recipe does."""
    import yaml

    out = [part for a in argv for part in (a.split("=", 1) if a.startswith("--config=") else [a])]
    changed = False
    i = 0
    while i < len(out) - 1:
        if out[i] in ("--config", "-c") and _is_file(out[i + 1]):
            spliced = spliced_recipe(Path(out[i + 1]))
            if spliced is not None:
                out[i + 1] = yaml.safe_dump(spliced, sort_keys=False)
                changed = True
        i += 1
    return out if changed else None
