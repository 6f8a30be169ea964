"""CIFAR-10/100 from torchvision's on-disk pickle layout, tested on tiny files written in that format."""

import os

import pytest
import torch
from data_factory import write_cifar

from datamodules import ImageClassificationDataModule


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_source_reads_the_pickles(tmp_path, name, classes):
    write_cifar(str(tmp_path), name)
    dm = ImageClassificationDataModule(source=name, root=str(tmp_path), image_size=32, cache_dir=str(tmp_path / "c"))
    assert dm.num_classes == classes and dm.class_names[:2] == ["name0", "name1"]
    dm.setup("fit")
    n_train = 100 if name == "cifar10" else 1000
    n_test = 20 if name == "cifar10" else 500
    assert len(dm._datasets["train"]) + len(dm._datasets["val"]) == n_train
    assert len(dm._datasets["test"]) == n_test
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert int(y.max()) < classes


def test_missing_or_incomplete_cifar_root_is_one_sentence(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing: .*download: true"):
        ImageClassificationDataModule(source="cifar10", root=str(tmp_path)).setup("fit")
    write_cifar(str(tmp_path), "cifar10")
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(FileNotFoundError, match=r"\(missing: data_batch_3\);"):
        ImageClassificationDataModule(source="cifar10", root=str(tmp_path)).setup("fit")
