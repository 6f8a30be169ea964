"""QuantizationAwareTraining: where post-training INT8 loses accuracy, fine-tune with fake quantization and ship the
result as TensorRT's Q/DQ INT8 file.

Library: NVIDIA ModelOpt (`modelopt.torch.quantization`, the maintained path from PyTorch to TensorRT Q/DQ). It
installs from PyPI and runs on a CPU-only torch here; its INT8 config is what the exported file computes:
symmetric int8, per-output-channel weight scales (axis 0), per-tensor activation scales, float biases, max
(minmax) calibration. BatchNorm is folded into the convolutions first (torch.fx), so the weights fake-quantized in
training are the very weights the ONNX file holds (onnxruntime's PTQ folds BatchNorm too, so both start from the
same graph). ModelOpt exports only through the TorchScript exporter, and it writes each weight as a float
initializer behind a QuantizeLinear; `fold_weight_quantizers` stores those as the int8 initializers TensorRT and
onnxruntime's own quantizer use.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import lightning_fabric
import numpy as np
import onnx
import pytorch_lightning as pl
import torch
from onnx import numpy_helper
from pytorch_lightning import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import nn

from callbacks.fit_end import FitEndStep, NetworkBatches, evaluate, input_size, numpy_batches
from callbacks.quantization import asymmetric_zero_points, loader_batches, prepare_for_quantization, quantize_int8
from callbacks.records import ArtifactRecord, FitEndRecord
from deploy.atomic import atomic_path
from deploy.forms import accuracy_qdq
from deploy.runtimes.onnxruntime import OnnxRuntimeRunner

# the operators whose inputs ModelOpt's INT8 config quantizes (nn.Conv2d, nn.Linear), as ONNX names them
QAT_OP_TYPES = ("Conv", "Gemm", "MatMul")


def _mtq():
    try:
        import modelopt.torch.quantization as mtq
    except ImportError:
        raise RuntimeError("QuantizationAwareTraining needs NVIDIA ModelOpt; pip install nvidia-modelopt "
                           "(or pip install -e '.[qat]')") from None
    return mtq


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """A copy of `net` with every Conv→BatchNorm pair folded into one Conv (eval-mode statistics)."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(net).eval())
    except Exception as exc:  # torch.fx cannot trace data-dependent control flow
        raise RuntimeError(f"QuantizationAwareTraining could not trace {type(net).__name__} with torch.fx to fold "
                           f"its BatchNorm ({type(exc).__name__}); use a traceable backbone") from None


def insert_fake_quant(net: nn.Module, calibration) -> nn.Module:
    """ModelOpt INT8 fake quantizers around every Conv/Linear, their ranges calibrated (max) on `calibration`
    (an iterable of input batches): training starts where minmax PTQ does."""
    mtq = _mtq()

    def forward_loop(model: nn.Module) -> None:
        with torch.no_grad():
            for x in calibration:
                model(torch.as_tensor(x))

    return mtq.quantize(net, copy.deepcopy(mtq.INT8_DEFAULT_CFG), forward_loop=forward_loop)


def fold_weight_quantizers(path: str | os.PathLike) -> int:
    """Store every constant weight that feeds a QuantizeLinear as an int8 initializer feeding its DequantizeLinear
    (what TensorRT expects of weights and what onnxruntime's quantizer writes); returns how many were folded."""
    model = onnx.load(str(path))
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    keep, folded, renamed = [], 0, {}
    for node in graph.node:
        inputs = list(node.input)
        if node.op_type == "QuantizeLinear" and all(name in consts for name in inputs[:3]) and len(inputs) >= 3:
            x, scale, zero = consts[inputs[0]], consts[inputs[1]], consts[inputs[2]]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale.size > 1:
                shape = [1] * x.ndim
                shape[axis] = -1
                scale, zero = scale.reshape(shape), zero.reshape(shape)
            q = np.clip(np.rint(x / scale) + zero.astype(np.int32), -128, 127).astype(np.int8)  # rint: ONNX rounds half to even
            name = f"{node.output[0]}_int8"
            graph.initializer.append(numpy_helper.from_array(q, name))
            renamed[node.output[0]] = name
            folded += 1
            continue
        keep.append(node)
    for node in keep:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    used = {name for node in keep for name in node.input}
    keep = [n for n in keep if not (n.op_type == "Constant" and n.output[0] not in used)]
    unused = [i for i in graph.initializer if i.name not in used and i.name not in {o.name for o in graph.output}]
    for init in unused:
        graph.initializer.remove(init)
    del graph.node[:]
    graph.node.extend(keep)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))
    return folded


def export_qdq_onnx(net: nn.Module, path: str | os.PathLike, size: tuple[int, int]) -> Path:
    """The fake-quantized network as a Q/DQ ONNX file (dynamic batch, int8 weights), written atomically."""
    path = Path(path)
    net = net.cpu().eval()
    with atomic_path(path) as tmp:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            # ModelOpt's quantizers carry TorchScript symbolics only; the dynamo exporter cannot trace their range checks
            torch.onnx.export(net, (torch.zeros(2, 3, *size),), str(tmp), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"], do_constant_folding=True,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        fold_weight_quantizers(tmp)
    return path


def export_parity(net: nn.Module, path: str | os.PathLike, x: torch.Tensor) -> dict[str, float]:
    """How closely ONNX Runtime on the exported file reproduces the fake-quantized network on `x`: the largest
    logit difference (relative to the largest logit) and the share of images whose top-1 class agrees."""
    with torch.no_grad():
        expected = net.eval()(x).numpy()
    got = OnnxRuntimeRunner(str(path), qdq="exact").infer(x.numpy())  # the file's arithmetic, as TensorRT runs it
    return {"max_abs_diff": float(np.abs(got - expected).max()),
            "max_abs_logit": float(np.abs(expected).max()),
            "top1_agreement": float((got.argmax(1) == expected.argmax(1)).mean()), "images": int(len(x))}


class QATModule(pl.LightningModule):
    """The folded, fake-quantized network as the second fit trains it: the fit's loss (cross-entropy with its label
    smoothing), AdamW with a cosine decay to 0 over the fit's steps (straight-through gradients through the fake
    quantizers), and its validation top-1 (`val_top1`, also logged as `val/top1`) after each validation pass. The
    loaders' uint8 images are normalized on the device the batch was moved to, as the DataModule does for the fit."""

    def __init__(self, net: nn.Module, normalize: Optional[Callable[[torch.Tensor], torch.Tensor]], lr: float,
                 weight_decay: float = 0.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.net, self.normalize = net, normalize
        self.lr, self.weight_decay, self.label_smoothing = lr, weight_decay, label_smoothing
        self._correct = self._total = 0
        self.val_top1: Optional[float] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        return (self.normalize(x) if self.normalize is not None else x), y

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y, label_smoothing=self.label_smoothing)

    def on_validation_epoch_start(self) -> None:
        self._correct = self._total = 0

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self._correct += int((self.net(x).argmax(dim=1) == y).sum())
        self._total += len(y)

    def on_validation_epoch_end(self) -> None:
        self.val_top1 = self._correct / max(1, self._total)
        self.log("val/top1", self.val_top1)

    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.AdamW([p for p in self.net.parameters() if p.requires_grad], lr=self.lr,
                                weight_decay=self.weight_decay)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class KeepBestEpoch(Callback):
    """Each validation pass's top-1 (the module's `val_top1`; a `trainer.validate` before the fit gives index 0,
    the calibrated start) and, in memory, the weights of the best-scoring pass (the earliest of equal scores),
    which the module holds again when the fit ends: nothing is written, so nothing is left half-written."""

    def __init__(self) -> None:
        self.scores: list[float] = []
        self.best: Optional[dict[str, torch.Tensor]] = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        score = float(pl_module.val_top1)
        if score > max(self.scores, default=-1.0):
            self.best = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.scores.append(score)
        rank_zero_info(f"QAT epoch {len(self.scores) - 1}: val top-1 {100 * score:.2f} %")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.best is not None:
            pl_module.load_state_dict(self.best)


class _NotLightnings(logging.Filter):
    """Lets through the info lines of everything but Lightning's own modules."""

    HOMES = tuple(os.path.dirname(m.__file__) for m in (pl, lightning_fabric))

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(self.HOMES)


@contextlib.contextmanager
def quiet_lightning():
    """The second fit without Lightning's banner (GPU/TPU available ..., `max_epochs` reached) and the loader
    notices the main fit already gave; the step's own lines still show."""
    loggers = [logging.getLogger(f"{name}.utilities.rank_zero") for name in ("pytorch_lightning", "lightning_fabric")]
    quiet = _NotLightnings()
    try:
        for lg in loggers:
            lg.addFilter(quiet)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=PossibleUserWarning)
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(quiet)


def fine_tune_fit(module: QATModule, train_loader, val_loader, epochs: int,
                  like: Optional[pl.Trainer] = None) -> tuple[float, list[float]]:
    """QAT as a second Lightning fit of `epochs` epochs: validated once before (epoch 0, the calibrated start) and
    after each epoch, ending on the best epoch's weights (KeepBestEpoch). It runs on the device of `like` (the
    main trainer) on one device, in float32, with no logger and no checkpoint files of its own. Returns the seconds
    spent, validation included, and the val top-1 by epoch; the module is left on the CPU in eval mode."""
    root = like.strategy.root_device if like is not None else torch.device("cpu")
    keep = KeepBestEpoch()
    start = time.perf_counter()
    with quiet_lightning():
        qat = pl.Trainer(accelerator="gpu" if root.type == "cuda" else "cpu",
                         devices=[root.index or 0] if root.type == "cuda" else 1, precision="32-true",
                         max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[keep],
                         default_root_dir=like.default_root_dir if like is not None else None)
        qat.validate(module, dataloaders=val_loader, verbose=False)
        qat.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    if qat.interrupted or len(keep.scores) != epochs + 1:
        raise RuntimeError(f"the QAT fit stopped after {len(keep.scores) - 1} of {epochs} epochs; see the messages "
                           "above")
    module.cpu().eval()
    return time.perf_counter() - start, keep.scores


class QuantizationAwareTraining(FitEndStep):
    """After the fit: fold BatchNorm, insert INT8 fake quantization (ModelOpt, calibrated like minmax PTQ), fine-tune
    `epochs` epochs as a second Lightning fit, export model.int8-qat.onnx in TensorRT's Q/DQ form, and publish it as
    the TensorRT INT8 artifact (quantization.method "qat") when, on the validation split, it beats plain minmax PTQ
    and at least ties the PTQ file the gate left (which may keep nodes in FP32).

    The second fit (QATModule, run by a Trainer of its own on the main trainer's device, no logger, no checkpoint
    files) trains on the DataModule's train loader with the model's loss and label smoothing, AdamW and a cosine
    decay over its steps. BatchNorm is folded before it, so its statistics stay frozen at the fit's; the network is
    scored on the validation split before the fit and after each epoch, and the best epoch is the one exported
    (0 = the calibrated start, no training).

    The note (report.json steps.QuantizationAwareTraining) gives, on the test split: `ptq_drop_pts` (plain
    minmax PTQ, no nodes kept in FP32; positive = lost), `ptq_gated_drop_pts` (the PTQ file as the gate left it)
    and `qat_drop_pts`, plus the fine-tune's seconds (validation included) against the fit's, the val top-1 by
    epoch, the epoch kept, and `qat_export_parity` (ONNX Runtime on the exported file against the fake-quantized
    network). PTQ with the other calibration methods and on QAT's operators only is benchmarks/qat.py's study.

    Args:
        epochs: QAT fine-tuning epochs over the train split.
        lr: AdamW learning rate of the fine-tune (cosine-decayed to 0); about 1/10 to 1/100 of the fit's.
        num_samples: calibration images (train split, eval transform) that set the initial ranges.
        weight_decay: AdamW weight decay of the fine-tune.
        compare_methods: accepted for the configs of earlier runs and ignored, with a warning: the PTQ study by
            calibration method is `python benchmarks/qat.py --run <run>`.
    """

    PRODUCES = ("onnx-int8:int8@tensorrt",)

    def __init__(self, epochs: int = 2, lr: float = 1e-4, num_samples: int = 512, weight_decay: float = 0.0,
                 compare_methods: Sequence[str] = ()) -> None:
        super().__init__()
        if compare_methods:
            rank_zero_warn("QuantizationAwareTraining compare_methods is ignored: the PTQ study by calibration method "
                           "moved to benchmarks/qat.py; run python benchmarks/qat.py --run <run folder>, and drop the "
                           "setting from the YAML")
        if epochs < 1 or num_samples < 1 or lr <= 0:
            raise ValueError(f"QuantizationAwareTraining epochs and num_samples must be 1 or more and lr above 0, "
                             f"got epochs={epochs} num_samples={num_samples} lr={lr}")
        self.epochs, self.lr, self.num_samples, self.weight_decay = epochs, lr, num_samples, weight_decay
        self._train_start: Optional[float] = None
        self.train_seconds: Optional[float] = None

    def consumes(self) -> tuple[str, ...]:
        return ("onnx:fp32",)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._train_start is not None:
            self.train_seconds = time.perf_counter() - self._train_start

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: FitEndRecord) -> None:
        _mtq()  # the missing library is one sentence before any work
        dm = trainer.datamodule
        fp32 = record.find("onnx", "fp32")
        ptq = record.find("onnx-int8", "int8", runtime="tensorrt")
        size = input_size(pl_module)

        def top1(path: Path, loader, format: str = "onnx-int8") -> float:
            # every INT8 file here is TensorRT's form: scored as TensorRT computes it (deploy.forms)
            qdq = accuracy_qdq(format, "tensorrt")
            return evaluate(OnnxRuntimeRunner(str(path), qdq=qdq).infer, numpy_batches(loader))["top1"]

        model, _ = self.best_model(trainer, pl_module)
        calibration = NetworkBatches(dm.calibration_dataloader(self.num_samples))
        net = insert_fake_quant(fold_batchnorm(model.net), (x for x, _ in calibration))
        smoothing = float(dict(model.hparams).get("label_smoothing") or 0.0)
        # The loaders, not the DataModule: it stays attached to the main trainer, whose test and later steps use it.
        train_loader = dm.train_dataloader()
        normalize = getattr(train_loader.collate_fn, "normalize", None)  # uint8 batches -> the network's input
        module = QATModule(net, normalize, self.lr, self.weight_decay, smoothing)
        seconds, val_by_epoch = fine_tune_fit(module, train_loader, dm.val_dataloader(), self.epochs, like=trainer)
        out = export_qdq_onnx(net, self.staging / "model.int8-qat.onnx", size)
        bad = asymmetric_zero_points(out)
        if bad:
            raise RuntimeError(f"{out.name}: {len(bad)} Q/DQ nodes have non-zero zero points ({bad[:3]}...), which "
                               "TensorRT rejects; this is a bug in the QAT export")
        parity = export_parity(net, out, next(iter(NetworkBatches(dm.val_dataloader())))[0])

        val = {"fp32": top1(fp32.file, dm.val_dataloader(), "onnx"), "qat": top1(out, dm.val_dataloader())}
        test = {"fp32": top1(fp32.file, dm.test_dataloader(), "onnx"), "qat": top1(out, dm.test_dataloader())}
        # plain minmax PTQ (no node kept in FP32), from the same calibration ranges QAT starts from: the bar QAT clears
        plain = self.staging / ".model.int8-ptq-plain.onnx"
        prepared = prepare_for_quantization(fp32.file, self.staging / ".model.prepared-qat.onnx")
        try:
            quantize_int8(prepared, plain, loader_batches(dm.calibration_dataloader(self.num_samples, batch_size=16)),
                          "minmax")
            val["ptq"], test["ptq"] = top1(plain, dm.val_dataloader()), top1(plain, dm.test_dataloader())
        finally:
            plain.unlink(missing_ok=True)
            prepared.unlink(missing_ok=True)
        if ptq is not None:
            val["ptq_gated"] = ptq.facts.get("quantization", {}).get("int8_top1", top1(ptq.file, dm.val_dataloader()))
            test["ptq_gated"] = top1(ptq.file, dm.test_dataloader())
        # QAT must beat the fully-INT8 PTQ file it started from, and at least tie the gated one: a tie goes to QAT,
        # which keeps no node in FP32 (all of it runs in INT8), where the gated file's top-1 is partly FP32's.
        beats = val["qat"] > val["ptq"] and val["qat"] >= val.get("ptq_gated", val["ptq"])
        facts: dict[str, Any] = {
            "library": "nvidia-modelopt", "epochs": self.epochs, "lr": self.lr, "num_samples": self.num_samples,
            "val_top1": val, "test_top1": test,
            "ptq_drop_pts": 100 * (test["fp32"] - test["ptq"]),
            "ptq_gated_drop_pts": 100 * (test["fp32"] - test["ptq_gated"]) if "ptq_gated" in test else None,
            "qat_drop_pts": 100 * (test["fp32"] - test["qat"]),
            "qat_val_top1_by_epoch": val_by_epoch, "qat_epoch_kept": int(np.argmax(val_by_epoch)),
            "qat_export_parity": parity, "test_samples": len(dm.test_dataloader().dataset),
            "qat_seconds": seconds, "fit_seconds": self.train_seconds,
            "qat_cost_of_fit": seconds / self.train_seconds if self.train_seconds else None,
            "beats_ptq_on_val": beats,
        }
        if beats:
            record.publish(ArtifactRecord(self.name, "onnx-int8", "int8", "tensorrt", file=out, label="ONNX INT8 (QAT)",
                                          facts={"quantization": {"method": "qat", "calibration": "minmax",
                                                                  "form": "S8S8 symmetric Q/DQ, float biases (TensorRT)",
                                                                  **{k: facts[k] for k in ("library", "epochs", "lr")},
                                                                  "epoch_kept": facts["qat_epoch_kept"],
                                                                  "fp32_top1": val["fp32"], "int8_top1": val["qat"],
                                                                  "delta_pts": 100 * (val["qat"] - val["fp32"])}}))
        else:
            out.unlink(missing_ok=True)
        verdict = "ships as TensorRT's INT8 file" if beats else "not shipped: it does not beat PTQ on the validation split"
        cost = f", {100 * facts['qat_cost_of_fit']:.0f} % of the fit's training time" if facts["qat_cost_of_fit"] else ""
        line = (f"test top-1 lost vs FP32: PTQ alone {facts['ptq_drop_pts']:+.2f} pt"
                + (f", PTQ after the gate {facts['ptq_gated_drop_pts']:+.2f} pt" if "ptq_gated" in test else "")
                + f", QAT {facts['qat_drop_pts']:+.2f} pt (epoch {facts['qat_epoch_kept']} of {self.epochs} kept on val, "
                f"{seconds:.0f} s{cost}); {facts['test_samples']} test images; QAT {verdict}")
        record.note(self.name, "INT8 QAT", line, facts=facts, topic="int8")
        rank_zero_info(f"QAT: {line}")
