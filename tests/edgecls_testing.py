"""Shared by the tests that run the real CLI: paths and a subprocess runner for `python main.py ...`."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional


REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"

# Small, fast fit settings shared by the CLI tests (digits, a width-4 ResNet, a few batches an epoch).
TINY = [
    "--model.backbone_args", '{"num_blocks": [1, 1, 1, 1], "width": 4}',
    "--model.optimizer.lr", "0.01",
    "--trainer.limit_train_batches", "8",
    "--trainer.limit_val_batches", "2",
    "--trainer.enable_progress_bar", "false",
    "--data.image_size", "16",
]


def run_main(args, cwd: Path, timeout: int = 300, expect_ok: bool = True, env: Optional[dict] = None,
             script: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run `python main.py ...` as a user would, in `cwd` (runs/ lands there).

    env: variables added to the environment; script: Python run instead of main.py (`python -c script args`),
    for a test that patches something before calling main.cli_main()."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
    program = ["-c", script] if script is not None else [str(REPO / "main.py")]
    proc = subprocess.run([sys.executable, *program, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"main.py {' '.join(map(str, args))} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


class InProcessCLI:
    """`python main.py ...` run inside the test process: main.cli_main(args) in `cwd`, stdout/stderr captured at the
    file descriptors (Lightning's log handlers write there), SystemExit turned into a return code. It saves a fresh
    interpreter's 6-7 s of imports per call; tests of the process itself (a traceback printed by the interpreter,
    signals, a terminal, DDP) keep `run_main`. Given by the `cli` fixture (tests/conftest.py)."""

    def __init__(self, capfd, monkeypatch) -> None:
        self.capfd = capfd
        self.monkeypatch = monkeypatch

    def __call__(self, args, cwd: Path, expect_ok: bool = True, env: Optional[dict] = None) -> subprocess.CompletedProcess:
        from cli.app import cli_main

        args = [str(a) for a in args]
        self.monkeypatch.chdir(cwd)
        for key, value in (env or {}).items():
            self.monkeypatch.setenv(key, value)
        self.capfd.readouterr()
        # Lightning prints its info lines through a stderr handler it adds only where the root logger has none;
        # pytest's capture handler stands there here, so the lines a user would see are routed to stderr as well.
        import logging
        import sys

        lightning = logging.getLogger("pytorch_lightning")
        handler = logging.StreamHandler(sys.stderr)
        lightning.addHandler(handler)
        level = lightning.level
        lightning.setLevel(logging.INFO)
        code = 0
        try:
            cli_main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            lightning.removeHandler(handler)
            lightning.setLevel(level)
            for key in (env or {}):
                self.monkeypatch.delenv(key, raising=False)
        out, err = self.capfd.readouterr()
        proc = subprocess.CompletedProcess(["main.py", *args], code, out, err)
        if expect_ok and code != 0:
            raise AssertionError(f"main.py {' '.join(args)} exited {code}\n--- stdout\n{out[-4000:]}\n--- stderr\n{err[-6000:]}")
        return proc


# For CLI tests about training itself: the quickstart's fit-end chain (ONNX, INT8, bundle) is tested elsewhere.
NO_FIT_END = ["--trainer.callbacks", "[]"]


def printed_top1s(stdout: str, split: str = "test") -> list[float]:
    """Every figure of the `test/top1 = 0.9812 (test split, ...)` lines a command printed, in order."""
    import re

    return [float(m) for m in re.findall(rf"^{split}/top1 = ([0-9.]+)", stdout, re.M)]


def printed_top1(stdout: str, split: str = "test") -> float:
    """The figure of the last `test/top1 = ...` line a command printed (the one a person or a script reads); the
    test fails, with the output's end, where there is none."""
    found = printed_top1s(stdout, split)
    assert found, f"no `{split}/top1 = ` line was printed:\n{stdout[-2000:]}"
    return found[-1]


def tiny_model(**kwargs):
    """The tests' ImageClassifier: a width-4 [1,1,1,1] ResNet for 10 classes at 16x16 (kwargs: its other settings)."""
    from lightning_modules import ImageClassifier

    return ImageClassifier(**{"num_classes": 10, "backbone_args": {"num_blocks": [1, 1, 1, 1], "width": 4},
                              "input_size": (16, 16), **kwargs})


def tiny_fit(root: Path, callbacks: list, model=None, datamodule=None, max_epochs: int = 1,
             limit_train_batches: int = 4, **trainer_kwargs):
    """A fit of tiny_model (or `model`) on the digits at 16x16 with `callbacks` (fit-end steps run at its end, their
    files under `root`): the trainer, to test its best checkpoint or read its record. No logger, no bar."""
    import pytorch_lightning as pl

    from datamodules import ImageClassificationDataModule

    trainer = pl.Trainer(accelerator="cpu", max_epochs=max_epochs, limit_train_batches=limit_train_batches,
                         limit_val_batches=2, enable_progress_bar=False, logger=False, default_root_dir=root,
                         callbacks=callbacks, **trainer_kwargs)
    trainer.fit(model or tiny_model(), datamodule=datamodule or ImageClassificationDataModule(image_size=16))
    return trainer


def error_lines(stderr: str) -> list[str]:
    """The `error: ...` lines main.py printed on stderr."""
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path: a run that must stay as it was is compared whole."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def load_recipe(path: Path) -> dict:
    """A recipe YAML as a dict, with a `trainer.callbacks: fit_end/<chain>.yaml` reference, or such an entry of its
    list, replaced by the steps it names (as the CLI reads it), so that a test can change a step's settings and write
    the recipe elsewhere."""
    import yaml

    from cli.recipe_lists import spliced_recipe

    path = Path(path)
    spliced = spliced_recipe(path)  # `- fit_end/<chain>.yaml` entries of a list, spliced as the CLI splices them
    config = spliced if spliced is not None else yaml.safe_load(path.read_text())
    callbacks = (config.get("trainer") or {}).get("callbacks")
    if isinstance(callbacks, str):
        config["trainer"]["callbacks"] = yaml.safe_load((path.parent / callbacks).read_text())
    return config


def readme_blocks(section: str) -> dict[str, str]:
    """The fenced code blocks of one README section (`### <section>`, up to the next heading), by language: the
    tests of the README's extension examples run exactly what it shows."""
    import re

    text = (REPO / "README.md").read_text()
    body = re.split(r"\n##+ ", text.split(f"### {section}\n", 1)[1], maxsplit=1)[0]
    return {lang: code for lang, code in re.findall(r"```(\w+)\n(.*?)```", body, re.S)}


# A cheap stand-in for experiments/fit_end/minmax.yaml in the extension tests: the README's recipe lines are used as
# written, and the shared chain they name holds only the export and the bundle (the INT8 steps are tested elsewhere).
CHEAP_CHAIN = """
- class_path: callbacks.ONNXExport
- class_path: callbacks.DeployBundle
  init_args: {latency_iterations: 5, throughput_iterations: 1}
"""


def readme_recipe(section: str, folder: Path) -> Path:
    """experiments/quickstart.yaml with its `callbacks: fit_end/minmax.yaml` line replaced by the README section's
    YAML block, written to folder/experiments/quickstart.yaml beside a cheap fit_end/minmax.yaml (CHEAP_CHAIN)."""
    recipe = (EXPERIMENTS / "quickstart.yaml").read_text()
    line = "  callbacks: fit_end/minmax.yaml\n"
    assert line in recipe, "the quickstart no longer names the shared chain; update readme_recipe"
    target = folder / "experiments" / "quickstart.yaml"
    (target.parent / "fit_end").mkdir(parents=True, exist_ok=True)
    (target.parent / "fit_end" / "minmax.yaml").write_text(CHEAP_CHAIN)
    target.write_text(recipe.replace(line, readme_blocks(section)["yaml"]))
    return target


def run_as_written(path, x):
    """Logits of an ONNX file in ONNX Runtime with every graph optimization off: each Q/DQ node and each float
    operator exactly as the file writes it (the arithmetic TensorRT reproduces), independent of deploy's runners."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]
