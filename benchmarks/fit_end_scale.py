"""Fit-end chain vs test-split size: ONNX export, INT8 with its gate, bundle, at 1,000 and 10,000 test images.

    python benchmarks/fit_end_scale.py [--sizes 1000,10000] [--quick] [--max-drop 100] [--trace]

Each size is one fresh subprocess: MobileNetV2 (`mobilenet_v2`, from scratch, no weights) on the `synthetic`
source at 224x224, 10 classes, a small train split (--train images, --train-batches batches of 32) and val
split (--val images), and the test split at the size measured. One very short epoch, then the fit-end steps
exactly as an experiment YAML lists them (ONNXExport, Int8Quantization, TensorRTBuild, which skips here without
TensorRT, and DeployBundle with few latency/throughput iterations). Only the test split changes between sizes:
what it costs is the bundle scoring every artifact on it, streamed batch by batch (DESIGN.md: "a split is
never one array in memory"), so fit-end time should grow at most linearly and peak memory not at all.

Plain callbacks listed between the steps mark each phase: wall time, resident memory at its end and its own
peak. The peak is Linux's VmHWM, reset at every mark by writing 5 to /proc/self/clear_refs; the process peak
is the largest phase peak (the kernel's high-water mark, and so getrusage's ru_maxrss, restarts at each reset,
which is why the children report their own). Loaders use num_workers 0, so every image is decoded in the
process measured. --trace adds tracemalloc's largest Python-heap growth per phase (numpy arrays included,
torch and ONNX Runtime buffers not). The fit is not CLI's: there is no test pass after the fit (not fit-end).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CLASSES = 10
IMAGE = 224
BATCH = 32


def status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))


def reset_peak() -> bool:
    """Restart VmHWM at the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def split_fractions(train: int, val: int, test: int) -> tuple[int, list[float]]:
    """Synthetic images in all and the split fractions that give exactly train/val/test images (each a multiple
    of the class count, so every class cuts evenly)."""
    for n in (train, val, test):
        if n % CLASSES:
            raise SystemExit(f"image counts must be multiples of {CLASSES} (the classes), got {n}")
    count = train + val + test
    return count, [train / count, val / count, test / count]


# --- child: one size ---------------------------------------------------------------------------------------------

def child(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import TensorBoardLogger

    from callbacks import DeployBundle, Int8Quantization, ONNXExport, TensorRTBuild
    from callbacks.fit_end import FitEndStep, fit_end_record
    from datamodules import ImageClassificationDataModule
    from datamodules.sources import SyntheticSource
    from lightning_modules import ImageClassifier

    trace = None
    if args.trace:
        import tracemalloc

        tracemalloc.start(12)
        trace = tracemalloc

    phases: list[dict] = []

    class PhaseMark(FitEndStep):
        """Closes the phase that ends here (time, RSS now, peak RSS since the previous mark) and opens the next.
        A fit-end step itself, so the chain runs it between the steps it is listed between (a plain callback's
        on_fit_end would run before the whole chain, and every phase but training would read 0 s)."""

        def __init__(self, phase: str) -> None:
            super().__init__()
            self.phase = phase
            # the mark that closes the bundle phase runs after DeployBundle, which runs after every other step
            self.COLLECTS = phase == "bundle"

        @property
        def name(self) -> str:
            return f"PhaseMark({self.phase})"

        def run(self, trainer, pl_module, record) -> None:
            mark(self.phase)

    last = {"t": started, "snap": None}

    def mark(name: str) -> None:
        now = time.perf_counter()
        entry = {"phase": name, "seconds": now - last["t"], "rss_mb": status_kb("VmRSS") * 1024 / 1e6,
                 "peak_mb": status_kb("VmHWM") * 1024 / 1e6}
        if trace is not None:
            snap = trace.take_snapshot().filter_traces([trace.Filter(False, trace.__file__)])
            if last["snap"] is not None:
                top = snap.compare_to(last["snap"], "traceback")[:3]
                entry["growth"] = [f"{s.size_diff / 1e6:+.1f} MB at " + "; ".join(
                    f"{os.path.relpath(f.filename)}:{f.lineno}" for f in list(s.traceback)[-4:]) for s in top]
            entry["traced_peak_mb"] = trace.get_traced_memory()[1] / 1e6
            trace.reset_peak()
            last["snap"] = snap
        phases.append(entry)
        reset_peak()
        last["t"] = time.perf_counter()  # the mark's own cost (a snapshot) is no phase's

    tmp = Path(args.workdir)
    count, fractions = split_fractions(args.train, args.val, args.size)
    pl.seed_everything(42, verbose=False)
    data = ImageClassificationDataModule(source=SyntheticSource(count=count, classes=CLASSES), image_size=args.image,
                                         split=fractions, batch_size=BATCH, num_workers=0, mean_std="auto",
                                         cache_dir=str(tmp / "cache"))
    model = ImageClassifier(num_classes=CLASSES, backbone="mobilenet_v2", backbone_args={"weights": None},
                            input_size=(args.image, args.image), optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}}, log_confusion_matrix=False)
    callbacks = [
        ModelCheckpoint(monitor="val/top1", mode="max", save_last=False),
        PhaseMark("train"),  # on_fit_end start: everything before it was set-up and training
        ONNXExport(),
        PhaseMark("onnx export"),
        Int8Quantization(num_samples=args.calibration, max_drop=args.max_drop, calibration_batch=16),
        PhaseMark("int8 + gate"),
        TensorRTBuild(),
        DeployBundle(latency_iterations=args.latency_iterations, throughput_batch=8, throughput_iterations=3),
        PhaseMark("bundle"),
    ]
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=args.train_batches,
                         num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
                         logger=TensorBoardLogger(str(tmp / "runs"), name="fit_end_scale"), callbacks=callbacks,
                         log_every_n_steps=1)
    trainer.fit(model, datamodule=data)

    record = fit_end_record(trainer)
    report = {}
    if record.bundle_dir is not None and (record.bundle_dir / "report.json").is_file():
        report = json.loads((record.bundle_dir / "report.json").read_text())
    result = {
        "size": args.size, "test_images": len(data.test_dataloader().dataset), "val_images": len(data.val_dataloader().dataset),
        "phases": phases, "fit_end_s": sum(p["seconds"] for p in phases if p["phase"] != "train"),
        "peak_mb": max(p["peak_mb"] for p in phases),
        "failures": [f"{f.step}: {f.sentence}" for f in record.failures],
        "bundle_test_samples": report.get("test_samples"),
        "rows": [{k: r.get(k) for k in ("label", "top1", "latency_ms", "size_mb")} for r in report.get("rows", [])],
        "artifacts": [(a.label, a.status) for a in record.artifacts],
    }
    Path(args.result).write_text(json.dumps(result))
    return 0


# --- parent: one subprocess per size, the table ------------------------------------------------------------------

def run_size(size: int, args: argparse.Namespace, tmp: Path) -> dict:
    work = tmp / f"n{size}"
    work.mkdir(parents=True, exist_ok=True)
    result = work / "result.json"
    command = [sys.executable, os.path.abspath(__file__), "--child", "--size", str(size), "--workdir", str(work),
               "--result", str(result), "--train", str(args.train), "--val", str(args.val),
               "--train-batches", str(args.train_batches), "--calibration", str(args.calibration),
               "--max-drop", str(args.max_drop), "--latency-iterations", str(args.latency_iterations),
               "--image", str(args.image)]
    if args.trace:
        command.append("--trace")
    print(f"[{time.strftime('%H:%M:%S')}] {size} test images ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    log = work / "child.log"
    with open(log, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
    wall = time.perf_counter() - started
    if done.returncode != 0 or not result.is_file():
        tail = log.read_text()[-3000:]
        raise SystemExit(f"the {size}-image run exited {done.returncode}; last output:\n{tail}")
    out = json.loads(result.read_text())
    out["wall_s"] = wall
    print(f"[{time.strftime('%H:%M:%S')}] {size} test images: fit-end {out['fit_end_s']:.1f} s, total {wall:.1f} s, "
          f"peak RSS {out['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="test images per run, comma-separated, smallest first")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (about a minute on 2 cores): --sizes 100,300 --image 32 --train 160 "
                             "--train-batches 2 --calibration 32 --latency-iterations 3")
    parser.add_argument("--image", type=int, default=IMAGE, help="image side in px")
    parser.add_argument("--train", type=int, default=320, help="train images (calibration draws from them)")
    parser.add_argument("--val", type=int, default=60, help="val images (INT8 gate, parity check)")
    parser.add_argument("--train-batches", type=int, default=4, help="training batches of 32 in the one epoch")
    parser.add_argument("--calibration", type=int, default=128, help="INT8 calibration images (num_samples)")
    parser.add_argument("--max-drop", type=float, default=100.0,
                        help="INT8 gate in top-1 points; the default keeps a 4-batch model's noisy val top-1 from "
                             "starting the node-exclusion search, whose cost does not depend on the test split")
    parser.add_argument("--latency-iterations", type=int, default=10, help="DeployBundle batch-1 timed calls per artifact")
    parser.add_argument("--trace", action="store_true", help="tracemalloc: largest Python-heap growth per phase")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs (bundles, logs) here instead of a temp dir")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    if args.quick:
        args.sizes, args.image, args.train, args.train_batches, args.calibration, args.latency_iterations = (
            "100,300", 32, 160, 2, 32, 3)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if len(sizes) < 2 or sizes != sorted(sizes):
        raise SystemExit(f"--sizes needs two or more sizes, smallest first, got {sizes}")
    load_before = os.getloadavg()[0]
    # A kill (a timeout's SIGTERM) unwinds like Ctrl-C, so the scratch folder (about 90 MB a size) is removed.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with tempfile.TemporaryDirectory(prefix="fit_end_scale-") as scratch:
        tmp = args.keep or Path(scratch)
        results = [run_size(n, args, tmp) for n in sizes]
    load_after = os.getloadavg()[0]

    first = results[0]
    print(f"fit-end chain vs test split: MobileNetV2 from scratch, synthetic {args.image}x{args.image}, {CLASSES} classes, "
          f"batch {BATCH}, num_workers 0; train {args.train} ({args.train_batches} batches, 1 epoch), val "
          f"{first['val_images']}, INT8 calibration {args.calibration}, gate {args.max_drop:g} pt; "
          f"{os.cpu_count()} CPUs shared with other jobs (load average {load_before:.1f} before, {load_after:.1f} after)")
    header = (f"{'test images':>12}{'train s':>9}{'ONNX s':>8}{'INT8 s':>8}{'bundle s':>10}{'fit-end s':>11}"
              f"{'total wall s':>14}{'RSS @fit-end MB':>17}{'fit-end peak MB':>17}{'peak RSS MB':>13}")
    print(header)
    print("-" * len(header))
    for r in results:
        by = {p["phase"]: p for p in r["phases"]}
        fit_end_peak = max(p["peak_mb"] for p in r["phases"] if p["phase"] != "train")
        print(f"{r['test_images']:>12,}{by['train']['seconds']:>9.1f}{by['onnx export']['seconds']:>8.1f}"
              f"{by['int8 + gate']['seconds']:>8.1f}{by['bundle']['seconds']:>10.1f}{r['fit_end_s']:>11.1f}"
              f"{r['wall_s']:>14.1f}{by['train']['rss_mb']:>17.0f}{fit_end_peak:>17.0f}{r['peak_mb']:>13.0f}")
    print("peak per phase MB (train / onnx / int8 / bundle): " + "; ".join(
        f"{r['test_images']:,}: " + " / ".join(f"{p['peak_mb']:.0f}" for p in r["phases"]) for r in results))
    for r in results:
        rows = ", ".join(f"{row['label']} {100 * row['top1']:.1f} %" for row in r["rows"])
        print(f"{r['test_images']:,}: bundle scored {r['bundle_test_samples']} test images ({rows}); artifacts "
              + ", ".join(f"{label} {status}" for label, status in r["artifacts"]))
        for failure in r["failures"]:
            print(f"  FAILED {failure}")
        for p in r["phases"]:
            for line in p.get("growth", []):
                print(f"  {p['phase']}: {line}")

    small, large = results[0], results[-1]
    scale = large["test_images"] / small["test_images"]
    growth = large["peak_mb"] - small["peak_mb"]
    ok = all(not r["failures"] and r["bundle_test_samples"] == r["test_images"] for r in results)
    print()
    print(f"target every fit-end step ok and the bundle scored every test image -> {'met' if ok else 'NOT met'}")
    print(f"target peak RSS at {large['test_images']:,} <= peak at {small['test_images']:,} + 300 MB: "
          f"{large['peak_mb']:.0f} vs {small['peak_mb']:.0f} MB ({round(growth) + 0:+d} MB) -> {'met' if growth <= 300 else 'NOT met'}")
    fit_end_peaks = [max(p["peak_mb"] for p in r["phases"] if p["phase"] != "train") for r in (small, large)]
    print(f"(the fit-end steps alone, training's peak left out: {fit_end_peaks[1]:.0f} vs {fit_end_peaks[0]:.0f} MB, "
          f"{round(fit_end_peaks[1] - fit_end_peaks[0]) + 0:+d} MB)")
    ratio = large["fit_end_s"] / small["fit_end_s"]
    print(f"target fit-end time grows no faster than the image count (t{large['test_images']:,}/t{small['test_images']:,} "
          f"<= {scale:g} x 1.1): {ratio:.2f} -> {'met' if ratio <= scale * 1.1 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
