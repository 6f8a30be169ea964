"""Mean/std: exact over every train pixel after resize, cached by fingerprint so the next fit decodes nothing."""

import cv2
import numpy as np
import pytest

import datamodules.datasets
import datamodules.imagefolder
from datamodules import ImageClassificationDataModule
from datamodules.sources import ImageFolderSource
from datamodules.presets import IMAGENET_MEAN, IMAGENET_STD
from deploy.images import read_image


def _numpy_mean_std(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = images.astype(np.float64) / 255.0
    return x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))


def test_digits_mean_std_equals_numpy_over_the_train_split(tmp_path):
    dm = ImageClassificationDataModule(image_size=24, cache_dir=str(tmp_path))
    dm.setup("fit")
    train = dm._datasets["train"].images
    mean, std = _numpy_mean_std(train.array[train.indices])
    np.testing.assert_allclose(dm.preprocessing.mean, mean, atol=1e-6)
    np.testing.assert_allclose(dm.preprocessing.std, std, atol=1e-6)


def test_imagefolder_mean_std_equals_numpy_after_resize(image_folder, tmp_path):
    dm = ImageClassificationDataModule(source=ImageFolderSource(image_folder), image_size=[16, 20],
                                       cache_dir=str(tmp_path))
    dm.setup("fit")
    assert dm.stats_origin == "computed"
    paths = dm._datasets["train"].images.paths
    resized = np.stack([cv2.resize(read_image(p), (20, 16), interpolation=cv2.INTER_LINEAR) for p in paths])
    mean, std = _numpy_mean_std(resized)
    np.testing.assert_allclose(dm.preprocessing.mean, mean, atol=1e-6)
    np.testing.assert_allclose(dm.preprocessing.std, std, atol=1e-6)


def test_second_fit_hits_the_cache_and_decodes_nothing(image_folder, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    first = ImageClassificationDataModule(source=ImageFolderSource(image_folder), image_size=16, cache_dir=cache)
    first.setup("fit")
    assert first.stats_origin == "computed"

    decodes = []

    def counting_read(*args, **kwargs):
        decodes.append(args[0])
        return read_image(*args, **kwargs)

    monkeypatch.setattr(datamodules.imagefolder, "read_image", counting_read)
    monkeypatch.setattr(datamodules.datasets, "read_image", counting_read)
    second = ImageClassificationDataModule(source=ImageFolderSource(image_folder), image_size=16, cache_dir=cache)
    second.setup("fit")
    assert decodes == []  # neither the image check nor the mean/std pass decoded a file
    assert second.stats_origin == "cache"
    assert second.preprocessing.mean == first.preprocessing.mean and second.preprocessing.std == first.preprocessing.std

    # a different resize is a different fingerprint: computed again
    third = ImageClassificationDataModule(source=ImageFolderSource(image_folder), image_size=12, cache_dir=cache)
    third.setup("fit")
    assert third.stats_origin == "computed" and decodes


def test_imagenet_and_explicit_mean_std(tmp_path):
    dm = ImageClassificationDataModule(mean_std="imagenet", cache_dir=str(tmp_path))
    dm.setup("fit")
    assert dm.preprocessing.mean == IMAGENET_MEAN and dm.preprocessing.std == IMAGENET_STD
    dm = ImageClassificationDataModule(mean_std=[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], cache_dir=str(tmp_path))
    dm.setup("fit")
    assert dm.preprocessing.to_dict()["mean"] == [0.1, 0.2, 0.3] and dm.stats_origin == "given"
    with pytest.raises(ValueError, match="mean_std"):
        ImageClassificationDataModule(mean_std=[[0.1, 0.2], [0.4, 0.5, 0.6]])
    with pytest.raises(ValueError, match="mean_std"):
        ImageClassificationDataModule(mean_std="dataset")


@pytest.mark.parametrize("damage", ["nan", "inf", "two means", "edited number"])
def test_a_mean_std_cache_that_lies_is_said_in_one_line_and_computed_again(tmp_path, caplog, damage):
    import json

    from data_factory import LightningLines

    first = ImageClassificationDataModule(image_size=12, cache_dir=str(tmp_path))
    first.setup("fit")
    (path,) = tmp_path.glob("mean_std-*.json")
    data = json.loads(path.read_text())
    if damage == "nan":
        data["std"][1] = float("nan")  # what a crashed writer or a bad disk can leave, checksum and all
        data.pop("xxh3_128")
        from datamodules.rundir import write_json_checked

        write_json_checked(str(path), data)
    else:
        data["mean"] = {"inf": [float("inf")] + data["mean"][1:], "two means": data["mean"][:2],
                        "edited number": [0.5, 0.5, 0.5]}[damage]
        path.write_text(json.dumps(data))  # edited by hand or by another program: the checksum no longer matches
    with LightningLines(caplog) as said:
        second = ImageClassificationDataModule(image_size=12, cache_dir=str(tmp_path))
        second.setup("fit")
    (line,) = said.matching("mean/std cache")
    assert str(path) in line and "computing the statistics again" in line and "\n" not in line
    assert second.stats_origin == "computed"
    assert second.preprocessing.mean == first.preprocessing.mean and second.preprocessing.std == first.preprocessing.std
    third = ImageClassificationDataModule(image_size=12, cache_dir=str(tmp_path))
    third.setup("fit")
    assert third.stats_origin == "cache"  # the cache written again is trusted again


def test_an_image_check_cache_that_calls_a_broken_file_good_is_not_trusted(dirty_folder, tmp_path, caplog):
    import json

    from data_factory import LightningLines

    root, bad = dirty_folder
    args = dict(source=ImageFolderSource(root), image_size=12, mean_std="imagenet", decoded_cache=False,
                cache_dir=str(tmp_path / "cache"))
    first = ImageClassificationDataModule(**args)
    first.setup("fit")
    broken = {f for f, _ in first.excluded}
    assert broken and broken <= set(bad)  # (as root, a file chmod 000 still reads)
    (path,) = (tmp_path / "cache").glob("image-checks-*.json")
    data = json.loads(path.read_text())
    for verdict in data["verdicts"].values():
        verdict[3] = None  # every file "decodes"
    path.write_text(json.dumps(data))
    with LightningLines(caplog) as said:
        second = ImageClassificationDataModule(**args)
        second.setup("fit")
    assert said.matching("does not match its checksum") and said.matching("checking every file again")
    assert {f for f, _ in second.excluded} == broken
