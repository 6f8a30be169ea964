"""The edgecls command (`python main.py fit --config experiments/quickstart.yaml`, or `edgecls`): the composition root.

LightningCLI with fit / validate / test / predict. Defaults a YAML does not have to repeat: a TensorBoard run
under runs/<experiment>/version_N, checkpoints (best val/top1 and last), learning-rate logging, a rich progress
bar; `fit` ends by testing the best checkpoint on the test split. `validate`, `test` and `predict` with a run's
checkpoint write their files into that run, under version_N/<command>/, and their metrics into its TensorBoard run.

`python main.py bundle --run runs/<experiment>/version_N` runs the fit-end chain again from that run's best
checkpoint into its bundle/ (after an interrupt during the fit-end steps, or with other fit-end settings).

Exit status:
  0  done.
  1  a fit-end step failed (ONNX export, INT8, TensorRT, bundle): the bundle was written without it, or there is
     no bundle when the ONNX export itself failed; one `error: fit-end step failed: ...` line per step on stderr.
  2  a usage, config or data error: one `error: <sentence>` line on stderr, and nothing of a run is left behind
     or changed. EDGECLS_DEBUG=1 shows the full traceback instead.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: a thread waiting at a barrier sleeps instead of spinning. On a CPU shared with other
# jobs, spinning threads wait for a descheduled sibling while burning the cores it needs; measured with
# benchmarks/contention.py. Set OMP_WAIT_POLICY yourself to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

from pytorch_lightning import Callback, Trainer
from pytorch_lightning.callbacks import BasePredictionWriter, LearningRateMonitor, ModelCheckpoint, ModelSummary, ProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.plugins.io import CheckpointIO
from pytorch_lightning.utilities import rank_zero_info

from callbacks.fit_end import FitEnd
from datamodules import ImageClassificationDataModule
from lightning_modules import ImageClassifier, schedules
from training.best_checkpoint import BestCheckpoint
from training.checkpoint_io import AtomicCheckpointIO
from training.console import EpochLines, FitEndSafeProgressBar
from training.leaderboard import Leaderboard
from training.predictions import PredictionsCSV
from training.run_logger import RunLogger
from cli.errors import Invocation, LoopStarted, UserError, is_user_error
from cli.sentences import long_options, one_sentence
from cli.recipe_lists import splice_callback_lists
from cli.old_configs import migrate_config_arguments, yaml_load
from cli.resume import bundle_arguments, check_checkpoint_matches, check_resume
from deploy.errors import EXIT_PARTLY_FAILED, EXIT_USAGE, debug_mode
from deploy.run_folder import config_file, last_checkpoint, newest_resumable_run, run_number, run_of_checkpoint
from training.checkpoint_io import read_checkpoint

RUNS_DIR = "runs"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")  # --ckpt_path values that name no file

# Lightning 2.6 internals call a torch pytree API that torch 2.14 deprecates; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# A run's checkpoints/ holds files only when this command resumes or bundles that run (a new fit gets a new
# version_N), so Lightning's "Checkpoint directory ... exists and is not empty" only ever names the run's own files.
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
# cli_main hands LightningCLI the arguments it rewrote (bundle --run, an old config's keys): on purpose.
warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")


class _NothingToSay(logging.Filter):
    """Lightning's info lines that tell this project's user nothing, among the ones that do (which, like ours, come
    through the same rank_zero logger, so its level cannot tell them apart)."""

    LINES = ("💡 Tip:",  # cloud services (litlogger, litmodels) advertised on every run
             "Trainer already configured with model summary",  # ours (whole type names) stands in its place
             "GPU available: False,",  # no GPU to use: it trains on the CPU (one with a GPU says whether it is used)
             "TPU available: ",
             "Loading `train_dataloader` to estimate number of stepping batches",
             "`Trainer.fit` stopped: `max_epochs=",  # the last epoch line says so
             "Restoring states from the checkpoint path at ")  # the next line says the same: restored or loaded

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.LINES)


for _name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_NothingToSay())
# "Seed set to 42" would be the first line of every command, before a config error's one line; config.yaml keeps it.
logging.getLogger("lightning_fabric.utilities.seed").setLevel(logging.WARNING)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """`warning: <message>` without the file, line number and source line Python adds (a `rank_zero_warn(...)`
    call of ours or Lightning's means nothing to a user); EDGECLS_DEBUG=1 keeps Python's own format."""
    return f"warning: {message}\n"


class EdgeCLI(LightningCLI):
    """LightningCLI with edgecls's links and defaults."""

    def __init__(self, *args: Any, invocation: Optional[Invocation] = None, bundle_run: Optional[Path] = None,
                 bundle_checkpoint: Optional[Path] = None, **kwargs: Any) -> None:
        self.invocation = invocation or Invocation()
        self._resume_run: Optional[Path] = None
        self._bundle_run = bundle_run  # `bundle --run`: the fit-end chain again, in that run
        # Every trainer gets these two: the fit-end chain's owner (a no-op without fit-end steps) and the marker of
        # set-up's end. The defaults below that depend on the YAML (a checkpoint callback unless it has one, a bar
        # or epoch lines by terminal) are added in instantiate_trainer: trainer_defaults cannot express "unless".
        defaults = dict(kwargs.pop("trainer_defaults", None) or {})
        chain = FitEnd(str(bundle_checkpoint) if bundle_checkpoint is not None else None)
        defaults["callbacks"] = [*defaults.get("callbacks", []), chain, LoopStarted(self.invocation)]
        super().__init__(*args, trainer_defaults=defaults, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # No prefix matching: argparse would read a misspelt --trainer.max_epoch as --trainer.max_epochs. Set on the
        # main parser, as jsonargparse's add_subcommand copies the main parser's allow_abbrev onto each subcommand's.
        kwargs.setdefault("allow_abbrev", False)
        parser = super().init_parser(**kwargs)
        self.invocation.parsers.append(parser)
        return parser

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:  # the command's own `test/top1 = ...` line; Lightning's boxed table with --verbose true
            self.parser.set_defaults({"validate.verbose": False, "test.verbose": False})

    def _parse_ckpt_path(self) -> None:
        # An override of LightningCLI's private step: it has no public hook between parsing and applying a checkpoint's
        # hyperparameters, which is the step that must not happen here.
        # LightningCLI would parse the checkpoint's hyperparameters over the model settings here, and so import and
        # call every class_path and module a checkpoint names (a downloaded .ckpt could run a shell command). The
        # model is what the command and the YAML say; the checkpoint is data: read now (an unreadable file is one
        # sentence before anything else happens) and compared with them before a run folder is made
        # (check_resume, _check_checkpoint).
        command = self.config.get("subcommand")
        ckpt_path = self.config[command].get("ckpt_path") if command else None
        if ckpt_path and ckpt_path not in LIGHTNING_CKPT_NAMES and Path(ckpt_path).is_file():
            read_checkpoint(ckpt_path)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--experiment", type=Optional[str], default=None,
            help="Run name: runs are written to runs/<experiment>/version_N (default: the config file's name).",
        )
        parser.add_argument(
            "--threads", type=Optional[int], default=None,
            help="torch intra-op threads for training (default: torch's choice, one per usable core); fewer leaves "
                 "cores to other jobs on a shared machine.",
        )
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_size", "model.input_size", apply_on="instantiate")

    def experiment_name(self) -> str:
        config = self.config.get(str(self.subcommand), self.config)
        if config.get("experiment"):
            return str(config["experiment"])
        files = config.get("config") or []
        return Path(str(files[-1])).stem if files else "default"

    def before_instantiate_classes(self) -> None:
        # Every check that can refuse the command runs here, before a model is built or a file is written.
        if self.subcommand is None:
            return
        model = self.config[self.subcommand].get("model") or {}
        for what in ("optimizer", "lr_scheduler"):  # LightningCLI would call any function a class_path names
            value = model.get(what)
            class_path = value.get("class_path") if hasattr(value, "get") else value
            if class_path is not None:
                schedules.check_class(str(class_path), what)
        threads = self.config[self.subcommand].get("threads")
        if threads is not None:
            if threads < 1:
                raise UserError(f"--threads must be 1 or more, got {threads}; leave it unset for one per core")
            import torch

            torch.set_num_threads(int(threads))
        trainer = self.config[self.subcommand].get("trainer") or {}
        if self.subcommand == "fit":
            for key in ("max_epochs", "max_steps"):
                if trainer.get(key) == 0:
                    raise UserError(f"trainer.{key} 0 trains nothing, so the fit would end with an untrained model "
                                    f"and bundle it; set trainer.{key} to 1 or more (to score a checkpoint, use "
                                    "`python main.py test --ckpt_path ...`)")
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if ckpt_path and ckpt_path not in LIGHTNING_CKPT_NAMES and not Path(ckpt_path).is_file():
            raise UserError(f"checkpoint {ckpt_path} does not exist (--ckpt_path); give a .ckpt file"
                            + (", or 'last' to resume the newest run" if self.subcommand == "fit" else ""))
        if self.subcommand != "fit" or not ckpt_path or self._bundle_run is not None:
            return
        if ckpt_path == "last":
            self._resume_run = newest_resumable_run(Path(RUNS_DIR) / self.experiment_name())
            ckpt = last_checkpoint(self._resume_run) if self._resume_run else None
        else:
            ckpt = Path(ckpt_path)
        run = run_of_checkpoint(ckpt) if ckpt else None
        if run is not None and config_file(run).is_file():
            with warnings.catch_warnings():
                # dumped exactly as LightningCLI's SaveConfigCallback writes config.yaml, to compare like with like
                warnings.simplefilter("ignore")
                now = yaml_load(self._parser("fit").dump(self.config["fit"], skip_none=False))
            check_resume(run, ckpt, now)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        self._check_checkpoint()  # model and data are built (their classes linked), no run folder yet
        # LightningCLI's _get reads the instantiated section of the current subcommand; it has no public equivalent
        trainer_config = self._get(self.config_init, "trainer", default={})
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = logger = self._run_logger()
            self._note_new_run_dir(Path(logger.log_dir))
        has_logger = kwargs.get("logger", trainer_config.get("logger")) not in (False, None)
        callbacks: list[Callback] = list(trainer_config.get("callbacks") or [])
        if trainer_config.get("enable_checkpointing", True) is not False and not _has(callbacks, ModelCheckpoint):
            # Best first: trainer.checkpoint_callback (and ckpt_path="best") is the first ModelCheckpoint.
            # Saved after validation, never at train-epoch end: a callback that changes the weights there (pruning
            # masks) would otherwise save the changed weights under the score of the unchanged ones.
            # It ranks by val/top1 within one network, and a network pruned mid-fit above the one before it.
            callbacks.append(BestCheckpoint(filename="epoch{epoch:03d}",
                                             auto_insert_metric_name=False, save_on_train_epoch_end=False))
            # Lightning 2.6 refreshes save_last only when a top-k checkpoint was saved; a resumable
            # last.ckpt needs a checkpoint written every epoch.
            callbacks.append(ModelCheckpoint(filename="last", monitor=None, save_top_k=1, enable_version_counter=False))
        if has_logger and not _has(callbacks, LearningRateMonitor):
            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        if has_logger and not _has(callbacks, Leaderboard):
            callbacks.append(Leaderboard())  # the HPARAMS tab and the CUSTOM SCALARS layout of a TensorBoard run
        if trainer_config.get("enable_progress_bar", True) is not False and not _has(callbacks, ProgressBar):
            # A terminal gets a live bar; a log file one line per epoch (a bar there is a redraw per batch).
            if sys.stdout.isatty():
                callbacks.insert(0, FitEndSafeProgressBar(leave=True))  # first: stopped before fit-end steps print
            else:
                kwargs["enable_progress_bar"] = False
                callbacks.insert(0, EpochLines())  # first: it prints before LearningRateMonitor logs the next epoch's rate
        if self._bundle_run is not None:
            kwargs["enable_model_summary"] = False  # `bundle` trains nothing: the network was summarized by its fit
        elif trainer_config.get("enable_model_summary", True) is not False and not _has(callbacks, ModelSummary):
            callbacks.append(ModelSummary(max_depth=1))  # plain text: Rich's table cut type names to fit 80 columns
        if self.subcommand == "predict" and not _has(callbacks, BasePredictionWriter):
            callbacks.append(PredictionsCSV())
        kwargs["callbacks"] = callbacks
        plugins = list(trainer_config.get("plugins") or [])
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]  # whole checkpoints, a full disk in one sentence
        precision = cpu_precision(trainer_config.get("accelerator"), trainer_config.get("precision"))
        if precision is not None:
            kwargs["precision"] = precision
        return super().instantiate_trainer(**kwargs)

    def _check_checkpoint(self) -> None:
        """The checkpoint's own record of its network and input compared with what the command and YAML build (it
        is never applied over them), and in a fit, whose optimizer and schedule states it restores, the classes of
        those: one that differs is refused naming what differs."""
        command = self.subcommand
        ckpt_path = self.config[command].get("ckpt_path") if command else None
        if ckpt_path == "last" and self._resume_run is not None:
            ckpt_path = str(last_checkpoint(self._resume_run))
        if not ckpt_path or ckpt_path in LIGHTNING_CKPT_NAMES:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # LightningCLI's own _parser(subcommand): no public accessor gives the subcommand's parser to dump with
            given = yaml_load(self._parser(command).dump(self.config[command], skip_none=False)).get("model") or {}
        facts = self.datamodule.facts
        model = {"backbone": given.get("backbone"), "backbone_args": given.get("backbone_args"),
                 "num_classes": facts.num_classes}
        if command == "fit":
            model.update(optimizer=given.get("optimizer"), lr_scheduler=given.get("lr_scheduler"))
        check_checkpoint_matches(Path(ckpt_path), model, facts)

    def _run_logger(self) -> RunLogger:
        """runs/<experiment>/version_N: a new N, the resumed run's, or the run a checkpoint to evaluate came from."""
        if self._bundle_run is not None:
            run = self._bundle_run
            return RunLogger(save_dir=run.parents[1], name=run.parent.name, version=run.name, default_hp_metric=False)
        if self.subcommand == "fit":
            version = run_number(self._resume_run) if self._resume_run else None
            return RunLogger(save_dir=RUNS_DIR, name=self.experiment_name(), version=version, default_hp_metric=False)
        ckpt_path = self.config[self.subcommand].get("ckpt_path") if self.subcommand else None
        run = run_of_checkpoint(Path(ckpt_path)) if ckpt_path else None
        if run is not None:
            # Into the checkpoint's own run, in a folder of its own: the fit's config.yaml and events stay as they are.
            return RunLogger(save_dir=run.parents[1], name=run.parent.name, version=run.name,
                             sub_dir=self.subcommand, default_hp_metric=False)
        return RunLogger(save_dir=RUNS_DIR, name=self.experiment_name(), default_hp_metric=False)

    def _note_new_run_dir(self, log_dir: Path) -> None:
        if log_dir.exists():
            return
        self.invocation.new_run_dir = log_dir
        # Parents up to runs/ that this command creates (innermost first), to remove with the run if it fails.
        self.invocation.new_parents = [p for p in list(log_dir.parents)[:3] if not p.exists()]

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.interrupted:
            return
        chain = FitEnd.of(trainer)
        best = (chain.checkpoint if chain is not None else None) or getattr(trainer.checkpoint_callback, "best_model_path", "")
        trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False)
        self._print_top1("test")
        if chain is not None:
            self.invocation.fit_end_failures = chain.failures
            if chain.summary and trainer.is_global_zero:
                print(chain.summary, flush=True)  # the bundle table is the last thing a fit prints

    def after_validate(self) -> None:
        self._print_top1("val")

    def after_test(self) -> None:
        self._print_top1("test")

    def _print_top1(self, split: str) -> None:
        """The split's metrics on stderr, and on stdout the `test/top1 = ...` line a person or a script reads."""
        trainer = self.trainer
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{split}/")}
        if not trainer.is_global_zero or not metrics:
            return
        source = os.path.relpath(trainer.ckpt_path) if trainer.ckpt_path else "final weights"
        rank_zero_info(f"{split} ({source}): " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        print(f"{split}/top1 = {metrics.get(f'{split}/top1', float('nan')):.4f} ({split} split, {trainer.precision}, "
              f"{source})", flush=True)

    def before_fit(self) -> None:
        chain = FitEnd.of(self.trainer)
        if chain is not None:
            chain.defer_summary = True


def _has(callbacks: list[Callback], kind: type) -> bool:
    return any(isinstance(c, kind) for c in callbacks)


# --- precision -----------------------------------------------------------------------------------------------------

def cpu_precision(accelerator: Any, precision: Any) -> Optional[str]:
    """`16-mixed` on a CPU-only trainer becomes 32-true (Lightning would silently train in bf16 instead)."""
    if str(precision) not in ("16-mixed", "16"):
        return None
    import torch

    gpu = torch.cuda.is_available() or (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available())
    if not (accelerator == "cpu" or (accelerator in (None, "auto") and not gpu)):
        return None
    rank_zero_info("trainer.precision 16-mixed needs a GPU and this trainer runs on the CPU, so it trains in 32-true; "
                   "set trainer.precision bf16-mixed to train in bfloat16 on the CPU")
    return "32-true"


def _exit_now(code: Any) -> None:
    """Leave a command that wrote nothing (help, a refused command) without the interpreter's teardown of torch and
    Lightning, which takes longer than the command itself (1-2 s here)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def cli_main(args: Optional[list[str]] = None, run: bool = True) -> Optional[EdgeCLI]:
    """The `edgecls` console command: runs a subcommand and exits 1 or 2 as the module docstring says.

    run=False parses and instantiates only and returns the EdgeCLI, errors raised as they are (for benchmarks
    and notebooks)."""
    # A user's own classes (data.source: {class_path: my_sources.MySource}) from the folder the command runs in.
    sys.path[1:1] = [] if os.getcwd() in sys.path else [os.getcwd()]
    # jsonargparse would print its usage and exit; raised instead, its error becomes our one line.
    parser_kwargs: dict[str, Any] = {"exit_on_error": False, **{c: {"exit_on_error": False} for c in SUBCOMMANDS}}
    kwargs = dict(seed_everything_default=42, save_config_kwargs={"overwrite": True}, parser_kwargs=parser_kwargs, args=args)
    if not run:
        return EdgeCLI(ImageClassifier, ImageClassificationDataModule, run=False, **kwargs)
    invocation = Invocation()
    if args is None and not debug_mode():
        warnings.formatwarning = _one_line_warning  # the command a user runs, not a test or a notebook
    argv = sys.argv[1:] if args is None else list(map(str, args))
    command = next((a for a in argv if a in (*SUBCOMMANDS, "bundle")), "")
    try:
        bundle_run = bundle_checkpoint = None
        if command == "bundle":
            bundle_run, bundle_checkpoint, kwargs["args"] = bundle_arguments(argv)
        kwargs["args"] = migrate_config_arguments(kwargs["args"] or argv) or kwargs["args"]  # an older edgecls's keys
        kwargs["args"] = splice_callback_lists(kwargs["args"] or argv) or kwargs["args"]  # a shared list plus one line
        EdgeCLI(ImageClassifier, ImageClassificationDataModule, invocation=invocation, bundle_run=bundle_run,
                bundle_checkpoint=bundle_checkpoint, **kwargs)
    except SystemExit as exc:  # --help, --print_config
        if args is None:
            _exit_now(exc.code)
        raise
    except BaseException as exc:
        invocation.discard_new_run()
        if debug_mode() or not is_user_error(exc, invocation):
            raise
        print(f"error: {one_sentence(exc, command, argv, long_options(invocation.parsers, command))}", file=sys.stderr, flush=True)
        if args is None:
            _exit_now(EXIT_USAGE)
        raise SystemExit(EXIT_USAGE) from None
    if invocation.fit_end_failures:
        for sentence in invocation.fit_end_failures:
            print(f"error: fit-end step failed: {sentence}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_PARTLY_FAILED)
    return None


if __name__ == "__main__":
    cli_main()
