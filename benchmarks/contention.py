"""Training on a busy CPU: the quickstart's training epochs alone vs with busy-loop processes on the same cores.

    python benchmarks/contention.py [--epochs 3] [--busy 2] [--rounds 5] [--settings omp-default,passive,1thread]
                                    [--batches N] [--quick]

Each setting runs `python main.py fit --config experiments/quickstart.yaml` (training only: no fit-end steps,
no progress bar) in a fresh process, once without and once with `--busy` processes spinning `while True: pass`,
in --rounds rounds; within a round every setting runs back to back, so a slow spell (other jobs on a shared
machine) hits the runs a ratio compares. Settings:
  omp-default  OpenMP's own wait policy (threads spin at every barrier, waiting for a thread that was descheduled)
  passive      OMP_WAIT_POLICY=PASSIVE: a waiting thread sleeps instead of spinning (main.py's default)
  1thread      passive and one intra-op thread (what Ultralytics-style "cores - 1" gives on a 2-core machine)
The wall time is of the whole command (interpreter start, data set-up and the epochs). The targets are judged
as runtime_latency.py judges its own: on the median of the rounds' paired ratios and its confidence interval
(`undecided` when the machine's own load makes the rounds disagree).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deploy.benchmark import ratio_verdict  # noqa: E402

SETTINGS = {
    # an empty OMP_WAIT_POLICY is libgomp's own default (spin a while, then sleep); main.py leaves it alone
    "omp-default": ({"OMP_WAIT_POLICY": ""}, []),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, []),
    "1thread": ({"OMP_WAIT_POLICY": "PASSIVE"}, ["--threads", "1"]),
}


def fit_seconds(setting: tuple[dict, list], epochs: int, workdir: str, batches: int = 0) -> float:
    env_extra, extra_args = setting
    if batches:
        extra_args = [*extra_args, "--trainer.limit_train_batches", str(batches), "--trainer.limit_val_batches", str(batches),
                      "--trainer.limit_test_batches", str(batches)]
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
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (every setting alone, beside the busy loops); 5: the fewest a 90%% interval needs")
    parser.add_argument("--settings", default="omp-default,passive,1thread")
    parser.add_argument("--confidence", type=float, default=0.9, help="confidence of the interval targets are judged on")
    parser.add_argument("--batches", type=int, default=0, help="training and validation batches an epoch (0: all)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: --epochs 1 --batches 4 --busy 1 --rounds 1 --settings omp-default,passive "
                             "(its figures say only that every row was made: start-up dominates 4 batches)")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.batches, args.busy, args.rounds, args.settings = 1, 4, 1, 1, "omp-default,passive"
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"--settings: unknown {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    quiet: dict[str, list[float]] = {name: [] for name in names}
    busy: dict[str, list[float]] = {name: [] for name in names}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name in names:
                quiet[name].append(fit_seconds(SETTINGS[name], args.epochs, tmp, args.batches))
            loops = busy_loops(args.busy)
            try:
                time.sleep(1.0)
                for name in names:
                    busy[name].append(fit_seconds(SETTINGS[name], args.epochs, tmp, args.batches))
            finally:
                for p in loops:
                    p.kill()
                    p.wait()
    print(f"\nquickstart training, {args.epochs} epochs{f' of {args.batches} batches' if args.batches else ''}, {os.cpu_count()} CPUs (load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after: other jobs count as load too), busy runs beside {args.busy} busy-loop "
          f"processes; wall time of the whole command, median of {args.rounds} round(s)")
    print(f"{'setting':<24}{'alone s':>9}{'busy s':>9}{'busy/alone':>12}")
    for name in names:
        label = f"{name} (main.py's)" if name == "passive" else name
        q, b = statistics.median(quiet[name]), statistics.median(busy[name])
        print(f"{label:<24}{q:>9.1f}{b:>9.1f}{b / q:>11.2f}x")
    word = {"met": "met", "NOT met": "NOT met", "undecided": "undecided (noisy; more --rounds or a quieter machine)"}

    def line(text: str, verdict: dict) -> str:
        interval = (f"{verdict['low']:.2f}..{verdict['high']:.2f}" if math.isfinite(verdict["low"])
                    else "no interval: too few rounds")
        return (f"target {text}: {verdict['ratio']:.2f}x (median of {verdict['rounds']} paired round ratios; "
                f"{100 * args.confidence:g}% interval {interval}) -> {word[verdict['verdict']]}")

    print()
    if "passive" in names:
        print(line(f"training beside {args.busy} busy processes <= 2x its time alone (passive, main.py's default)",
                   ratio_verdict(busy["passive"], quiet["passive"], 2.0, True, args.confidence)))
        if "omp-default" in names:
            print(line("passive beside the busy processes no slower than OpenMP's default wait policy there",
                       ratio_verdict(busy["passive"], busy["omp-default"], 1.0, True, args.confidence)))


if __name__ == "__main__":
    main()
