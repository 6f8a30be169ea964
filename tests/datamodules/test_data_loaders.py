"""Loaders: seeded augmentation, (seed, epoch)-only order (resume-safe), workers, synthetic, BatchSizeFinder."""

import os

import torch
from data_factory import TinyClassifier, tiny_trainer

from datamodules import ImageClassificationDataModule
from datamodules.datamodule import few_batches_sentence
from datamodules.sources import SyntheticSource


def _first_batch(**kwargs):
    dm = ImageClassificationDataModule(augment="rrc_affine_dropout", image_size=16, batch_size=16, **kwargs)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_same_seed_same_first_augmented_batch_also_with_workers(tmp_path):
    x0, y0 = _first_batch(seed=5, cache_dir=str(tmp_path))
    x1, y1 = _first_batch(seed=5, cache_dir=str(tmp_path))
    x2, y2 = _first_batch(seed=5, cache_dir=str(tmp_path), num_workers=2, persistent_workers=True)
    x3, _ = _first_batch(seed=6, cache_dir=str(tmp_path))
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert torch.equal(x0, x2) and torch.equal(y0, y2)  # worker count does not change what is seen
    assert not torch.equal(x0, x3)


def test_epoch_batches_depend_only_on_seed_and_epoch(tmp_path):
    """What a resumed fit relies on: epoch 2's batches are a function of (seed, epoch), not of the past."""
    dm = ImageClassificationDataModule(augment="pad_crop_flip", image_size=16, batch_size=32, cache_dir=str(tmp_path))
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    epoch0 = next(iter(loader))
    loader.sampler.set_epoch(1)
    epoch1 = next(iter(loader))
    fresh = ImageClassificationDataModule(augment="pad_crop_flip", image_size=16, batch_size=32, cache_dir=str(tmp_path))
    fresh.setup("fit")
    resumed = fresh.train_dataloader()
    resumed.sampler.set_epoch(1)  # what Lightning does after restoring a checkpoint saved at the end of epoch 0
    again = next(iter(resumed))
    assert torch.equal(epoch1[0], again[0]) and torch.equal(epoch1[1], again[1])
    assert not torch.equal(epoch0[1], epoch1[1])


def test_fit_sees_the_same_labels_as_an_uninterrupted_fit_after_resume(tmp_path):
    def fit(max_epochs, ckpt=None, **kw):
        dm = ImageClassificationDataModule(source=SyntheticSource(count=60, classes=3), image_size=8,
                                           batch_size=12, augment="pad_crop_flip", cache_dir=str(tmp_path / "c"))
        model = TinyClassifier()
        trainer = tiny_trainer(tmp_path, max_epochs=max_epochs, limit_val_batches=0, enable_checkpointing=True,
                               num_sanity_val_steps=0, **kw)
        trainer.fit(model, dm, ckpt_path=ckpt)
        return model, trainer

    full, _ = fit(2)
    first, trainer = fit(1)
    ckpt = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
    resumed, _ = fit(2, ckpt=ckpt)
    per_epoch = len(full.seen) // 2
    assert len(resumed.seen) == per_epoch
    assert all(torch.equal(a, b) for a, b in zip(full.seen[per_epoch:], resumed.seen))


def test_synthetic_source_and_batch_size_finder(tmp_path):
    from pytorch_lightning.callbacks import BatchSizeFinder

    dm = ImageClassificationDataModule(source=SyntheticSource(count=200, classes=4, size=[20, 24]),
                                       image_size=12, batch_size=2, cache_dir=str(tmp_path))
    assert dm.num_classes == 4
    finder = BatchSizeFinder(mode="power", init_val=2, max_trials=3, steps_per_trial=1)
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[finder])
    trainer.fit(TinyClassifier(num_classes=4), dm)
    assert dm.batch_size == finder.optimal_batch_size > 2
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (dm.batch_size, 3, 12, 12)


def test_calibration_loader_uses_the_eval_transform_on_a_fixed_subset(tmp_path):
    dm = ImageClassificationDataModule(augment="rrc_affine_dropout", image_size=16, cache_dir=str(tmp_path))
    dm.setup("fit")
    a = torch.cat([x for x, _ in dm.calibration_dataloader(num_samples=40, batch_size=16)])
    b = torch.cat([x for x, _ in dm.calibration_dataloader(num_samples=40, batch_size=8)])
    assert a.shape == (40, 3, 16, 16) and torch.equal(a, b)


def test_num_workers_above_the_cores_is_capped_with_one_logged_sentence(tmp_path, caplog, monkeypatch):
    import logging

    from datamodules.datamodule import usable_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})  # a 3-core container
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")  # Lightning's loggers do not propagate
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            dm = ImageClassificationDataModule(num_workers=16, persistent_workers=True, cache_dir=str(tmp_path))
            same = ImageClassificationDataModule(num_workers=3, cache_dir=str(tmp_path))
    finally:
        logger.removeHandler(caplog.handler)
    assert usable_cores() == 3 and dm.num_workers == 3 and dm.persistent_workers and same.num_workers == 3
    # one record (another test may have made Lightning's logger propagate, which hands caplog the same record twice)
    said = [r.getMessage() for r in {id(r): r for r in caplog.records}.values() if "num_workers" in r.getMessage()]
    assert said == ["data.num_workers 16 is more than the 3 CPU core(s) this process may use; using 3 loader workers"]
    assert dm.train_dataloader().num_workers == 3


def test_a_small_folder_trains_on_every_image_and_says_an_epoch_is_a_handful_of_batches(tmp_path):
    """180 images split 6:2:2 at batch 64: 108 train images. An epoch sees all 108 (two batches, not one of 64
    with 44 left out), and one warning line says so with a batch size that gives a real epoch."""
    import pytest

    dm = ImageClassificationDataModule(source=SyntheticSource(count=180, classes=3), image_size=16, batch_size=64,
                                       cache_dir=str(tmp_path))
    with pytest.warns(UserWarning, match=r"108 images at data.batch_size 64 make 2 batches an epoch.*"
                                         r"set --data.batch_size 8 \(or smaller\)"):
        dm.setup("fit")
    assert sum(len(y) for _, y in dm.train_dataloader()) == 108
    # a last batch of one image is still dropped (BatchNorm cannot train on it)
    dm = ImageClassificationDataModule(source=SyntheticSource(count=55, classes=5), image_size=16, batch_size=34,
                                       cache_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="35 images at data.batch_size 34 make 1 batch an epoch"):
        dm.setup("fit")
    assert [len(y) for _, y in dm.train_dataloader()] == [34]
    # the quickstart's 1,078 train images at batch 64 are 17 batches: nothing to say
    assert few_batches_sentence(1078, 64, 1, 10) is None
