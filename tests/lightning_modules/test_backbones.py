import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

from lightning_modules import ImageClassifier, build_backbone, classifier_layer
from lightning_modules.backbones.resnet import BasicBlock


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("num_classes,width_mult", [(10, 1.0), (100, 1.0), (7, 0.5)])
def test_mobilenet_v2_has_torchvisions_parameter_count(num_classes, width_mult):
    ours = build_backbone("mobilenet_v2", num_classes, width_mult=width_mult)
    theirs = tv_mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult)
    assert n_params(ours) == n_params(theirs)
    assert classifier_layer(ours).out_features == num_classes


def test_mobilenet_v2_loads_a_local_state_dict_and_replaces_an_imagenet_head(tmp_path):
    imagenet = tv_mobilenet_v2(weights=None, num_classes=1000)
    path = tmp_path / "mobilenet_v2_imagenet.pth"
    torch.save(imagenet.state_dict(), path)

    model = build_backbone("mobilenet_v2", 10, weights_path=str(path), freeze_features=True)

    first = "features.0.0.weight"
    assert torch.equal(model.state_dict()[first], imagenet.state_dict()[first])
    assert model.classifier[1].out_features == 10
    assert not any(p.requires_grad for p in model.features.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())


def test_mobilenet_v2_weights_path_of_the_same_class_count_loads_the_head_too(tmp_path):
    source = tv_mobilenet_v2(weights=None, num_classes=10)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "w.ckpt.pth")
    model = build_backbone("mobilenet_v2", 10, weights_path=str(tmp_path / "w.ckpt.pth"))
    assert torch.equal(model.classifier[1].weight, source.classifier[1].weight)


def test_weights_that_do_not_fit_are_one_clear_sentence(tmp_path):
    torch.save(tv_mobilenet_v2(weights=None, width_mult=0.5).state_dict(), tmp_path / "half.pth")
    with pytest.raises(ValueError, match="do not fit this network"):
        build_backbone("mobilenet_v2", 10, weights_path=str(tmp_path / "half.pth"))
    with pytest.raises(FileNotFoundError, match="weights_path"):
        build_backbone("mobilenet_v2", 10, weights_path=str(tmp_path / "missing.pth"))


def test_failed_download_names_weights_path_as_the_way_out(monkeypatch):
    from torchvision.models import MobileNet_V2_Weights

    def offline(self, *args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(MobileNet_V2_Weights, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="weights_path"):
        build_backbone("mobilenet_v2", 10, weights="IMAGENET1K_V1")


def test_resnet_is_cifar_style():
    model = build_backbone("resnet", 10, num_blocks=[2, 2, 2, 2], width=64)
    # ResNet-18 layout for CIFAR: 11.17M parameters, a 3x3 stride-1 stem and no max-pool.
    assert n_params(model) == 11_173_962
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8
    assert sum(len(b.shortcut) > 0 for b in blocks) == 3  # projection where width or stride changes
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_backbone_or_argument_is_one_clear_sentence():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_backbone("vgg", 10)
    with pytest.raises(ValueError, match="does not take \\['depth'\\]"):
        build_backbone("resnet", 10, depth=50)


def test_frozen_features_without_pretrained_weights_are_one_config_sentence():
    with pytest.raises(ValueError) as caught:
        build_backbone("mobilenet_v2", 10, freeze_features=True)
    message = str(caught.value)
    assert message.startswith("backbone_args.freeze_features is true but neither weights nor weights_path is set")
    assert "set freeze_features false" in message and "\n" not in message
    with pytest.raises(ValueError, match="frozen random features learn nothing"):
        ImageClassifier(num_classes=10, backbone="mobilenet_v2", backbone_args={"freeze_features": True})


def test_frozen_batchnorm_keeps_its_statistics_in_train_mode(tmp_path):
    torch.save(tv_mobilenet_v2(weights=None, width_mult=0.35).state_dict(), tmp_path / "pretrained.pth")
    model = ImageClassifier(num_classes=10, backbone="mobilenet_v2", backbone_args={
        "freeze_features": True, "width_mult": 0.35, "weights_path": str(tmp_path / "pretrained.pth")})
    model.train()
    bn = model.net.features[0][1]
    before = bn.running_mean.clone()
    model(torch.randn(4, 3, 32, 32) * 5 + 3)
    assert not bn.training
    assert torch.equal(bn.running_mean, before)
