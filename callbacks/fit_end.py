"""What every fit-end step shares: its paths, its place in the chain, the records, and the failure rule.

At `on_fit_end` the strategy has already torn down (the model is back on the CPU, DDP unwrapped), and
`trainer.log_dir` broadcasts across ranks, so paths are computed in `setup` on every rank and the work itself
happens on rank zero only.

The failure rule: training is done and its checkpoints are on disk, so nothing at fit end may lose them. A step
that raises is recorded as failed with one sentence (printed, and written into the manifest and the report); the
steps that need its output record themselves as skipped with why; the others run, and the bundle is written.
`EDGECLS_DEBUG=1` lets the exception through with its traceback instead.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning import Callback

from deploy.errors import debug_mode
from deploy.errors import first_line as one_sentence
from callbacks.records import FAILED, SKIPPED, ArtifactRecord, FitEndRecord
from training.checkpoint_io import read_checkpoint

STAGING = ".bundle-staging"  # artifacts collect here; DeployBundle renames it to bundle/ when all is written
BUNDLE = "bundle"

# Which step class (its class path, as a recipe names it) makes each "format:precision", for the hint of a missing
# step (filled by __init_subclass__).
PRODUCERS: dict[str, str] = {}


# Below this much free space a step's odd failure (a half-written ONNX that no longer parses) is a full disk.
LOW_DISK_BYTES = 32 * 2**20


def disk_full_sentence(exc: BaseException, folder: Path) -> Optional[str]:
    """One sentence for a step that failed because the disk filled (ENOSPC/EDQUOT raised, or an error reading back
    a file the full disk truncated), naming the folder and its free space; None for any other failure."""
    import errno

    raised = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if not raised and free >= LOW_DISK_BYTES:
        return None
    return (f"no space left on the disk holding {folder} ({free / 1e6:.0f} MB free); the checkpoints are kept: free "
            "space and fit again")


def parse_key(key: str) -> tuple[str, str, Optional[str]]:
    """"format:precision[@runtime]" -> (format, precision, runtime or None)."""
    head, _, runtime = key.partition("@")
    fmt, _, precision = head.partition(":")
    return fmt, precision, runtime or None


def key_matches(wanted: str, made: str) -> bool:
    """A produced key satisfies a consumed one: same format and precision, and the same runtime where one is asked."""
    w, m = parse_key(wanted), parse_key(made)
    return w[:2] == m[:2] and (w[2] is None or w[2] == m[2])


class FitEnd(Callback):
    """The owner of the fit-end chain: it holds the run's record, the staging folder, the best model (loaded
    once) and the summary, and runs the steps (every FitEndStep in trainer.callbacks, in the order their inputs
    allow: see order_steps) under the failure rule of the module docstring. Found by type (`FitEnd.of(trainer)`); the CLI adds one to every
    trainer, and the first step adds one to a trainer built by hand."""

    def __init__(self, checkpoint: Optional[str] = None) -> None:
        self.checkpoint = checkpoint  # the checkpoint the steps start from instead of the best (`bundle --checkpoint`)
        self.record = FitEndRecord()
        self.steps: list[FitEndStep] = []
        self.run_dir: Optional[Path] = None
        self.staging: Optional[Path] = None
        self.defer_summary = False  # set by the CLI, which prints the bundle table as the last thing of a fit
        self.summary: Optional[str] = None
        self._best: Optional[tuple[pl.LightningModule, str]] = None

    @staticmethod
    def of(trainer: pl.Trainer) -> Optional["FitEnd"]:
        return next((c for c in trainer.callbacks if isinstance(c, FitEnd)), None)

    @property
    def failures(self) -> list[str]:
        """One sentence per step that failed in this fit (empty when all went well or none ran)."""
        return [f"{f.step}: {f.sentence}" for f in self.record.failures]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.steps = order_steps([c for c in trainer.callbacks if isinstance(c, FitEndStep)])
        self.run_dir = Path(trainer.log_dir or trainer.default_root_dir)  # every rank: log_dir broadcasts
        self.staging = self.run_dir / STAGING
        for step in self.steps:
            step.chain, step.run_dir, step.staging = self, self.run_dir, self.staging
        self.record, self.summary, self._best = FitEndRecord(), None, None
        if self.steps and trainer.is_global_zero:
            # A staging folder left by a killed fit is stale: the chain starts it afresh.
            shutil.rmtree(self.staging, ignore_errors=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.steps or not self.should_run(trainer):
            return
        if trainer.global_step == 0:  # no optimizer step (limit_train_batches 0, ...): nothing worth a bundle
            print("fit-end steps skipped: the fit trained no step, so there is no bundle of an untrained "
                  "model; check trainer.limit_train_batches and the train split", file=sys.stderr, flush=True)
            return
        try:
            for step in self.steps:
                self.run_step(step, trainer, pl_module)
        finally:
            self._best = None  # the copy is not kept past the chain

    @staticmethod
    def should_run(trainer: pl.Trainer) -> bool:
        return trainer.is_global_zero and not trainer.interrupted and not trainer.fast_dev_run and trainer.state.fn == "fit"

    def run_step(self, step: "FitEndStep", trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = self.record
        missing = [key for key in step.requires() if record.find(*parse_key(key)) is None]
        if missing:
            step.skip(record, step.missing_reason(record, missing))
            return
        self.staging.mkdir(parents=True, exist_ok=True)
        try:
            step.run(trainer, pl_module, record)
        except StepSkipped as skipped:
            step.skip(record, str(skipped))
        except Exception as exc:
            if debug_mode():
                raise
            sentence = disk_full_sentence(exc, self.staging) or one_sentence(exc)
            record.fail(step.name, sentence)
            step.on_failure(record, sentence)
            print(f"fit-end step {step.name} failed: {sentence}; the other steps go on "
                  "(EDGECLS_DEBUG=1 shows the traceback)", file=sys.stderr, flush=True)

    def best_model(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[pl.LightningModule, str]:
        """The best checkpoint's model (CPU, eval mode) and where it came from, loaded once for every step. Steps
        read it; a step that changes weights (QAT) works on its own copy."""
        if self._best is None:
            self._best = best_model(trainer, pl_module, self.checkpoint)
        return self._best

    def publish_summary(self, summary: str) -> None:
        if self.defer_summary:
            self.summary = summary  # the CLI prints it last, after its own test line
        else:
            print(summary, flush=True)


class StepSkipped(Exception):
    """Raised by a step's run() when it cannot run here (a runtime not installed): recorded as skipped, with the
    message as the reason, not as a failure."""


class FitEndStep(Callback):
    """Base class of the fit-end steps: Lightning callbacks that FitEnd runs at fit end, each after the steps
    that make what it consumes (in the order listed where that allows either; see order_steps).

    A step declares what it consumes and produces as "format:precision[@runtime]" keys (`consumes()`,
    `produces()`) and does its work in `run(trainer, pl_module, record)`, publishing what it made into the record.
    FitEnd checks the order at fit start, skips the step (recorded, with why) when an input in `requires()` (by
    default all it consumes) is missing, and turns an exception into a failed record instead of a lost bundle.
    """

    PRODUCES: tuple[str, ...] = ()
    LISTS_UNAVAILABLE = False  # prints every skipped or failed artifact with its reason (the bundle's table)
    COLLECTS = False  # reads what every other step made and noted (the bundle): runs after all of them

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for key in cls.PRODUCES:
            PRODUCERS.setdefault(key, class_path(cls))

    def __init__(self) -> None:
        self.chain: Optional[FitEnd] = None
        self.run_dir: Optional[Path] = None
        self.staging: Optional[Path] = None

    @property
    def name(self) -> str:
        return type(self).__name__

    def consumes(self) -> tuple[str, ...]:
        return ()

    def requires(self) -> tuple[str, ...]:
        """The inputs without which the step does nothing at all (a step that makes several outputs from
        different inputs narrows this and records the rest itself)."""
        return self.consumes()

    def produces(self) -> tuple[str, ...]:
        return self.PRODUCES

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and FitEnd.of(trainer) is None:
            # A trainer built by hand (a notebook, a test): the chain's owner joins it. Appended while Lightning
            # iterates the callbacks for this hook, so its own setup runs in this same pass: a built trainer has no
            # public way to take a callback, and a list appended to during iteration visits the new item.
            trainer.callbacks.append(FitEnd())

    def best_model(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[pl.LightningModule, str]:
        return self.chain.best_model(trainer, pl_module)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: FitEndRecord) -> None:
        raise NotImplementedError

    def skip(self, record: FitEndRecord, reason: str) -> None:
        """Record each output this step would have made as skipped (not a failure)."""
        for key in self.produces():
            fmt, precision, _ = parse_key(key)
            record.publish(ArtifactRecord(self.name, fmt, precision, self.runtime_for(key), SKIPPED, reason=reason))
        print(self.skip_message(reason), file=sys.stderr, flush=True)

    def skip_message(self, reason: str) -> str:
        return f"fit-end step {self.name} skipped: {reason}"

    def listed_later(self) -> bool:
        """A later step of the chain prints what this one did not make, with the reason."""
        steps = self.chain.steps if self.chain is not None else []
        return any(s.LISTS_UNAVAILABLE for s in steps[steps.index(self) + 1:]) if self in steps else False

    def on_failure(self, record: FitEndRecord, sentence: str) -> None:
        """Record each output this step did not make as failed; steps may publish finer records first."""
        made = {(r.format, r.precision) for r in record.artifacts if r.step == self.name}
        for key in self.produces():
            fmt, precision, _ = parse_key(key)
            if (fmt, precision) not in made:
                record.publish(ArtifactRecord(self.name, fmt, precision, self.runtime_for(key), FAILED, reason=sentence))

    def runtime_for(self, key: str) -> str:
        return parse_key(key)[2] or "any"

    def missing_reason(self, record: FitEndRecord, missing: list[str]) -> str:
        parts = []
        for key in missing:
            fmt, precision, runtime = parse_key(key)
            earlier = record.find(fmt, precision, runtime=runtime, status=None)
            if earlier is not None:
                parts.append(f"its input {key} was {earlier.status} in {earlier.step} ({earlier.reason})")
            else:
                parts.append(f"no earlier step made its input {key}")
        return "; ".join(parts)


def class_path(cls: type) -> str:
    """How a recipe names a step class: callbacks.<Class> for the ones the callbacks package exports, else
    <module>.<Class> (a user's own module)."""
    module = cls.__module__
    if module.startswith("callbacks.") and module.count(".") == 1:
        import callbacks

        if cls.__name__ in callbacks.__all__:
            return f"callbacks.{cls.__name__}"
    return f"{module}.{cls.__qualname__}"


def order_steps(steps: list[FitEndStep]) -> list[FitEndStep]:
    """The steps in the order they run: each after the first listed step that makes an input it consumes, the
    collecting steps (DeployBundle) after all others, and otherwise as listed. So a recipe adds a step with one
    line anywhere in trainer.callbacks (e.g. after a shared list: see cli/recipe_lists.py). A consumed input no
    step makes, or steps that need each other's output, are one sentence at fit start, not a failure at fit end."""
    for step in steps:
        for key in step.consumes():
            if not any(key_matches(key, made) for s in steps for made in s.produces()):
                raise ValueError(
                    f"{class_path(type(step))} needs {key}, which no step in trainer.callbacks makes; add "
                    f"'- class_path: {_producer_of(key)}' to trainer.callbacks in the experiment YAML")
    placed: list[FitEndStep] = []
    for group in ([s for s in steps if not s.COLLECTS], [s for s in steps if s.COLLECTS]):
        waiting = list(group)
        while waiting:
            made = [key for s in placed for key in s.produces()]
            ready = next((s for s in waiting if all(any(key_matches(k, m) for m in made) for k in s.consumes())), None)
            if ready is None:
                names = ", ".join(class_path(type(s)) for s in waiting)
                raise ValueError(f"the fit-end steps {names} each need an output another of them makes, so none can "
                                 "run first; remove one of them from trainer.callbacks")
            placed.append(ready)
            waiting.remove(ready)
    return placed


def _producer_of(key: str) -> str:
    """The built-in step that makes `key` (for the hint of an order error): every step module is imported first,
    as the package imports them on first use."""
    import callbacks

    for name in callbacks.__all__:
        getattr(callbacks, name)
    return next((path for made, path in PRODUCERS.items() if key_matches(key, made)), "<the step that makes it>")


def fit_end_record(trainer: pl.Trainer) -> FitEndRecord:
    """The record of the trainer's current fit (an empty one where the trainer has no fit-end chain)."""
    chain = FitEnd.of(trainer)
    return chain.record if chain is not None else FitEndRecord()


def fit_end_failures(trainer: pl.Trainer) -> list[str]:
    """One sentence per fit-end step that failed in this fit (empty when all went well or none ran)."""
    chain = FitEnd.of(trainer)
    return chain.failures if chain is not None else []


def best_model(trainer: pl.Trainer, pl_module: pl.LightningModule,
               checkpoint: Optional[str] = None) -> tuple[pl.LightningModule, str]:
    """A CPU, eval-mode copy of the module holding the best checkpoint's weights (or `checkpoint`'s; the final ones
    where there is no checkpoint); the trained module's own state and mode stay as they are."""
    model = copy.deepcopy(pl_module).cpu().to(memory_format=torch.contiguous_format)  # channels_last on a GPU
    path = checkpoint or getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
    source = "final weights"
    if path and os.path.isfile(path):
        checkpoint = read_checkpoint(path, "bundle another checkpoint of the run (bundle --run ... --checkpoint)", mmap=False)
        model.on_load_checkpoint(checkpoint)  # rebuilds a pruned architecture where the checkpoint has one
        model.load_state_dict(checkpoint["state_dict"])
        source = path
    return model.eval(), source


class NetworkBatches:
    """(x, y) of a loader with x as the network takes it: a DataModule's loaders carry uint8 images, which their
    collate_fn's ``normalize`` turns into the normalized float32 input (other loaders pass through as they are).
    Re-iterable, with a length, like the loader."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.dataset = getattr(loader, "dataset", None)
        self._normalize = getattr(getattr(loader, "collate_fn", None), "normalize", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            yield (self._normalize(x) if self._normalize is not None else x), y


def numpy_batches(loader, limit: Optional[int] = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(x float32 NCHW, y int64) batch by batch from a DataLoader, up to `limit` samples; never a whole split."""
    n = 0
    for x, y in NetworkBatches(loader):
        x, y = x.numpy().astype(np.float32, copy=False), y.numpy()
        if limit is not None and n + len(y) > limit:
            x, y = x[: limit - n], y[: limit - n]
        if len(y):
            yield x, y
        n += len(y)
        if limit is not None and n >= limit:
            return


def first_batch(loader, size: int) -> np.ndarray:
    """Up to `size` images from the start of a loader, as one array (parity checks, error ranking)."""
    return np.concatenate([x for x, _ in numpy_batches(loader, limit=size)])


def evaluate(infer, batches, confusion: Optional[np.ndarray] = None) -> dict[str, float]:
    """Top-1 (and top-5 where there are more than 5 classes) of `infer(x) -> logits`, streamed batch by batch;
    `confusion` (K x K, rows true, columns predicted) is added to in place where given."""
    correct1 = correct5 = total = 0
    classes = 0
    for x, y in batches:
        logits = np.asarray(infer(x))
        classes = logits.shape[1]
        predicted = logits.argmax(axis=1)
        if confusion is not None:
            np.add.at(confusion, (y, predicted), 1)
        correct1 += int((predicted == y).sum())
        if classes > 5:
            top = np.argpartition(-logits, 5, axis=1)[:, :5]
            correct5 += int((top == y[:, None]).any(axis=1).sum())
        total += len(y)
    if total == 0:
        raise ValueError("the split to evaluate on holds no images")
    out = {"top1": correct1 / total, "samples": total}
    if classes > 5:
        out["top5"] = correct5 / total
    return out


def input_size(pl_module: pl.LightningModule) -> tuple[int, int]:
    example = getattr(pl_module, "example_input_array", None)
    if isinstance(example, torch.Tensor) and example.ndim == 4:
        return int(example.shape[2]), int(example.shape[3])
    raise ValueError(f"{type(pl_module).__name__} has no example_input_array of shape [1, 3, H, W] to size the export")
