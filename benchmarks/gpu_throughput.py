"""Is the GPU fed? Training images/s in one run and one table, each row against the network alone.

Rows: the network alone on random tensors already on the device (NCHW and channels_last); the train loader alone,
from the decoded store and from the JPEG files (images/s and images/s per loader worker); a plain PyTorch loop over
the store loader (uint8 over pinned memory, normalized on the device); and the project's own ``fit`` (LightningCLI
with experiments/imagefolder_gpu.yaml, its logging and gradient-norm monitor), timed after its first epoch. Below
the table: what opening the unchanged store costs a fit (the whole setup, and the hashing of every row that checks
the store is what was written) against one epoch of the loader alone and against the recipe's fit.

On a GPU: MobileNetV2 at 224, bf16 autocast, batch 128, workers auto. On a CPU (no GPU here) the same rows run on
the CPU with MobileNetV2 at width 0.35 in fp32, on a limited number of batches, so the loader rows are what it measures.

    python benchmarks/gpu_throughput.py --root DIR [--size 224] [--batch 128] [--workers auto] [--batches N] [--quick]

DIR: an image folder (one sub-folder per class); ../shared/gpu/make_jpegs.py DIR 8000 makes the 8,000-JPEG one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from datamodules import ImageClassificationDataModule  # noqa: E402
from datamodules.decoded import row_hashes  # noqa: E402
from datamodules.sources import ImageFolderSource  # noqa: E402
from datamodules.workers import auto_workers  # noqa: E402
from lightning_modules.backbones import build_backbone  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")
NETWORK = ("mobilenet_v2", {}) if GPU else ("mobilenet_v2", {"width_mult": 0.35})


def autocast():
    return torch.autocast("cuda", torch.bfloat16) if GPU else torch.autocast("cpu", enabled=False)


def sync() -> None:
    if GPU:
        torch.cuda.synchronize()


def train_step(net, opt):
    def step(x, y):
        with autocast():
            loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def network_alone(size: int, batch: int, channels_last: bool, steps: int) -> float:
    """Images/s of forward + backward + AdamW on random tensors already on the device."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = build_backbone(NETWORK[0], 10, **NETWORK[1]).to(DEVICE, memory_format=fmt)
    step = train_step(net, torch.optim.AdamW(net.parameters(), 1e-3))
    x = torch.randn(batch, 3, size, size, device=DEVICE).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=DEVICE)
    for _ in range(3):
        step(x, y)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    sync()
    return steps * batch / (time.perf_counter() - start)


def data(root: str, size: int, batch: int, workers: int, cache: str, decoded: bool) -> ImageClassificationDataModule:
    dm = ImageClassificationDataModule(source=ImageFolderSource(root), image_size=size, interpolation="area",
                                       augment="pad_crop_flip", batch_size=batch, num_workers=workers, persistent_workers=True,
                                       pin_memory=GPU, cache_dir=cache, decoded_cache=decoded)
    dm.setup("fit")
    return dm


def loader_alone(loader, batches: int) -> float:
    """Images/s of the loader alone (second pass: workers already started), at most ``batches`` batches."""
    rate = 0.0
    for _ in range(2):
        start, n = time.perf_counter(), 0
        for i, (x, y) in enumerate(loader):
            n += len(y)
            if i + 1 >= batches:
                break
        rate = n / (time.perf_counter() - start)
    return rate


def plain_loop(dm, channels_last: bool, batches: int) -> float:
    """A plain PyTorch loop over the store loader: to the device (non-blocking), normalize there, one step."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = build_backbone(NETWORK[0], 10, **NETWORK[1]).to(DEVICE, memory_format=fmt)
    step = train_step(net, torch.optim.AdamW(net.parameters(), 1e-3))
    loader = dm.train_dataloader()
    rate = 0.0
    for _ in range(2):  # the first pass warms the workers and the kernels
        sync()
        start, n = time.perf_counter(), 0
        for i, (x, y) in enumerate(loader):
            x, y = x.to(DEVICE, non_blocking=True), y.to(DEVICE, non_blocking=True)
            step(dm.normalize(x).contiguous(memory_format=fmt), y)
            n += len(y)
            if i + 1 >= batches:
                break
        sync()
        rate = n / (time.perf_counter() - start)
    return rate


def fit(root: str, size: int, batch: int, workers: int, cache: str, batches: int, epochs: int) -> float:
    """The project's fit (experiments/imagefolder_gpu.yaml, no fit-end chain), images/s after the first epoch."""
    import pytorch_lightning as pl

    from cli.app import cli_main

    class EpochTimer(pl.Callback):
        def __init__(self) -> None:
            self.seconds, self.images = [], []

        def on_train_epoch_start(self, trainer, module) -> None:
            sync()
            self.start, self.count = time.perf_counter(), 0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.count += len(batch[1])

        def on_train_epoch_end(self, trainer, module) -> None:
            sync()
            self.seconds.append(time.perf_counter() - self.start)
            self.images.append(self.count)

    # the recipe by its path in the repository, so the benchmark runs from any folder
    args = ["fit", "--config", os.path.join(REPO, "experiments", "imagefolder_gpu.yaml"), "--data.source.root", root,
            "--data.image_size", str(size),
            "--data.batch_size", str(batch), "--data.num_workers", str(workers), "--data.cache_dir", cache,
            "--trainer.callbacks", "[]", "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
            "--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches", str(batches),
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--model.log_grad_norm_every", "50",
            "--trainer.default_root_dir", cache]  # where LightningCLI leaves its config.yaml
    if not GPU:
        args += ["--trainer.precision", "32", "--model.backbone_args", json.dumps(NETWORK[1]),
                 "--model.channels_last", "false"]
    cli = cli_main(args[1:], run=False)
    timer = EpochTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return sum(timer.images[1:]) / sum(timer.seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="an image folder: one sub-folder of images per class")
    parser.add_argument("--size", type=int, default=224, help="image_size (default 224)")
    parser.add_argument("--batch", type=int, default=128 if GPU else 64, help="batch size (default: 128 GPU, 64 CPU)")
    parser.add_argument("--workers", default="auto", help="loader workers, or auto (cores - 1)")
    parser.add_argument("--batches", type=int, default=0 if GPU else 24,
                        help="batches per timed pass, 0 = whole epoch (default: whole epoch on a GPU, 24 on a CPU)")
    parser.add_argument("--cache", default=None, help="cache_dir of the decoded store (default: a temp folder, removed)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: --size 64 --batch 16 --batches 4 --workers 1")
    args = parser.parse_args()
    if args.quick:
        args.size, args.batch, args.batches, args.workers = 64, 16, 4, "1"
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    workers = auto_workers() if args.workers == "auto" else int(args.workers)
    batches = args.batches or 10**9
    scratch = None if args.cache else tempfile.TemporaryDirectory(prefix="edgecls-throughput-")
    cache = args.cache or scratch.name
    steps = 40 if GPU else 6
    device = torch.cuda.get_device_name(0) if GPU else f"CPU ({os.cpu_count()} cores)"
    what = f"{NETWORK[0]} {args.size}px batch {args.batch}, {'bf16' if GPU else 'fp32'}, {workers} loader worker(s)"
    print(f"{device}: {what}; {args.root}", flush=True)

    rows = []
    nchw = network_alone(args.size, args.batch, False, steps)
    rows.append(("network alone, NCHW (random tensors on the device)", nchw, None))
    cl = network_alone(args.size, args.batch, True, steps)
    rows.append(("network alone, channels_last", cl, None))
    reference = cl if GPU else max(nchw, cl)

    start = time.perf_counter()
    cached = data(args.root, args.size, args.batch, workers, cache, decoded=True)
    built = time.perf_counter() - start
    opened, verified = [], []  # a later fit over the unchanged folder: list, stat, open and verify the store
    for _ in range(3):
        start = time.perf_counter()
        data(args.root, args.size, args.batch, workers, cache, decoded=True)
        opened.append(time.perf_counter() - start)
        start = time.perf_counter()
        row_hashes(cached.dataset("train").images.store_file)
        verified.append(time.perf_counter() - start)
    opened, verified = sorted(opened)[1], sorted(verified)[1]  # medians
    files = data(args.root, args.size, args.batch, workers, cache, decoded=False)
    per = max(1, workers)
    store_rate = loader_alone(cached.train_dataloader(), batches)
    file_rate = loader_alone(files.train_dataloader(), min(batches, 12) if not GPU else batches)
    rows.append((f"train loader alone, decoded store ({store_rate / per:,.0f} img/s a worker)", store_rate, None))
    rows.append((f"train loader alone, JPEG files ({file_rate / per:,.0f} img/s a worker)", file_rate, None))
    plain = plain_loop(cached, GPU, batches)
    rows.append(("plain PyTorch loop over the store loader", plain, None))
    ours = fit(args.root, args.size, args.batch, workers, cache, args.batches or 10**6, 3 if GPU else 2)
    rows.append(("edgecls fit (imagefolder_gpu.yaml, after its first epoch)", ours, None))

    width = max(len(r[0]) for r in rows)
    print(f"\n{'row':<{width}}  {'img/s':>9}  {'x network alone':>15}")
    for name, rate, _ in rows:
        print(f"{name:<{width}}  {rate:>9,.0f}  {rate / reference:>15.2f}")
    print(f"(network alone = {'channels_last' if GPU else 'the faster layout'}, {reference:,.0f} img/s; the store was "
          f"built in {built:.1f} s for {sum(len(cached.dataset(s)) for s in ('train', 'val', 'test')):,} images)")
    train = len(cached.dataset("train"))
    store = cached.dataset("train").images.store_file
    loader_epoch, fit_epoch = train / store_rate, train / ours
    recipe_epochs = 30  # experiments/imagefolder_gpu.yaml's max_epochs
    fit_wall = opened + recipe_epochs * fit_epoch
    print(f"opening the unchanged store ({os.path.getsize(store) / 1e9:.2f} GB): {opened:.2f} s in all, of which "
          f"{verified:.2f} s hash every row ({os.path.getsize(store) / 1e9 / verified:.1f} GB/s); one epoch of the "
          f"loader alone {loader_epoch:.1f} s (verifying: {100 * verified / loader_epoch:.1f} % of it), one fit "
          f"epoch {fit_epoch:.1f} s ({100 * verified / fit_epoch:.2f} %)")
    share = verified / fit_wall
    print(f"target verifying the store adds <= 5 % to a fit over an unchanged folder ({recipe_epochs} epochs of "
          f"imagefolder_gpu.yaml): {100 * share:.2f} % -> {'met' if share <= 0.05 else 'NOT met'}")
    ratio = (store_rate / per) / (file_rate / per)
    print(f"target loader img/s per core with the decoded store >= 4x without it: {ratio:.1f}x -> "
          f"{'met' if ratio >= 4 else 'NOT met'}")
    if GPU:
        print(f"target fit >= 0.8x the channels_last network alone: {ours / cl:.2f}x -> "
              f"{'met' if ours >= 0.8 * cl else 'NOT met'}")
    else:
        print("target fit >= 0.8x the network alone: measured on a GPU only (this run had none)")
    if scratch is not None:
        scratch.cleanup()


if __name__ == "__main__":
    main()
