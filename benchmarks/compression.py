"""Compression on digits: FP32 vs INT8 vs Lightning's masks vs structured pruning (ratio 0.3, 0.5, half the MACs), one table.

    python benchmarks/compression.py [--config experiments/quickstart_pruned.yaml] [--width 32] [--iterations 40] [--quick]

The model, data and schedule are the experiment's (CIFAR ResNet, 10 epochs, pruning at epoch 5), at width 32
by default instead of the experiment's 16: this ResNet keeps stage 1 at full resolution, and at 224x224 with
8-16 channels those layers are memory-bound, so at width 16 fewer MACs barely show in latency (--width 16).
One baseline fit keeps a checkpoint every epoch; every pruned variant resumes it at the pruning epoch, so all
variants share the same pre-pruning training and fine-tune for the same epochs the experiment does:

- structured: StructuredPruning(at_epoch, ratio | macs_reduction), resumed from the end of epoch at_epoch-1;
- masks: Lightning's ModelPruning, global L1 unstructured at 50 %, applied at the end of epoch at_epoch-1's
  training (so resumed one epoch earlier), made permanent at the end;
- INT8: the baseline's ONNX, static Q/DQ (symmetric, per-channel) by callbacks.quantization.

Every row is the fit's final weights, exported to ONNX. top-1 is ONNX Runtime's on the digits test split (the
experiment's 32x32); latency is ONNX Runtime on the CPU at 224x224, batch 1, synthetic input (the same
weights exported at 224: the ResNet pools globally), the variants interleaved in rounds so machine load lands
on all alike. MACs are counted at 224; a masked network still multiplies its zeros, so its MACs are dense.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from callbacks import AtEpochs, StructuredPruning, export_onnx  # noqa: E402
from callbacks.fit_end import evaluate, first_batch, numpy_batches  # noqa: E402
from callbacks.pruning import count_macs_params, sparsity  # noqa: E402
from callbacks.quantization import prepare_for_quantization, quantize_int8  # noqa: E402
from datamodules import ImageClassificationDataModule  # noqa: E402
from deploy.benchmark import measure  # noqa: E402
from deploy.forms import accuracy_qdq  # noqa: E402
from deploy.runners import OnnxRuntimeRunner  # noqa: E402
from lightning_modules import ImageClassifier  # noqa: E402
from main import cli_main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def load_experiment(path: Path, width: int, workdir: Path) -> tuple[ImageClassifier, ImageClassificationDataModule, dict, int, int]:
    """The experiment's model (untrained) and DataModule as main.py builds them from the YAML (its parser resolves
    `source: DigitsSource`, the optimizer's class_path ...), plus its max_epochs and pruning epoch."""
    config = yaml.safe_load(path.read_text())
    pruning = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("StructuredPruning"))
    overrides = ["--trainer.callbacks", "[]", "--trainer.logger", "false", "--model.log_confusion_matrix", "false"]
    if width:
        overrides += ["--model.backbone_args.width", str(width)]
    here = os.getcwd()
    os.chdir(workdir)  # whatever the parser sets up for a run stays in the scratch folder
    try:
        cli = cli_main(["--config", str(path.resolve()), *overrides], run=False)
    finally:
        os.chdir(here)
    described = {"backbone": cli.model.hparams.get("backbone"), "backbone_args": cli.model.hparams.get("backbone_args")}
    return (cli.model, cli.datamodule, described, int(config["trainer"]["max_epochs"]),
            int(pruning["init_args"]["at_epoch"]))


def fit(initial: ImageClassifier, max_epochs: int, callbacks: list, data: ImageClassificationDataModule, ckpt_path=None,
        batches: float = 1.0):
    pl.seed_everything(42, verbose=False)
    model = copy.deepcopy(initial)  # every variant starts from the same weights (the pruned ones resume anyway)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         limit_train_batches=batches,
                         enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
                         callbacks=callbacks)
    started = time.perf_counter()
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model.eval(), time.perf_counter() - started


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def interleaved_p50(runners: dict[str, OnnxRuntimeRunner], iterations: int, rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for runner in runners.values():
        measure(runner, 1, iterations=1, warmup=5)
    for _ in range(rounds):
        for name, runner in runners.items():
            samples[name] += measure(runner, 1, iterations=max(iterations // rounds, 1), warmup=1, keep_times=True)["times_ms"]
    return {name: float(np.median(times)) for name, times in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "experiments" / "quickstart_pruned.yaml")
    parser.add_argument("--width", type=int, default=32, help="ResNet width (0: the experiment's)")
    parser.add_argument("--epochs", type=int, default=0, help="max_epochs (0: the experiment's)")
    parser.add_argument("--at-epoch", type=int, default=0, help="pruning epoch (0: the experiment's)")
    parser.add_argument("--latency-size", type=int, default=224, help="input side for the latency column")
    parser.add_argument("--iterations", type=int, default=40, help="timed calls per variant, batch 1")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--batches", type=int, default=0, help="training batches an epoch (0: all)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (about a minute on 2 cores): width 8, 3 epochs of 6 batches pruned at 2, latency at 64 px, "
                             "10 calls in 2 rounds; its figures say only that every row is made")
    args = parser.parse_args()
    if args.quick:
        args.width, args.epochs, args.at_epoch, args.latency_size = 8, 3, 2, 64
        args.iterations, args.rounds, args.batches = 10, 2, 6
    latency_size = (args.latency_size, args.latency_size)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="compression-") as tmp:
        tmp = Path(tmp)
        initial, data, described, max_epochs, at_epoch = load_experiment(args.config, args.width, tmp)
        max_epochs, at_epoch = args.epochs or max_epochs, args.at_epoch or at_epoch
        if at_epoch < 2 or at_epoch >= max_epochs:
            raise SystemExit(f"{args.config}: the masks variant resumes at epoch at_epoch-2 and the pruned ones need an "
                             f"epoch after at_epoch; needs 2 <= at_epoch < max_epochs, got {at_epoch} and {max_epochs}")
        data.prepare_data()
        data.setup("fit")
        data.setup("test")
        calibration = first_batch(data.train_dataloader(), 256)
        size = tuple(data.input_size)

        every_epoch = pl.callbacks.ModelCheckpoint(dirpath=tmp / "baseline", filename="epoch{epoch:03d}",
                                                   auto_insert_metric_name=False, monitor=None, save_top_k=-1)
        models, seconds, pruning = {}, {}, {}
        batches = args.batches or 1.0
        progress(f"baseline fit, {max_epochs} epochs")
        models["fp32"], seconds["fp32"] = fit(initial, max_epochs, [every_epoch], data, batches=batches)
        resume_at = tmp / "baseline" / f"epoch{at_epoch - 1:03d}.ckpt"
        for name, target in (("pruned ratio 0.3", {"ratio": 0.3}), ("pruned ratio 0.5", {"ratio": 0.5}),
                             ("pruned MACs/2", {"macs_reduction": 2.0})):
            progress(f"{name}: resume at epoch {at_epoch}, prune, fine-tune")
            pruning[name] = StructuredPruning(at_epoch=at_epoch, **target)
            models[name], seconds[name] = fit(initial, max_epochs, [pruning[name]], data, ckpt_path=resume_at, batches=batches)
        progress(f"masks: resume at epoch {at_epoch - 1}, mask at its end, fine-tune")
        masks = pl.callbacks.ModelPruning("l1_unstructured", amount=0.5, use_global_unstructured=True,
                                          apply_pruning=AtEpochs([at_epoch - 1]), make_pruning_permanent=True)
        models["masks 50%"], seconds["masks 50%"] = fit(initial, max_epochs, [masks], data,
                                                        ckpt_path=tmp / "baseline" / f"epoch{at_epoch - 2:03d}.ckpt", batches=batches)

        progress("ONNX exports, INT8, accuracy and latency")
        files, files_224 = {}, {}
        for name, model in models.items():
            slug = name.replace(" ", "_").replace("/", "").replace("%", "")
            files[name] = export_onnx(copy.deepcopy(model.net), tmp / f"{slug}.onnx", size)
            files_224[name] = export_onnx(copy.deepcopy(model.net), tmp / f"{slug}.224.onnx", latency_size)
        # INT8 of the baseline: calibrated on training images for accuracy; at 224 on the same images upsampled
        # (only the kernels' speed is measured there, but realistic ranges keep it like the real thing)
        files["int8"] = quantize_int8(prepare_for_quantization(files["fp32"], tmp / "fp32.pre.onnx"), tmp / "int8.onnx", calibration)
        big = F.interpolate(torch.from_numpy(calibration[:32]), size=latency_size, mode="bilinear").numpy()
        files_224["int8"] = quantize_int8(prepare_for_quantization(files_224["fp32"], tmp / "fp32.224.pre.onnx"), tmp / "int8.224.onnx", big)

        threads = args.threads or None
        order = ["fp32", "int8", "masks 50%", "pruned ratio 0.3", "pruned ratio 0.5", "pruned MACs/2"]
        # the INT8 file is TensorRT's form: its top-1 as TensorRT computes it (Q/DQ run as written), its latency fused
        qdq = {name: accuracy_qdq("onnx-int8" if name == "int8" else "onnx", "tensorrt") for name in order}
        accuracy = {name: evaluate(OnnxRuntimeRunner(files[name], threads=threads, qdq=qdq[name]).infer,
                                   numpy_batches(data.test_dataloader()))["top1"] for name in order}
        p50 = interleaved_p50({name: OnnxRuntimeRunner(files_224[name], threads=threads) for name in order},
                              args.iterations, args.rounds)
        example = torch.zeros(1, 3, *latency_size)
        counted = {name: count_macs_params(models[name].net, example) for name in models}
        counted["int8"] = counted["fp32"]
        zeros = {name: sparsity(models[name].net) for name in models}
        zeros["int8"] = zeros["fp32"]

        print(f"digits test split ({len(data.test_dataloader().dataset)} images, {size[0]}x{size[1]}), {args.config.name}: {described['backbone']} "
              f"{described['backbone_args']}, {max_epochs} epochs{f' of {args.batches} batches' if args.batches else ''}, pruning at epoch {at_epoch}; latency: ONNX Runtime CPU "
              f"{latency_size[0]}x{latency_size[1]} batch 1, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), "
              f"{args.iterations} calls in {args.rounds} interleaved rounds")
        header = (f"{'variant':<18}{'top-1 %':>9}{'Δ pt':>7}{'params':>10}{f'MACs@{latency_size[0]}':>10}{'zeros':>7}"
                  f"{'p50 ms':>9}{'speedup':>9}{'size MB':>9}{'fit s':>7}")
        print(header)
        print("-" * len(header))
        for name in order:
            macs, params = counted[name]
            print(f"{name:<18}{100 * accuracy[name]:>9.2f}{100 * (accuracy[name] - accuracy['fp32']):>+7.2f}{params / 1e3:>9.0f}K"
                  f"{macs / 1e9:>9.2f}G{100 * zeros[name]:>6.0f}%{p50[name]:>9.2f}{p50['fp32'] / p50[name]:>8.2f}x"
                  f"{os.path.getsize(files[name]) / 1e6:>9.2f}{seconds.get(name, 0.0):>7.0f}")

        half = "pruned MACs/2"
        reduction = counted["fp32"][0] / counted[half][0]
        delta = 100 * (accuracy[half] - accuracy["fp32"])  # negative = lost
        speedup = p50["fp32"] / p50[half]
        print()
        print(f"target structured pruning at 2x fewer MACs ({reduction:.2f}x here), top-1 Δ >= -1 pt after the in-fit "
              f"fine-tune: {delta:+.2f} pt -> {'met' if delta >= -1.0 else 'NOT met'}")
        print(f"target structured pruning at 2x fewer MACs, ONNX Runtime speedup at {latency_size[0]} >= 1.5x: "
              f"{speedup:.2f}x -> {'met' if speedup >= 1.5 else 'NOT met'}")
        print(f"masks: {100 * zeros['masks 50%']:.0f}% of the conv/linear weights are zero, yet the file is "
              f"{os.path.getsize(files['masks 50%']) / os.path.getsize(files['fp32']):.2f}x and the latency "
              f"{p50['masks 50%'] / p50['fp32']:.2f}x FP32's: dense kernels multiply the zeros too")
        print("structured pruning, params/MACs as the callback logged them (at the training size): " + "; ".join(
            f"{name}: params {s.stats['params_before']:,} -> {s.stats['params_after']:,}, MACs "
            f"{s.stats['macs_before'] / 1e6:.1f}M -> {s.stats['macs_after'] / 1e6:.1f}M" for name, s in pruning.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
