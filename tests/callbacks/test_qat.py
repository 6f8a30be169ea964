"""Quantization-aware training: the fake-quantized network exports to a Q/DQ file TensorRT's rules accept, that
computes in ONNX Runtime what the network computed in training; the fine-tune is a second Lightning fit that ends
on its best validation epoch; and a fit with the step reports PTQ's and QAT's test top-1 loss side by side and
leaves the main trainer able to test."""

import json
import subprocess
import sys

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from onnx import TensorProto
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("modelopt.torch.quantization")

from callbacks import DeployBundle, Int8Quantization, ONNXExport  # noqa: E402
from callbacks.qat import (QATModule, QuantizationAwareTraining, export_parity, export_qdq_onnx,  # noqa: E402
                           fine_tune_fit, fold_batchnorm, insert_fake_quant)
from callbacks.quantization import asymmetric_zero_points  # noqa: E402
from datamodules import ImageClassificationDataModule  # noqa: E402
from deploy.runners import OnnxRuntimeRunner  # noqa: E402
from deploy.tensorrt_check import check_tensorrt  # noqa: E402
from edgecls_testing import REPO, tiny_fit  # noqa: E402


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_the_qat_network_exports_to_tensorrt_qdq_that_onnx_runtime_runs_as_trained(tmp_path):
    torch.manual_seed(0)
    net = tiny_net()
    net.train()
    for _ in range(3):  # BatchNorm statistics that are not the identity, so folding them matters
        net(torch.randn(16, 3, 12, 12) * 2 + 1)
    x = torch.randn(32, 3, 12, 12) * 2 + 1
    qat = insert_fake_quant(fold_batchnorm(net), [x[:16], x[16:]])
    path = export_qdq_onnx(qat, tmp_path / "qat.onnx", (12, 12))

    verdict = check_tensorrt(path)
    assert verdict["passed"], verdict["problems"]
    assert asymmetric_zero_points(path) == []
    import onnx

    model = onnx.load(str(path))
    weights = [i for i in model.graph.initializer if i.data_type == TensorProto.INT8 and len(i.dims) >= 2]
    assert len(weights) == 3  # both convolutions' and the Linear's weights are stored as int8
    with torch.no_grad():
        expected = qat(x).numpy()
    got = OnnxRuntimeRunner(str(path)).infer(x.numpy())
    assert np.abs(got - expected).max() <= 1e-3 * max(1.0, float(np.abs(expected).max()))
    for batch in (1, 5):
        assert OnnxRuntimeRunner(str(path)).infer(x[:batch].numpy()).shape == (batch, 4)
    parity = export_parity(qat, path, x)
    assert parity["top1_agreement"] == 1.0 and parity["images"] == 32


def test_the_qat_fit_scores_the_calibrated_start_and_ends_on_the_epoch_that_scored_best_on_validation():
    torch.manual_seed(0)
    scores = iter([0.50, 0.90, 0.60, 0.70])  # before the fit, then after epochs 1, 2, 3
    snapshots = []

    class Scripted(QATModule):
        def on_validation_epoch_end(self):
            snapshots.append({k: v.clone() for k, v in self.net.state_dict().items()})
            self.val_top1 = next(scores)

    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    loader = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8)
    module = Scripted(net, None, lr=0.1)
    seconds, by_epoch = fine_tune_fit(module, loader, loader, epochs=3)
    assert by_epoch == [0.50, 0.90, 0.60, 0.70] and seconds > 0
    assert module.trainer.global_step == 6  # 3 epochs of 2 batches
    assert module.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine to 0
    assert not torch.equal(snapshots[1]["1.weight"], snapshots[3]["1.weight"])  # epochs 2 and 3 trained on
    for key, value in net.state_dict().items():  # epoch 1's weights, not the last epoch's
        assert torch.equal(value, snapshots[1][key])


def test_compare_methods_of_an_earlier_config_is_accepted_with_a_warning_that_the_study_moved():
    with pytest.warns(UserWarning, match="benchmarks/qat.py"):
        QuantizationAwareTraining(compare_methods=["entropy"])


@pytest.fixture(scope="module")
def qat_fit(tmp_path_factory):
    """A fit with the QAT step, then the main trainer's test of the best checkpoint, as main.py runs it."""
    root = tmp_path_factory.mktemp("qat")
    pl.seed_everything(0)
    dm = ImageClassificationDataModule(image_size=16)
    trainer = tiny_fit(root, [ONNXExport(exporter="torchscript"), Int8Quantization(num_samples=64, max_excluded=0),
                              QuantizationAwareTraining(epochs=1, num_samples=64, lr=1e-4),
                              DeployBundle(latency_iterations=5, throughput_iterations=2)],
                       datamodule=dm, max_epochs=2, limit_train_batches=8)
    tested = trainer.test(ckpt_path="best", datamodule=dm, verbose=False)[0]
    return root / "bundle", tested


@pytest.mark.slow
def test_after_the_qat_fit_the_main_trainer_tests_its_best_checkpoint_on_the_same_split(qat_fit):
    bundle, tested = qat_fit
    test = json.loads((bundle / "report.json").read_text())["steps"]["QuantizationAwareTraining"]["test_top1"]
    # torch on the best checkpoint vs ONNX Runtime on its export: the same model, up to a near-tied image
    assert tested["test/top1"] == pytest.approx(test["fp32"], abs=1 / 359 + 1e-9)


@pytest.mark.slow  # a fit, the PTQ gate, a QAT epoch and a bundle: 45 s on 2 loaded cores
def test_a_fit_with_qat_reports_what_ptq_and_qat_lose_on_the_test_split(qat_fit):
    qat_fit, _ = qat_fit
    report = json.loads((qat_fit / "report.json").read_text())
    manifest = json.loads((qat_fit / "manifest.json").read_text())
    facts = report["steps"]["QuantizationAwareTraining"]
    test = facts["test_top1"]
    assert facts["ptq_drop_pts"] == pytest.approx(100 * (test["fp32"] - test["ptq"]))
    assert facts["qat_drop_pts"] == pytest.approx(100 * (test["fp32"] - test["qat"]))
    assert facts["ptq_gated_drop_pts"] == pytest.approx(100 * (test["fp32"] - test["ptq_gated"]))
    assert facts["test_samples"] == 359  # digits' 0.6/0.2/0.2 split
    by_epoch = facts["qat_val_top1_by_epoch"]  # the calibrated start, then the one epoch
    assert len(by_epoch) == 2 and facts["qat_epoch_kept"] == int(np.argmax(by_epoch))
    # ONNX Runtime on the export scores what the kept epoch scored in torch, up to those flips
    assert facts["val_top1"]["qat"] == pytest.approx(max(by_epoch), abs=0.01)
    # ONNX Runtime computes what fake quantization did, up to int8 rounding flips on near-tied logits (1 of 32 here)
    assert facts["qat_export_parity"]["top1_agreement"] >= 0.9
    assert 0 < facts["qat_seconds"] and 0 < facts["fit_seconds"]
    by_method = {a["quantization"]["method"]: a for a in manifest["artifacts"] if a.get("quantization")}
    assert by_method["ptq"]["file"] == "model.int8.onnx"
    shipped = (qat_fit / "model.int8-qat.onnx").is_file()
    assert shipped == facts["beats_ptq_on_val"] == ("qat" in by_method)
    if shipped:
        entry = by_method["qat"]
        assert entry["runtime"] == "tensorrt" and entry["tensorrt_check"]["passed"]
        assert entry["metrics"]["top1"] == pytest.approx(test["qat"])  # the bundle re-measures the same file


@pytest.mark.slow  # the study's four quantizations of the small network, each scored on the test split
def test_the_benchmark_computes_the_ptq_study_from_the_finished_run(qat_fit):
    bundle, _ = qat_fit
    run = bundle.parent
    # the config.yaml main.py saves in every run (the fit above was built by hand): the data it was fitted on
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"image_size": 16}}))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "qat.py"), "--run", str(run)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line[:44].strip(): line[44:].split() for line in proc.stdout.splitlines()}
    facts = json.loads((bundle / "report.json").read_text())["steps"]["QuantizationAwareTraining"]
    # the study's minmax PTQ is the one the step measured (the same calibration images and file)
    assert float(rows["PTQ minmax, alone"][1]) == pytest.approx(facts["ptq_drop_pts"], abs=0.006)
    for label in ("PTQ entropy, alone", "PTQ percentile, alone", "PTQ minmax, Conv/Gemm only (QAT's operators)"):
        top1, drop = map(float, rows[label][:2])  # each printed to 2 decimals
        assert 0 <= top1 <= 100 and drop == pytest.approx(100 * facts["test_top1"]["fp32"] - top1, abs=0.011)
    assert float(rows["FP32 ONNX"][0]) == pytest.approx(100 * facts["test_top1"]["fp32"], abs=0.006)
