"""Shared by the tests that run the real CLI: paths and a subprocess runner for `python main.py ...`."""

import os
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"

# Small, fast fit settings shared by the CLI tests (digits, a width-4 ResNet, a few batches an epoch).
TINY = [
    "--model.backbone_args", '{"num_blocks": [1, 1, 1, 1], "width": 4}',
    "--model.lr", "0.01",
    "--trainer.limit_train_batches", "8",
    "--trainer.limit_val_batches", "2",
    "--trainer.enable_progress_bar", "false",
    "--data.image_size", "16",
]


def run_main(args, cwd: Path, timeout: int = 300, expect_ok: bool = True) -> subprocess.CompletedProcess:
    """Run `python main.py ...` as a user would, in `cwd` (runs/ lands there)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"main.py {' '.join(map(str, args))} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


# For CLI tests about training itself: the quickstart's fit-end chain (ONNX, INT8, bundle) is tested elsewhere.
NO_FIT_END = ["--trainer.callbacks", "[]"]
