"""The optimizer and learning-rate schedule, injected from YAML as LightningCLI callables:

    model:
      optimizer:
        class_path: torch.optim.AdamW
        init_args: {lr: 0.003, weight_decay: 0.0005}
      lr_scheduler:
        class_path: lightning_modules.schedules.OneCycleLR

Any torch optimizer and scheduler fits, and only those: a class_path that is not a subclass of torch.optim.Optimizer
(model.optimizer) or torch.optim.lr_scheduler.LRScheduler (model.lr_scheduler) is refused before it is called
(`os.system` with init_args would otherwise run a command). A schedule's length is the fit's where the YAML leaves it unset: ImageClassifier
fills `total_steps` with the optimizer steps left in the fit (stepped every step) and `T_max` with the epochs left
(stepped every epoch); so a schedule rebuilt mid-fit (after structured pruning) covers what is left. The two below are
torch's with those lengths and the peak rate left to the fit and the optimizer.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Callable, Optional

import torch

# Schedule arguments that are a length of the fit: the unit ImageClassifier fills them in and steps the schedule at.
FIT_LENGTH_ARGS = {"total_steps": "step", "T_max": "epoch"}


class OneCycleLR(torch.optim.lr_scheduler.OneCycleLR):
    """torch's one-cycle schedule over the whole fit, stepped every optimizer step. max_lr defaults to the
    optimizer's lr; total_steps to the optimizer steps of the fit (filled in by ImageClassifier)."""

    interval = "step"

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: Optional[int] = None,
                 max_lr: Optional[float] = None, pct_start: float = 0.3, anneal_strategy: str = "cos",
                 div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False) -> None:
        if total_steps is None:
            raise ValueError("OneCycleLR needs total_steps: the fit's optimizer steps, which ImageClassifier fills in")
        peak = [g["lr"] for g in optimizer.param_groups] if max_lr is None else max_lr
        super().__init__(optimizer, max_lr=peak, total_steps=total_steps, pct_start=pct_start,
                         anneal_strategy=anneal_strategy, div_factor=div_factor, final_div_factor=final_div_factor,
                         three_phase=three_phase)


class CosineAnnealingLR(torch.optim.lr_scheduler.CosineAnnealingLR):
    """torch's cosine decay, stepped every epoch; T_max defaults to the epochs of the fit (trainer.max_epochs)."""

    interval = "epoch"

    def __init__(self, optimizer: torch.optim.Optimizer, T_max: Optional[int] = None, eta_min: float = 0.0) -> None:
        if T_max is None:
            raise ValueError("CosineAnnealingLR needs T_max: the fit's epochs, which ImageClassifier fills in")
        super().__init__(optimizer, T_max=T_max, eta_min=eta_min)


# What each setting may name (the base class, and the words and the example of the refusal).
KINDS = {"optimizer": (torch.optim.Optimizer, "a torch optimizer (a subclass of torch.optim.Optimizer)",
                       "torch.optim.AdamW"),
         "lr_scheduler": (torch.optim.lr_scheduler.LRScheduler, "a torch learning-rate scheduler (a subclass of "
                          "torch.optim.lr_scheduler.LRScheduler)", "lightning_modules.schedules.OneCycleLR")}


def check_class(value: Any, what: str, import_modules: bool = True) -> type:
    """The class an optimizer (what="optimizer") or scheduler ("lr_scheduler") setting names: a class, a callable of
    one (functools.partial, LightningCLI's), or a dotted class path; ValueError naming the setting where it is not a
    subclass of torch's base class. Nothing is called. import_modules=False (a class path read from a checkpoint):
    it resolves only in modules already imported (torch.optim, lightning_modules.schedules), importing none."""
    base, kind, example = KINDS[what]
    cls = _resolve(value, what, import_modules) if isinstance(value, str) else arguments(value)[0]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        shown = value if isinstance(value, str) else getattr(cls, "__qualname__", None) or repr(value)
        raise ValueError(f"--model.{what}.class_path {shown!r} is not {kind}; name one, e.g. {example}")
    return cls


def _resolve(class_path: str, what: str, import_modules: bool) -> Any:
    import sys

    module, _, name = class_path.rpartition(".")
    if not module or (not import_modules and module not in sys.modules):
        return None  # refused by check_class: a bare name, or a module a checkpoint would have imported
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError as exc:
        raise ValueError(f"--model.{what}.class_path {class_path!r} does not import ({exc})") from None


def arguments(factory: Any) -> tuple[Optional[type], dict[str, Any]]:
    """The class and the arguments given of an optimizer or scheduler callable: a class, a functools.partial of
    one, or the callable LightningCLI builds from `class_path`/`init_args` (None for a plain function)."""
    if isinstance(factory, type):
        return factory, {}
    given = dict(getattr(factory, "keywords", None) or {})
    target = getattr(factory, "func", None)
    if isinstance(target, type):
        return target, given
    # jsonargparse's callable: a partial of its instantiation helper whose first positional argument is the class
    cls = next((a for a in getattr(factory, "args", ()) if isinstance(a, type)), None)
    return cls, given


def fit_lengths(factory: Any) -> dict[str, Any]:
    """The fit-length arguments (FIT_LENGTH_ARGS) a scheduler callable takes, with their given values (None: unset)."""
    cls, given = arguments(factory)
    accepted = set(inspect.signature(cls).parameters) if cls is not None else set(given)
    return {k: given.get(k) for k in FIT_LENGTH_ARGS if k in accepted}


def signature_defaults(cls: Optional[type]) -> dict[str, Any]:
    if cls is None:
        return {}
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def as_config(factory: Any) -> Any:
    """The `class_path`/`init_args` form of a callable, as LightningCLI writes it to config.yaml and the checkpoint:
    plain data, so `torch.load(weights_only=True)` reads the checkpoint back."""
    if factory is None or isinstance(factory, dict):
        return factory
    cls, given = arguments(factory)
    if cls is None:
        return repr(factory)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": given}


def from_config(value: Any, what: str, import_modules: bool = True) -> Any:
    """The callable of a `class_path`/`init_args` dict (a checkpoint's hparams loaded without LightningCLI), its
    class checked first (check_class)."""
    if not isinstance(value, dict):
        return value
    cls = check_class(str(value.get("class_path")), what, import_modules)
    return functools.partial(cls, **(value.get("init_args") or {}))


def describe(factory: Any) -> dict[str, Any]:
    """Name and settings as a person reads them: {"name": "AdamW", "lr": 0.003, ...} (given or the class default)."""
    if factory is None:
        return {"name": "none"}
    cls, given = arguments(factory)
    settings = {**signature_defaults(cls), **given}
    return {"name": cls.__name__ if cls is not None else getattr(factory, "__name__", repr(factory)), **settings}


def build(factory: Callable[..., Any], first: Any, fill: dict[str, Any], what: str) -> Any:
    """Call an optimizer/scheduler callable, turning the library's own refusal into one sentence naming the setting."""
    try:
        return factory(first, **fill)
    except (ValueError, TypeError) as exc:
        name = describe(factory)["name"]
        raise ValueError(f"model.{what} ({name}) refused its settings: {exc}") from None
