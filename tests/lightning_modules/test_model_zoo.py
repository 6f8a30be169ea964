"""Any torchvision classifier and any timm model through the chain, as a user meets it: built by name with the
library's own parameter count, a local ImageNet-headed state dict that loads, one training step that moves the
weights, ONNX that matches torch, the offline TensorRT check, both INT8 flavours, and pruning or a sentence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.models
from torch import nn

from callbacks.int8_forms import cpu_family, cpu_int8_form
from callbacks.onnx_export import export_onnx, onnx_parity
from callbacks.pruning import pruning_refusal, prune_channels
from callbacks.quantization import prepare_for_quantization, quantize_int8, quantize_static_int8
from deploy.runners import OnnxRuntimeRunner
from deploy.tensorrt_check import check_tensorrt
from lightning_modules import ImageClassifier, build_backbone, classifier_layer

timm = pytest.importorskip("timm")

SIZE = (32, 32)
# Small members of each family with a different head or block: SE + hardswish, channel shuffle, group-conv
# stages, plain residual, and timm's own blocks (BatchNormAct2d, conv_head).
CURATED = ["mobilenet_v3_small", "shufflenet_v2_x0_5", "regnet_x_400mf", "resnet18",
           "timm:mobilenetv3_small_050", "timm:lcnet_050"]


def library_model(name: str, num_classes: int) -> nn.Module:
    if name.startswith("timm:"):
        return timm.create_model(name[5:], pretrained=False, num_classes=num_classes)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


# The whole chain (export, shape inference, two calibrations) takes ~15 s a model on an idle core and several
# times that on a loaded one: the two models of the README's commands run always, the rest with the slow tests.
CHAIN = [name if name in ("mobilenet_v3_small", "timm:mobilenetv3_small_050") else pytest.param(name, marks=pytest.mark.slow)
         for name in CURATED]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", CURATED)
def test_builds_by_name_with_the_librarys_parameter_count_and_a_named_head(name):
    model = build_backbone(name, 7)
    assert n_params(model) == n_params(library_model(name, 7))
    head = classifier_layer(model)
    assert head.out_features == 7 and head is list(m for m in model.modules() if isinstance(m, nn.Linear))[-1]
    assert model(torch.zeros(2, 3, *SIZE)).shape == (2, 7)


@pytest.mark.parametrize("name", CURATED)
def test_a_local_imagenet_state_dict_loads_and_freeze_features_trains_only_the_head(name, tmp_path):
    imagenet = library_model(name, 1000)
    torch.save(imagenet.state_dict(), tmp_path / "imagenet.pth")
    model = build_backbone(name, 7, weights_path=str(tmp_path / "imagenet.pth"), freeze_features=True)
    first = next(k for k, v in imagenet.state_dict().items() if v.dim() == 4)  # the stem conv
    assert torch.equal(model.state_dict()[first], imagenet.state_dict()[first])
    head = classifier_layer(model)
    assert head.out_features == 7
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable and all(id(p) in trainable for p in head.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < n_params(model) / 2


@pytest.fixture(scope="module")
def batch():
    from sklearn.datasets import load_digits

    import cv2
    d = load_digits()
    imgs = np.stack([cv2.resize((g * 16).astype(np.uint8), SIZE) for g in d.images[:32]]).astype(np.float32) / 255
    x = np.ascontiguousarray(np.repeat(imgs[:, None], 3, axis=1))
    return (x - 0.2) / 0.3, d.target[:32].astype(np.int64)


@pytest.mark.parametrize("name", CHAIN)
def test_one_step_onnx_parity_tensorrt_check_and_both_int8_flavours(name, batch, tmp_path):
    x, y = batch
    torch.manual_seed(0)
    module = ImageClassifier(num_classes=10, backbone=name, backbone_args={}, input_size=SIZE,
                             log_confusion_matrix=False)
    opt = torch.optim.AdamW(module.parameters(), lr=0.01)
    before = classifier_layer(module.net).weight.detach().clone()
    module.train()
    loss = module.criterion(module(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert len(grads) == sum(1 for p in module.parameters()) and torch.isfinite(torch.nn.utils.get_total_norm(grads))
    opt.step()
    assert not torch.equal(classifier_layer(module.net).weight, before)

    module.eval()
    fp32 = export_onnx(module, tmp_path / "model.onnx", SIZE)
    parity = onnx_parity(module, fp32, x[:8])
    assert max(parity.values()) < 1e-3, parity
    check = check_tensorrt(fp32)
    assert check["passed"], check["problems"]

    prepared = prepare_for_quantization(fp32, tmp_path / "prepared.onnx")
    trt = quantize_int8(prepared, tmp_path / "model.int8.onnx", x[:16])
    assert check_tensorrt(trt)["passed"]
    cpu = quantize_static_int8(prepared, tmp_path / "model.int8-cpu.onnx", x[:16], cpu_int8_form(cpu_family()))
    for path in (trt, cpu):
        logits = OnnxRuntimeRunner(str(path)).infer(x[:4])
        assert logits.shape == (4, 10) and np.isfinite(logits).all()


@pytest.mark.parametrize("name", CURATED)
def test_structured_pruning_shrinks_the_network_or_says_why_it_cannot(name):
    net = build_backbone(name, 10)
    refusal = pruning_refusal(net)
    if name.startswith("shufflenet"):
        assert refusal is not None and "channel shuffle" in refusal and "\n" not in refusal
        with pytest.raises(ValueError, match="cannot prune ShuffleNetV2"):
            prune_channels(net, torch.zeros(1, 3, *SIZE), ratio=0.25)
        return
    assert refusal is None
    stats = prune_channels(net, torch.zeros(1, 3, *SIZE), ratio=0.25)
    assert stats["params_after"] < 0.8 * stats["params_before"]
    assert classifier_layer(net).out_features == 10
    assert net.eval()(torch.zeros(2, 3, *SIZE)).shape == (2, 10)


def test_unknown_names_are_one_sentence_with_close_matches():
    with pytest.raises(ValueError) as caught:
        build_backbone("mobilenet_v3_smal", 10)
    assert "did you mean mobilenet_v3_small" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="did you mean timm:.*timm:mobilenetv3_small_050"):
        build_backbone("timm:mobilenetv3_small_05o", 10)
    with pytest.raises(ValueError, match="has no dropout"):
        build_backbone("resnet18", 10, dropout=0.3)


@pytest.mark.slow
def test_a_short_fit_of_a_timm_model_ends_with_a_bundle(tmp_path, cli):
    import json

    from edgecls_testing import EXPERIMENTS, TINY

    args = ["fit", "--config", EXPERIMENTS / "quickstart.yaml", *TINY, "--model.backbone", "timm:mobilenetv3_small_050",
            "--model.backbone_args", "{}", "--trainer.max_epochs", "2", "--data.image_size", "32"]
    cli(args, tmp_path)
    bundle = next((tmp_path / "runs" / "quickstart").glob("version_*/bundle"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {"model.onnx", "model.int8.onnx", "model.int8-cpu.onnx"} <= {p.name for p in bundle.iterdir()}
    assert manifest["task"]["input"]["shape"] == [3, 32, 32]
    assert "backbone: timm:mobilenetv3_small_050" in (bundle / "config.yaml").read_text()
