"""What a fit prints: in a log file one line per epoch, in a terminal nothing a fit-end step prints is drawn over,
and every accuracy says which split and precision it is."""

import os
import pty
import re
import subprocess
import sys

from edgecls_testing import EXPERIMENTS, NO_FIT_END, REPO, TINY

# TINY without its --trainer.enable_progress_bar false: here the progress display is what is tested.
SMALL = [a for i, a in enumerate(TINY) if "enable_progress_bar" not in a and "enable_progress_bar" not in TINY[i - 1]]


def test_a_log_file_gets_one_line_per_epoch_with_its_split_and_precision(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "fit", "--config", str(EXPERIMENTS / "quickstart.yaml"),
                           *SMALL, *NO_FIT_END, "--trainer.max_epochs", "3"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    epochs = re.findall(r"^epoch (\d)/3 \(32-true\): .*val/top1=([0-9.]+)", proc.stdout, re.M)
    assert [e for e, _ in epochs] == ["1", "2", "3"]
    # the model summary prints every type name whole
    shown = proc.stdout + proc.stderr
    assert re.search(r"\bnet\s+\| CifarResNet\s+\|", shown) and "MulticlassConfusionMatrix" in shown, shown[:3000]
    assert "…" not in shown
    assert "Epoch 0" not in proc.stdout + proc.stderr  # no progress bar, so no redraws
    # none of Lightning's lines that tell nothing here (no GPU, no TPU, how it counts batches, that the last epoch
    # was the last, the seed that config.yaml keeps)
    for idle in ("GPU available: False", "TPU available", "Loading `train_dataloader`", "`Trainer.fit` stopped",
                 "Restoring states", "Seed set to"):
        assert idle not in shown, idle
    assert shown.count("Loaded model weights from the checkpoint at ") == 1  # which checkpoint is tested
    first = next(line for line in proc.stdout.splitlines() if line.startswith("epoch 1/3"))
    assert "train/top1=" in first  # the epoch's own, logged after the callbacks' epoch end
    assert "train/lr=" in first and "lr-AdamW" not in first  # the name TensorBoard shows it under
    assert re.search(r"^test/top1 = [0-9.]+ \(test split, 32-true, runs/quickstart/version_0/checkpoints/epoch\d+\.ckpt\)$",
                     proc.stdout, re.M), proc.stdout[-2000:]


def test_in_a_terminal_the_bundle_table_is_not_followed_by_a_redrawn_epoch_bar(tmp_path):
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(REPO / "main.py"), "fit", "--config", str(EXPERIMENTS / "quickstart.yaml"),
                             *SMALL, "--trainer.max_epochs", "1"], cwd=tmp_path, stdout=terminal, stderr=terminal,
                            env=dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="160", TERM="xterm"))
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # the terminal closed
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=400) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    table = screen.index("top-1 on the test split")
    assert "Epoch 0" not in screen[table:]  # the fit's bar was stopped before the fit-end steps printed
    assert "deploy bundle:" in screen and "TensorRT build skipped" in screen
    after = screen[screen.index("TensorRT build skipped"):screen.index("deploy bundle:")]
    assert "\x1b[1A" not in after and "\x1b[2K" not in after  # nothing moved the cursor up over those lines
    # the bundle table comes last, after the test line, and nothing redraws over it
    assert screen.index("test/top1 = ") < table and "\x1b[1A" not in screen[table:]
