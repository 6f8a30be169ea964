"""DeployBundle: re-measure every artifact through deploy's runners and write the bundle of DESIGN.md."""

from __future__ import annotations

import io
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info

from callbacks import report as report_format
from callbacks.fit_end import BUNDLE, FitEndStep, best_model, find_step, loader_arrays, top1
from callbacks.onnx_export import ONNXExport
from callbacks.pruning import StructuredPruning
from callbacks.quantization import Int8Quantization
from callbacks.tensorrt_build import TensorRTBuild
from deploy.benchmark import measure
from deploy.bundle import artifact_entry, atomic_write_bytes, atomic_write_json, new_manifest, write_labels, write_manifest
from deploy.runners import OnnxRuntimeRunner, Runner, TensorRTRunner


class TorchRunner(Runner):
    """The PyTorch model behind deploy's runner interface, so it is timed and scored the same way."""

    def __init__(self, model: torch.nn.Module, input_shape: tuple[int, int, int]) -> None:
        self.model, self.input_shape = model.eval(), input_shape
        self.input_name, self.output_name, self.description = "input", "logits", "pytorch"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(batch)).numpy()


def top5(logits: np.ndarray, labels: np.ndarray) -> Optional[float]:
    if logits.shape[1] <= 5:
        return None
    return float((np.argsort(-logits, axis=1)[:, :5] == labels[:, None]).any(axis=1).mean())


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"CPU {model or platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def versions() -> dict[str, str]:
    found = {"torch": torch.__version__}
    for name in ("onnx", "onnxruntime", "tensorrt", "pytorch-lightning"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    if torch.version.cuda:
        found["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(0)
    return found


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class DeployBundle(FitEndStep):
    """Evaluate every artifact on the test split, time it, and write runs/<exp>/version_N/bundle/.

    The bundle is assembled in a staging folder and renamed into place at the very end (manifest.json last),
    so a fit killed half-way never leaves a bundle that looks complete.

    Args:
        latency_iterations: timed batch-1 calls per artifact (p50 is reported).
        throughput_batch: batch size of the throughput measurement.
        throughput_iterations: timed calls at that batch size.
    """

    requires = (ONNXExport,)

    def __init__(self, latency_iterations: int = 100, throughput_batch: int = 32, throughput_iterations: int = 10) -> None:
        super().__init__()
        self.latency_iterations, self.throughput_batch, self.throughput_iterations = (
            latency_iterations, throughput_batch, throughput_iterations)
        self.bundle_dir: Optional[Path] = None
        self.report: dict[str, Any] = {}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        export = find_step(trainer, ONNXExport)
        if not self.should_run(trainer) or export is None or export.onnx_path is None:
            return
        dm = trainer.datamodule
        model, checkpoint = best_model(trainer, pl_module)
        x, y = loader_arrays(dm.test_dataloader())
        shape = tuple(x.shape[1:])
        device = cpu_name()

        candidates: list[tuple[str, str, str, Runner, Optional[Path]]] = [
            ("PyTorch FP32", "pytorch", "fp32", TorchRunner(model, shape), None),
            ("ONNX FP32", "onnx", "fp32", OnnxRuntimeRunner(str(export.onnx_path)), export.onnx_path),
        ]
        quant = find_step(trainer, Int8Quantization)
        if quant is not None and quant.int8_path is not None:
            candidates.append(("ONNX INT8", "onnx-int8", "int8", OnnxRuntimeRunner(str(quant.int8_path)), quant.int8_path))
        trt = find_step(trainer, TensorRTBuild)
        for engine, precision, _sidecar in (trt.engines if trt else []):
            candidates.append((f"TensorRT {precision.upper()}", "tensorrt", precision, TensorRTRunner(str(engine)), engine))

        gpu_name = versions().get("gpu", "GPU")
        rows, artifacts = [], []
        for label, fmt, precision, runner, path in candidates:
            logits = runner.infer(x)
            latency = measure(runner, 1, iterations=self.latency_iterations, warmup=5)
            throughput = measure(runner, self.throughput_batch, iterations=self.throughput_iterations, warmup=2)
            row = {"label": label, "format": fmt, "precision": precision, "top1": top1(logits, y), "top5": top5(logits, y),
                   "latency_ms": latency["p50_ms"], "throughput": throughput["throughput"],
                   "size_mb": (os.path.getsize(path) if path else _state_dict_bytes(model)) / 1e6,
                   "device": gpu_name if fmt == "tensorrt" else device}
            rows.append(row)
            if path is not None:
                metrics = {k: row[k] for k in ("top1", "latency_ms", "throughput", "device")}
                if row["top5"] is not None:
                    metrics["top5"] = row["top5"]
                artifacts.append(artifact_entry(path, fmt, precision, metrics, bundle_dir=str(self.staging)))

        self.report = self._report(trainer, rows, device, len(y))
        self._write(trainer, dm, artifacts, checkpoint)
        self._log(trainer)

    def _report(self, trainer: pl.Trainer, rows: list[dict], device: str, n_test: int) -> dict[str, Any]:
        notes = []
        export = find_step(trainer, ONNXExport)
        notes.append(("ONNX parity", f"max |logit difference| vs torch {max(export.parity.values()):.1e} "
                                     f"({', '.join(export.parity)}; opset {export.opset}, {export.exporter} exporter)"))
        quant = find_step(trainer, Int8Quantization)
        if quant is not None and quant.report:
            q = quant.report
            kept = ", ".join(q["excluded_nodes"]) or "none"
            gate = "met" if q["gate_met"] else "NOT met"
            notes.append(("INT8", f"{q['mode']} quantization, drop {q['drop_pts']:+.2f} pt on the validation split "
                                  f"(gate {q.get('max_drop_pts', '-')} pt: {gate}); nodes kept in FP32: {kept}"))
        trt = find_step(trainer, TensorRTBuild)
        if trt is not None and trt.skipped:
            notes.append(("TensorRT", "; ".join(f"{p} skipped: {r}" for p, r in trt.skipped.items())))
        pruning = find_step(trainer, StructuredPruning)
        if pruning is not None and pruning.stats:
            s = pruning.stats
            notes.append(("Structured pruning", f"at epoch {s['epoch']}: params {s['params_before']:,} -> {s['params_after']:,}, "
                                                f"MACs at {'x'.join(map(str, s['input_size']))} {s['macs_before']:,} -> {s['macs_after']:,} "
                                                f"({s['macs_before'] / max(s['macs_after'], 1):.2f}x fewer)"))
        return {"name": self.name(trainer), "device": device, "throughput_batch": self.throughput_batch,
                "test_samples": n_test, "rows": rows, "notes": notes}

    def name(self, trainer: pl.Trainer) -> str:
        logger = trainer.logger
        return str(getattr(logger, "name", None) or self.run_dir.name)

    def _write(self, trainer: pl.Trainer, dm: Any, artifacts: list[dict], checkpoint: str) -> None:
        staging = self.staging
        trt = find_step(trainer, TensorRTBuild)
        classes = list(getattr(dm, "class_names", None) or [str(i) for i in range(trainer.lightning_module.hparams.num_classes)])
        write_labels(staging, classes)
        atomic_write_json(staging / "report.json", self.report)
        atomic_write_bytes(staging / "report.md", report_format.markdown(self.report).encode("utf-8"))
        fig = report_format.figure(self.report)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        atomic_write_bytes(staging / "report.png", buffer.getvalue())
        self._figure = fig
        config = self.run_dir / "config.yaml"
        if config.is_file():
            shutil.copyfile(config, staging / "config.yaml")
        source = {"git_commit": git_commit(), "config": "config.yaml" if config.is_file() else None,
                  "checkpoint": os.path.relpath(checkpoint, self.run_dir) if os.path.isfile(checkpoint) else checkpoint}
        manifest = new_manifest(self.name(trainer), classes, dm.preprocessing.to_dict(), artifacts, source, versions())
        if trt is not None and trt.skipped:
            manifest["skipped"] = [{"format": "tensorrt", "precision": p, "reason": f"skipped: {r}"} for p, r in trt.skipped.items()]
        (staging / "timing.cache").unlink(missing_ok=True)  # a build-machine cache, no use on a device
        write_manifest(staging, manifest)  # last file written
        self.bundle_dir = self.run_dir / BUNDLE
        _replace_dir(staging, self.bundle_dir)

    def _log(self, trainer: pl.Trainer) -> None:
        table = report_format.plain_table(self.report)
        if isinstance(trainer.logger, TensorBoardLogger):
            trainer.logger.experiment.add_text("bundle/report", report_format.markdown(self.report), trainer.global_step)
            trainer.logger.experiment.add_figure("bundle/report", self._figure, trainer.global_step)
            trainer.logger.experiment.flush()
        rank_zero_info(f"deploy bundle: {self.bundle_dir}")
        print(f"\n{table}\n{self.report['device']}; bundle: {self.bundle_dir}\n", flush=True)


def _state_dict_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def _replace_dir(new: Path, target: Path) -> None:
    """Rename `new` to `target`; an existing `target` (an earlier fit in this run) is swapped out first."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

