"""DeployBundle: re-measure every artifact through deploy's runners and write the bundle of DESIGN.md."""

from __future__ import annotations

import io
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info

from callbacks import report as report_format
from callbacks.fit_end import BUNDLE, FitEndStep, evaluate, input_size, numpy_batches
from callbacks.records import FAILED, OK, ArtifactRecord, FitEndRecord
from deploy.benchmark import measure
from deploy.bundle import artifact_entry, atomic_write_bytes, atomic_write_json, new_manifest, write_labels, write_manifest
from deploy.errors import debug_mode
from deploy.errors import first_line as one_sentence
from deploy.forms import EXACT_ACCURACY, accuracy_qdq, artifact_form, device_qdq
from deploy.install import COMPANIONS
import deploy.runtimes  # noqa: F401 (the built-in runtimes register themselves)
from deploy.registry import RUNTIMES, Runner, default_runtime, runner_for_file

# a row's, kept in the manifest
METRIC_KEYS = ("top1", "top5", "delta_pts", "latency_ms", "throughput", "device", "measured_as")


class TorchRunner(Runner):
    """The PyTorch model behind deploy's runner interface, so it is timed and scored the same way."""

    def __init__(self, model: torch.nn.Module, input_shape: tuple[int, int, int]) -> None:
        self.model, self.input_shape = model.eval(), input_shape
        self.input_name, self.output_name, self.description = "input", "logits", "pytorch"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(batch)).numpy()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"CPU {model or platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def versions() -> dict[str, str]:
    found = {"torch": torch.__version__}
    for name in ("onnx", "onnxruntime", "openvino", "tensorrt", "pytorch-lightning", "litert-torch",
                 "ai-edge-quantizer", "ai-edge-litert", "executorch", "pnnx", "ncnn"):
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
    """Score every artifact the earlier steps recorded on the test split, time it, and write
    runs/<exp>/version_N/bundle/.

    It reads only the run's artifact records, so a new fit-end step needs no change here. Artifacts that were
    skipped or failed are listed in the manifest and the report with their reason. The bundle is assembled in a
    staging folder and renamed into place at the very end (manifest.json last), so a fit killed half-way never
    leaves a bundle that looks complete.

    Args:
        latency_iterations: timed batch-1 calls per artifact (p50 is reported).
        throughput_batch: batch size of the throughput measurement.
        throughput_iterations: timed calls at that batch size.
        tensorrt_rules: the TensorRT version whose documented ONNX rules every ONNX artifact is checked against.
    """

    def __init__(self, latency_iterations: int = 100, throughput_batch: int = 32, throughput_iterations: int = 10,
                 tensorrt_rules: str = "10") -> None:
        super().__init__()
        self.latency_iterations, self.throughput_batch, self.throughput_iterations = (
            latency_iterations, throughput_batch, throughput_iterations)
        self.tensorrt_rules = tensorrt_rules
        self.bundle_dir: Optional[Path] = None
        self.previous: Optional[Path] = None  # where the bundle this one replaced was kept (bundle.prev), if any
        self.report: dict[str, Any] = {}

    LISTS_UNAVAILABLE = True  # its table ends with each skipped or failed artifact and why
    COLLECTS = True  # it bundles what every other step made and noted, so it runs last wherever it is listed

    def consumes(self) -> tuple[str, ...]:
        return ("onnx:fp32",)

    def skip(self, record: FitEndRecord, reason: str) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        print(f"no deploy bundle written: {reason}; the checkpoints are in {self.run_dir / 'checkpoints'}",
              file=sys.stderr, flush=True)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: FitEndRecord) -> None:
        dm = trainer.datamodule
        model, checkpoint = self.best_model(trainer, pl_module)
        shape = (3, *input_size(pl_module))
        device = cpu_name()
        gpu_name = versions().get("gpu", "GPU")
        test_batches = lambda: numpy_batches(dm.test_dataloader())  # noqa: E731

        self._confusion = None
        reference = self.measure_one("PyTorch FP32", TorchRunner(model, shape), test_batches)
        reference.update(format="pytorch", precision="fp32", runtime="pytorch", device=device, form="FP32 checkpoint",
                         file=os.path.basename(checkpoint),
                         size_mb=_state_dict_bytes(model) / 1e6, delta_pts=0.0)
        rows, entries = [reference], []
        for art in list(record.artifacts):
            others = []
            if art.ok:
                try:
                    first_onnx = art.format == "onnx" and self._confusion is None
                    confusion = np.zeros((self.num_classes(trainer),) * 2, dtype=np.int64) if first_onnx else None
                    row = self.measure_file(art, test_batches, confusion)
                    if first_onnx:
                        self._confusion = (art.label, confusion)
                except Exception as exc:
                    if debug_mode():
                        raise
                    sentence = f"{art.file.name} could not be measured: {one_sentence(exc)}"
                    record.fail(self.name, sentence)
                    art.status, art.reason = FAILED, sentence  # an unmeasured file is not shipped
                    art.file.unlink(missing_ok=True)
                    print(f"fit-end step {self.name}: {sentence}; left out of the bundle", file=sys.stderr, flush=True)
                else:
                    row.update(format=art.format, precision=art.precision, runtime=default_runtime(art.format),
                               form=form_of(art), file=art.file.name, device=gpu_name if art.format == "tensorrt" else device,
                               size_mb=_file_bytes(art) / 1e6,
                               delta_pts=100 * (row["top1"] - reference["top1"]), gate=gate_verdict(art))
                    rows.append(row)
                    others = self.other_runtime_rows(art, test_batches, reference, device, record)
                    rows.extend(dict(r, gate=row["gate"]) for r in others)
            entries.append(self.manifest_entry(art, row if art.ok else None, others))

        self.report = self.build_report(trainer, record, rows, device, reference["samples"])
        if self._confusion is not None:
            self.report["confusion"] = {"artifact": self._confusion[0], "rows_true_columns_predicted": self._confusion[1].tolist()}
        self.write(trainer, dm, entries, checkpoint)
        record.bundle_dir = self.bundle_dir
        self.announce(trainer, record)

    def measure_file(self, art: ArtifactRecord, test_batches, confusion: Optional[np.ndarray] = None) -> dict:
        """The file in its format's default runtime: its top-1 as the runtime it is for computes it (TensorRT's file
        with its Q/DQ run as written), its latency as a device here would run it (deploy.forms.device_qdq)."""
        scored, timed = accuracy_qdq(art.format, art.runtime), device_qdq(art.format, art.runtime, "onnxruntime")
        with runner_for_file(art.file, art.format, qdq=scored) as runner:
            if timed == scored:
                row = self.measure_one(art.label, runner, test_batches, confusion)
            else:
                with runner_for_file(art.file, art.format, qdq=timed) as timing:
                    row = self.measure_one(art.label, runner, test_batches, confusion, timing)
        if scored == "exact":
            row["measured_as"] = (f"top-1 and latency: {EXACT_ACCURACY}" if timed == scored else
                                  f"top-1: {EXACT_ACCURACY}; latency: its fused int8 kernels")
        return row

    def other_runtime_rows(self, art: ArtifactRecord, test_batches, reference: dict, device: str,
                           record: FitEndRecord) -> list[dict[str, Any]]:
        """The same file in every other runtime installed here that reads its format (OpenVINO reads ONNX), so the
        report shows what a CPU device would pick; a runtime that cannot run it is a note, not a failure."""
        rows = []
        measured = default_runtime(art.format) or "onnxruntime"  # measure_file's row: not a second time here
        for name, spec in RUNTIMES.items():
            if name == measured or art.format not in spec.formats or not spec.available():
                continue
            try:
                with runner_for_file(art.file, art.format, runtime=name) as runner:
                    row = self.measure_one(f"{art.label} · {name}", runner, test_batches)
            except Exception as exc:
                if debug_mode():
                    raise
                record.note(self.name, f"{art.label} in {name}", f"not measured: {one_sentence(exc)}")
                continue
            row.update(format=art.format, precision=spec.precision or art.precision, runtime=name, device=device,
                       form=form_of(art), other_runtime=True, file=art.file.name,
                       size_mb=_file_bytes(art) / 1e6, delta_pts=100 * (row["top1"] - reference["top1"]))
            rows.append(row)
        return rows

    def measure_one(self, label: str, runner: Runner, batches, confusion: Optional[np.ndarray] = None,
                    timing: Optional[Runner] = None) -> dict[str, Any]:
        scores = evaluate(runner.infer, batches(), confusion)
        timing = timing or runner
        latency = measure(timing, 1, iterations=self.latency_iterations, warmup=5)
        throughput = measure(timing, self.throughput_batch, iterations=self.throughput_iterations, warmup=2)
        return {"label": label, **scores, "latency_ms": latency["p50_ms"], "throughput": throughput["throughput"]}

    def manifest_entry(self, art: ArtifactRecord, row: Optional[dict], others: Sequence[dict] = ()) -> dict[str, Any]:
        facts = dict(art.facts)
        quantization = facts.pop("quantization", None)
        layout = facts.pop("layout", None)
        extra = {"runtime": art.runtime, "form": form_of(art), "step": art.step, "label": art.label}
        if quantization is not None:
            extra["quantization"] = quantization
        if layout is not None:  # the input layout the file takes (NHWC for LiteRT's); deploy's runners transpose to it
            extra["layout"] = layout
        if facts:
            extra["facts"] = facts
        if not art.ok:
            return {"file": None, "format": art.format, "precision": art.precision, "status": art.status,
                    "reason": art.reason, **extra}
        metrics = {k: row[k] for k in METRIC_KEYS if k in row}
        entry = artifact_entry(art.file, art.format, art.precision, metrics, bundle_dir=str(self.staging),
                               companions=art.companions)
        entry.update(status=OK, **extra)
        if others:  # `deploy --runtime auto` judges e.g. the file's bf16 run by its own top-1, not the file's
            entry["runtime_metrics"] = {r["runtime"]: {k: r[k] for k in ("precision", *METRIC_KEYS) if k in r}
                                        for r in others}
        if gate_verdict(art) is not None:
            entry["gate"] = gate_verdict(art)  # `deploy` never picks a file that missed its gate by itself
        if art.format in ("onnx", "onnx-int8") and art.runtime in ("any", "tensorrt"):
            # the CPU-form INT8 file breaks TensorRT's rules by design (uint8 activations): it is not checked
            entry["tensorrt_check"] = tensorrt_verdict(art.file, self.tensorrt_rules)
        return entry

    def build_report(self, trainer: pl.Trainer, record: FitEndRecord, rows: list[dict], device: str,
                     n_test: int) -> dict[str, Any]:
        unavailable = [{"label": a.label, "step": a.step, "status": a.status, "reason": a.reason}
                       for a in record.artifacts if not a.ok]
        params = sum(p.numel() for p in trainer.lightning_module.parameters())
        return {"name": self.experiment_name(trainer), "device": device, "throughput_batch": self.throughput_batch,
                "latency_iterations": self.latency_iterations,
                "test_samples": n_test, "params": params, "rows": rows, "notes": [list(n) for n in record.notes],
                "unavailable": unavailable, "failures": [f"{f.step}: {f.sentence}" for f in record.failures],
                "steps": record.facts, "int8": record.topics.get("int8", {})}

    @staticmethod
    def num_classes(trainer: pl.Trainer) -> int:
        names = getattr(trainer.datamodule, "class_names", None)
        return len(names) if names else int(trainer.lightning_module.hparams.num_classes)

    def experiment_name(self, trainer: pl.Trainer) -> str:
        logger = trainer.logger
        return str(getattr(logger, "name", None) or self.run_dir.name)

    def write(self, trainer: pl.Trainer, dm: Any, entries: list[dict], checkpoint: str) -> None:
        staging = self.staging
        classes = list(getattr(dm, "class_names", None) or [str(i) for i in range(trainer.lightning_module.hparams.num_classes)])
        write_labels(staging, classes)
        atomic_write_json(staging / "report.json", self.report)
        atomic_write_bytes(staging / "report.md", report_format.markdown(self.report).encode("utf-8"))
        fig = report_format.figure(self.report)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        atomic_write_bytes(staging / "report.png", buffer.getvalue())
        self._figure = fig
        if self._confusion is not None:  # the shipped FP32 ONNX on the test split, as a device would classify
            from lightning_modules.figures import confusion_matrix_figure

            label, matrix = self._confusion
            confusion = confusion_matrix_figure(torch.from_numpy(matrix), classes)
            confusion.axes[0].set_title(f"{label}: test split confusion matrix", fontsize=10)
            confusion.tight_layout()
            buffer = io.BytesIO()
            confusion.savefig(buffer, format="png")
            atomic_write_bytes(staging / "confusion.png", buffer.getvalue())
        config = self.run_dir / "config.yaml"
        if config.is_file():
            shutil.copyfile(config, staging / "config.yaml")
        source = {"git_commit": git_commit(), "config": "config.yaml" if config.is_file() else None,
                  "checkpoint": os.path.relpath(checkpoint, self.run_dir) if os.path.isfile(checkpoint) else checkpoint}
        manifest = new_manifest(self.experiment_name(trainer), classes, dm.preprocessing.to_dict(), entries, source, versions())
        drop_strays(staging, manifest)  # scratch files of the steps (a build-machine cache too) stay out of it
        write_manifest(staging, manifest)  # last file written
        self.bundle_dir = self.run_dir / BUNDLE
        self.previous = _replace_dir(staging, self.bundle_dir)

    def announce(self, trainer: pl.Trainer, record: FitEndRecord) -> None:
        table = report_format.plain_table(self.report)
        if isinstance(trainer.logger, TensorBoardLogger):
            trainer.logger.experiment.add_text("bundle/report", report_format.markdown(self.report), trainer.global_step)
            trainer.logger.experiment.add_figure("bundle/report", self._figure, trainer.global_step)
            values = report_format.leaderboard_values(self.report)
            values["bundle/size_mb"] = sum(f.stat().st_size for f in self.bundle_dir.rglob("*") if f.is_file()) / 1e6
            # The HPARAMS tab reads these tags (each run's last value). One number a run is one point, which TIME
            # SERIES draws as an empty chart; logged at the run's first and last step it is a flat line at the
            # bundle's value, one a run, so runs compare by height on each bundle/ card.
            for step in (0, max(trainer.global_step, 1)):
                trainer.logger.log_metrics(values, step=step)
            trainer.logger.experiment.flush()
        rank_zero_info(f"deploy bundle: {self.bundle_dir}")
        lines = [f"\n{report_format.caption(self.report)}", table, *report_format.runtime_gaps(self.report),
                 *report_format.cpu_paths(self.report)]
        said: dict[tuple[str, str], list[str]] = {}  # one line per reason: both engines skip for the same one
        for item in self.report["unavailable"]:
            said.setdefault((item["status"], item["reason"]), []).append(item["label"])
        lines += [f"{', '.join(labels)}: {status}: {reason}" for (status, reason), labels in said.items()]
        lines.append(f"bundle: {self.bundle_dir}" + (f" (the bundle it replaced is kept as {self.previous.name}/)"
                                                      if self.previous else ""))
        lines += gate_misses(record)
        lines[-1] += "\n"
        self.chain.publish_summary("\n".join(lines))


def tensorrt_verdict(path: Path, rules: str) -> dict[str, Any]:
    """TensorRT's documented ONNX rules, checked without TensorRT (deploy.tensorrt_check)."""
    from deploy.tensorrt_check import check_tensorrt

    return check_tensorrt(path, tensorrt=rules)


def _file_bytes(art: ArtifactRecord) -> int:
    """The artifact's size on disk: its file and the companions it needs (an OpenVINO IR's .bin)."""
    return sum(os.path.getsize(f) for f in [art.file, *art.companions])


def _state_dict_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def form_of(art: ArtifactRecord) -> str:
    """What the file was made for, as every table names it ("INT8 TensorRT-form", "INT8 CPU-form", "FP32")."""
    quantization = art.facts.get("quantization") or {}
    method = "dynamic" if quantization.get("mode") == "dynamic" else quantization.get("method")
    return artifact_form(art.format, art.precision, art.runtime, method)


def gate_verdict(art: ArtifactRecord) -> Optional[str]:
    """"met" or "not met" for an INT8 file behind an accuracy gate (its step's facts), None for any other file."""
    quantization = art.facts.get("quantization") or {}
    if "gate_met" not in quantization:
        return None
    return "met" if quantization["gate_met"] else "not met"


WHAT_TO_TRY = "try QuantizationAwareTraining, method: entropy or percentile, or a larger max_excluded"


def gate_misses(record: FitEndRecord) -> list[str]:
    """One line per INT8 file that missed its gate: which form, by how much, and what to try."""
    lines = []
    for art in record.artifacts:
        if art.ok and gate_verdict(art) == "not met":
            q = art.facts["quantization"]
            lines.append(f"INT8 gate not met: {art.file.name} ({form_of(art)}) loses {-q['delta_pts']:.2f} pt top-1 on the validation split, "
                         f"more than the {q['max_drop_pts']} pt allowed (max_drop); it ships labelled so and `deploy "
                         f"--runtime auto` never picks it; {q.get('what_to_try') or WHAT_TO_TRY}")
    return lines


def drop_strays(staging: Path, manifest: dict) -> list[str]:
    """Remove from the staging folder everything the bundle does not list: the steps' scratch files (a prepared
    ONNX, a plain PTQ file for comparison, a timing cache) never reach a device. Returns what was removed."""
    keep = set(COMPANIONS)
    for entry in manifest["artifacts"]:
        if entry.get("file"):
            keep |= {entry["file"], entry["file"] + ".json", *(part["file"] for part in entry.get("companions", []))}
    removed = []
    for path in sorted(staging.rglob("*"), reverse=True):  # files before the folders that hold them
        name = path.relative_to(staging).as_posix()
        if name in keep or any(k.startswith(name + "/") for k in keep):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(name)
    return removed


def _replace_dir(new: Path, target: Path) -> Optional[Path]:
    """Rename `new` to `target`. An existing `target` (`main.py bundle` again on a run, a resumed fit's second
    bundle) is kept as `<target>.prev` (one generation: an older .prev goes), so re-bundling with other settings
    never loses the bundle a user may have measured or installed; returns where it went, or None."""
    if not target.exists():
        os.replace(new, target)
        return None
    previous = target.with_name(f"{target.name}.prev")
    stale = target.with_name(f".{target.name}.prev-old-{os.getpid()}")
    if previous.exists():
        os.replace(previous, stale)
    os.replace(target, previous)
    os.replace(new, target)
    shutil.rmtree(stale, ignore_errors=True)
    return previous
