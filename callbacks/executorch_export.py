"""ExecuTorchExport: the best checkpoint as ExecuTorch programs (.pte) for Android and iOS apps, every operator
XNNPACK can run delegated to it: FP32, and INT8 quantized by PT2E with XNNPACK's own quantizer (int8 per-channel
weights, int8 activations; the program's input and output stay float) calibrated on the same calibration images as
every INT8 step, behind the INT8 gate.

The recipe is ExecuTorch's documented one: torch.export -> to_edge_transform_and_lower(XnnpackPartitioner) ->
to_executorch. How much XNNPACK took is read from the lowered graph (executorch.devtools' get_delegation_info)
and published: delegated and left-over nodes, and every convolution's place. A convolution XNNPACK did not take
runs in ExecuTorch's portable kernels, many times slower: the step says which, in the report.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from callbacks.device_files import (Int8DeviceFileStep, calibration_batches, check_parity, converter_failure,
                                    gate_line, int8_gate, quiet, require, val_top1)
from callbacks.fit_end import input_size
from callbacks.records import ArtifactRecord, FitEndRecord
from deploy.atomic import atomic_path
from torch_runtimes.executorch import ExecuTorchRunner

HINT = "try another backbone, or int8: false (XNNPACK's supported operators: docs.pytorch.org/executorch)"


def lower(program: torch.export.ExportedProgram, path: Path, version: str) -> dict:
    """Lower an exported program to XNNPACK and write the .pte; returns the delegation facts."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.devtools.backend_debug import get_delegation_info
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise converter_failure("executorch", version, exc, "import", HINT) from None
    try:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        info = get_delegation_info(edge.exported_program().graph_module)
        with atomic_path(path) as tmp:
            tmp.write_bytes(edge.to_executorch().buffer)
    except Exception as exc:
        raise converter_failure("executorch", version, exc, "XNNPACK lowering", HINT) from None
    convs = [b for op, b in info.delegation_by_operator.items() if "convolution" in op]
    return {"delegated_nodes": info.num_delegated_nodes, "non_delegated_nodes": info.num_non_delegated_nodes,
            "delegated_subgraphs": info.num_delegated_subgraphs,
            "convolutions": sum(b.delegated + b.non_delegated for b in convs),
            "convolutions_delegated": sum(b.delegated for b in convs),
            # getitem unpacks the delegate's outputs: bookkeeping, not an operator left to the portable kernels
            "not_delegated": {op: b.non_delegated for op, b in info.delegation_by_operator.items()
                              if b.non_delegated and op != "getitem"}}


def delegation_line(name: str, d: dict) -> str:
    convs = (f"all {d['convolutions']} convolutions" if d["convolutions"] == d["convolutions_delegated"] else
             f"only {d['convolutions_delegated']} of {d['convolutions']} convolutions (the rest run in portable "
             "kernels, slowly)")
    left = ", ".join(f"{op} ×{n}" for op, n in d["not_delegated"].items()) or "none"
    return (f"{name}: XNNPACK took {d['delegated_nodes']} nodes in {d['delegated_subgraphs']} subgraph(s), "
            f"{convs}; left outside: {left}")


class ExecuTorchExport(Int8DeviceFileStep):
    """Write model.pte (FP32) and model.int8.pte (PT2E INT8) at fit end, XNNPACK-delegated, each checked against
    torch in ExecuTorch's runtime; DeployBundle scores both on the test split there.

    Args:
        int8: also write the INT8 program.
        num_samples: calibration images from the train split, eval-transformed.
        max_drop: the INT8 gate (top-1 points against model.pte on the validation split).
        parity_batch: validation images compared with torch.
        tolerance: largest acceptable |logit difference| of the FP32 program against torch.
    """

    PRODUCES = ("pte:fp32@executorch", "pte:int8@executorch")

    def __init__(self, int8: bool = True, num_samples: int = 256, max_drop: float = 0.5, calibration_batch: int = 16,
                 parity_batch: int = 16, tolerance: float = 1e-3) -> None:
        super().__init__(int8, num_samples, max_drop, calibration_batch, parity_batch, tolerance)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: FitEndRecord) -> None:
        version = require("executorch", "executorch", "executorch", ".pte file")
        dm = trainer.datamodule
        model, source = self.best_model(trainer, pl_module)
        example = (torch.zeros(1, 3, *input_size(pl_module)),)
        fp32 = self.staging / "model.pte"
        with quiet():
            try:
                program = torch.export.export(model.eval(), example)
            except Exception as exc:
                raise converter_failure("torch.export", torch.__version__, exc, "torch.export", HINT) from None
            delegation = lower(program, fp32, version)
        with ExecuTorchRunner(fp32) as runner:
            worst = check_parity(model, runner.infer, dm, self.parity_batch, self.tolerance, fp32.name, "ExecuTorch",
                                 HINT)
            fp32_top1 = val_top1(runner.infer, dm) if self.int8 else None
        record.publish(ArtifactRecord(self.name, "pte", "fp32", "executorch", file=fp32, label="ExecuTorch FP32",
                                      facts={"layout": "NCHW", "parity_max_abs_diff": worst, "delegation": delegation,
                                             "converter": f"executorch {version}", "checkpoint": source}))
        record.note(self.name, "ExecuTorch FP32", delegation_line("model.pte", delegation) +
                    f"; max |logit difference| vs torch {worst:.1e}")
        rank_zero_info(f"ExecuTorch export: {fp32} ({fp32.stat().st_size / 1e6:.2f} MB); "
                       f"{delegation_line('XNNPACK', delegation)}; parity max |diff| {worst:.1e}")
        if self.int8:
            self.int8_program(model, example, dm, record, version, fp32_top1)

    def int8_program(self, model, example, dm, record: FitEndRecord, version: str, fp32_top1: float) -> None:
        path = self.staging / "model.int8.pte"
        with quiet():
            program, count = quantize_pt2e(model, example, calibration_batches(dm, self.num_samples,
                                                                                 self.calibration_batch), version)
            delegation = lower(program, path, version)
        with ExecuTorchRunner(path) as runner:
            int8_top1 = val_top1(runner.infer, dm)
        q = int8_gate(fp32_top1, int8_top1, self.max_drop, calibration="PT2E observers (XNNPACKQuantizer)",
                      num_samples=count, quantizer=f"executorch {version} XNNPACKQuantizer, per-channel symmetric")
        record.publish(ArtifactRecord(self.name, "pte", "int8", "executorch", file=path, label="ExecuTorch INT8",
                                      facts={"layout": "NCHW", "delegation": delegation, "quantization": q}))
        record.note(self.name, "ExecuTorch INT8", gate_line("model.int8.pte, PT2E INT8", q) + "; " +
                    delegation_line("model.int8.pte", delegation))
        rank_zero_info(f"ExecuTorch INT8: {path} ({path.stat().st_size / 1e6:.2f} MB); val top-1 "
                       f"{100 * int8_top1:.2f} % vs FP32 {100 * fp32_top1:.2f} % (gate {self.max_drop} pt: "
                       f"{'met' if q['gate_met'] else 'NOT met'}); {delegation_line('XNNPACK', delegation)}")


def quantize_pt2e(model: torch.nn.Module, example: tuple, batches, version: str):
    """PT2E INT8 with XNNPACK's quantizer (per-channel symmetric weights), observed on `batches` (NCHW float32
    arrays); returns the quantized program exported at the example's batch and how many images calibrated it."""
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                            get_symmetric_quantization_config)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as exc:
        raise converter_failure("executorch", version, exc, "import of the PT2E quantizer", HINT) from None
    count = 0
    try:
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        # a dynamic batch while observing, so calibration runs whole batches; exported again at batch 1
        batch = torch.export.Dim("batch", min=1, max=4096)
        traced = torch.export.export(model.eval(), (torch.zeros(2, *example[0].shape[1:]),),
                                     dynamic_shapes=({0: batch},)).module()
        observed = prepare_pt2e(traced, quantizer)
        with torch.no_grad():
            for x in batches:
                observed(torch.from_numpy(x))
                count += len(x)
        return torch.export.export(convert_pt2e(observed), example), count
    except Exception as exc:
        raise converter_failure("executorch", version, exc, "PT2E INT8 quantization", HINT) from None
