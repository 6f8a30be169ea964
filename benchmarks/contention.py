"""Training on a busy CPU: the quickstart's training epochs alone vs with busy-loop processes on the same cores.

    python benchmarks/contention.py [--epochs 3] [--busy 2] [--settings default,passive,1thread]

Each setting runs `python main.py fit --config experiments/quickstart.yaml` (training only: no fit-end steps,
no progress bar) in a fresh process, once on a quiet machine and once with `--busy` processes spinning
`while True: pass`, quiet and busy runs alternating so a slow spell hits both. Settings:
  default   OpenMP's own wait policy (threads spin at every barrier, waiting for a thread that was descheduled)
  passive   OMP_WAIT_POLICY=PASSIVE: a waiting thread sleeps instead of spinning (what main.py sets by default)
  1thread   one intra-op thread (what Ultralytics-style "cores - 1" gives on a 2-core machine)
The wall time is of the whole command (interpreter start, data set-up and the epochs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    # an empty OMP_WAIT_POLICY is libgomp's own default (spin a while, then sleep); main.py leaves it alone
    "default": ({"OMP_WAIT_POLICY": ""}, []),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, []),
    "1thread": ({"OMP_WAIT_POLICY": "PASSIVE"}, ["--threads", "1"]),
}


def fit_seconds(setting: tuple[dict, list], epochs: int, workdir: str) -> float:
    env_extra, extra_args = setting
    env = dict(os.environ, PYTHONPATH=str(REPO), **env_extra)
    cmd = [sys.executable, str(REPO / "main.py"), "fit", "--config", str(REPO / "experiments" / "quickstart.yaml"),
           "--trainer.max_epochs", str(epochs), "--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "false",
           *extra_args]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=workdir, env=env, check=True, capture_output=True, timeout=3600)
    return time.perf_counter() - start


def busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes during the busy runs")
    parser.add_argument("--settings", default="default,passive,1thread")
    args = parser.parse_args()
    names = [s for s in args.settings.split(",") if s]
    quiet, busy = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            quiet[name] = fit_seconds(SETTINGS[name], args.epochs, tmp)
            loops = busy_loops(args.busy)
            try:
                time.sleep(1.0)
                busy[name] = fit_seconds(SETTINGS[name], args.epochs, tmp)
            finally:
                for p in loops:
                    p.kill()
                    p.wait()
    print(f"\nquickstart training, {args.epochs} epochs, {os.cpu_count()} CPUs, busy runs beside {args.busy} "
          "busy-loop processes; wall time of the whole command")
    print(f"{'setting':<10}{'quiet s':>9}{'busy s':>9}{'busy/quiet':>12}{'quiet vs default':>18}")
    for name in names:
        print(f"{name:<10}{quiet[name]:>9.1f}{busy[name]:>9.1f}{busy[name] / quiet[name]:>11.2f}x"
              f"{quiet['default'] / quiet[name] if 'default' in quiet else float('nan'):>17.2f}x")
    chosen = "passive"
    if chosen in busy:
        ratio = busy[chosen] / quiet[chosen]
        print(f"\ntarget training beside {args.busy} busy processes <= 2x the quiet time (main.py's default, {chosen}): "
              f"{ratio:.2f}x -> {'met' if ratio <= 2.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
