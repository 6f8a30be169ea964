"""CIFAR-10/100 from torchvision's on-disk pickle layout, tested on tiny files written in that format."""

import os
import pathlib
import pickle

import pytest
import torch
from data_factory import write_cifar

from datamodules import ImageClassificationDataModule
from datamodules.sources import Cifar10Source, Cifar100Source

SOURCES = {"cifar10": Cifar10Source, "cifar100": Cifar100Source}


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_source_reads_the_pickles(tmp_path, name, classes):
    write_cifar(str(tmp_path), name)
    dm = ImageClassificationDataModule(source=SOURCES[name](str(tmp_path)), image_size=32, cache_dir=str(tmp_path / "c"))
    assert dm.num_classes == classes and dm.class_names[:2] == ["name0", "name1"]
    dm.setup("fit")
    n_train = 100 if name == "cifar10" else 1000
    n_test = 20 if name == "cifar10" else 500
    assert len(dm._datasets["train"]) + len(dm._datasets["val"]) == n_train
    assert len(dm._datasets["test"]) == n_test
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert int(y.max()) < classes


def test_missing_or_incomplete_cifar_root_is_one_sentence(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing: .*download: true"):
        ImageClassificationDataModule(source=Cifar10Source(str(tmp_path))).setup("fit")
    write_cifar(str(tmp_path), "cifar10")
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(FileNotFoundError, match=r"\(missing: data_batch_3\);"):
        ImageClassificationDataModule(source=Cifar10Source(str(tmp_path))).setup("fit")


@pytest.mark.parametrize("protocol, numpy1_names", [(2, True), (2, False), (5, False)])
def test_cifar_pickles_as_numpy_writes_them_still_load(tmp_path, protocol, numpy1_names):
    write_cifar(str(tmp_path), "cifar10", protocol=protocol, numpy1_names=numpy1_names)
    raw = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert (b"numpy.core.multiarray" in raw) == numpy1_names
    dm = ImageClassificationDataModule(source=Cifar10Source(str(tmp_path)), cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    assert dm.class_names[:2] == ["name0", "name1"] and len(dm._datasets["test"]) == 20


class _TouchMarker:
    """What an attacker would drop into data/: unpickling it calls Path.touch (it could call anything)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.mark.parametrize("crafted", ["batches.meta", "data_batch_2"])
def test_a_crafted_cifar_pickle_runs_nothing_and_is_one_sentence(tmp_path, crafted):
    write_cifar(str(tmp_path), "cifar10")
    payload = pickle.dumps({"label_names": [f"name{i}" for i in range(10)], "labels": [0], "data": _TouchMarker(
        tmp_path / "pwned")})
    pickle.loads(pickle.dumps(_TouchMarker(tmp_path / "proof")))
    assert (tmp_path / "proof").exists()  # the payload is live: a plain pickle.load runs it
    path = tmp_path / "cifar-10-batches-py" / crafted
    path.write_bytes(payload)

    with pytest.raises(ValueError) as caught:
        ImageClassificationDataModule(source=Cifar10Source(str(tmp_path)), cache_dir=str(tmp_path / "c")).setup("fit")
    message = str(caught.value)
    assert message.startswith(f"{path} is not a CIFAR file: it asks to load pathlib.Path") and "re-extract" in message
    assert "\n" not in message
    # with download: true, torchvision's md5 check and re-extract will replace the file: no error yet, and no code run
    ImageClassificationDataModule(source=Cifar10Source(str(tmp_path), download=True))
    assert not (tmp_path / "pwned").exists()


def test_a_damaged_cifar_batch_names_the_file(tmp_path):
    write_cifar(str(tmp_path), "cifar10")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match=rf"^{path} is not a readable CIFAR-10 batch .*re-extract cifar-10"):
        ImageClassificationDataModule(source=Cifar10Source(str(tmp_path)), cache_dir=str(tmp_path / "c")).setup("fit")
