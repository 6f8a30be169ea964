"""Loader workers start at once, however many there are and however large the dataset, and a stall is one sentence.

The start-up regression runs in a subprocess, as a user's script would: an application that imports Lightning (as
main.py does), an image folder whose train dataset pickles to more than a pipe's 64 KiB (file paths), 4 workers.
Before the fix every worker re-imported the application (Python's forkserver does not preload __main__) while the
next one waited for the pipe, so they started one after another, seconds apart.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from edgecls_testing import REPO

WORKERS = 4

APP = textwrap.dedent("""
    import inspect, json, pickle, sys, time
    import multiprocessing.process
    import pytorch_lightning  # noqa: F401 (an application importing Lightning, as main.py does)
    from datamodules import ImageClassificationDataModule
    from datamodules.sources import ImageFolderSource

    STARTS = []  # seconds each worker's start() took: until it is forked and has its start-up message
    _start = multiprocessing.process.BaseProcess.start

    def timed_start(self):
        began = time.perf_counter()
        _start(self)
        STARTS.append(time.perf_counter() - began)

    multiprocessing.process.BaseProcess.start = timed_start

    if __name__ == "__main__":
        root, cache, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
        kwargs = dict(source=ImageFolderSource(root), image_size=8, batch_size=4, cache_dir=cache,
                      mean_std=[[0.5] * 3, [0.25] * 3])
        if "decoded_cache" in inspect.signature(ImageClassificationDataModule).parameters:
            kwargs["decoded_cache"] = False  # file paths in the dataset: the largest pickle a folder makes
        dm = ImageClassificationDataModule(**kwargs)
        dm.num_workers = workers  # past the 2-core cap on purpose: the cap is not what is tested
        dm.setup("fit")
        loader = dm.train_dataloader()
        out = {"pickled_bytes": len(pickle.dumps(loader.dataset))}
        start = time.perf_counter()
        next(iter(loader))
        out["train_first_batch"] = time.perf_counter() - start
        out["worker_starts"] = list(STARTS)
        start = time.perf_counter()
        next(iter(dm.val_dataloader()))  # a second pool of workers, as every validation epoch starts one
        out["val_first_batch"] = time.perf_counter() - start
        print("RESULT " + json.dumps(out), flush=True)
""")


@pytest.fixture(scope="module")
def long_named_folder(tmp_path_factory):
    """1,200 small PNGs in 2 classes under long names: the train split's paths pickle to well over 64 KiB."""
    root = tmp_path_factory.mktemp("folder") / ("a_camera_export_folder_with_a_long_name_" * 2)
    rng = np.random.default_rng(0)
    for c in range(2):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(600):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                d / f"IMG_20261204_{i:05d}_burst_mode_frame_from_the_rear_camera.png")
    return root


def test_every_worker_after_the_first_starts_within_a_second_of_the_one_before(long_named_folder, tmp_path):
    app = tmp_path / "app.py"
    app.write_text(APP)
    proc = subprocess.run([sys.executable, str(app), str(long_named_folder), str(tmp_path / "cache"), str(WORKERS)],
                          cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["pickled_bytes"] > 64 * 1024  # the case that serialized the starts
    starts = result["worker_starts"]
    assert len(starts) == WORKERS
    # The first waits for the forkserver to import the application once; each later worker is a fork of it.
    assert max(starts[1:]) < 1.0, f"worker starts took {starts} s"
    assert result["val_first_batch"] < 2.0, result  # a new pool from the warm forkserver: no import at all


class Stuck(torch.utils.data.Dataset):
    """A dataset whose every read hangs (a dead network drive)."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        import time

        time.sleep(30)
        return torch.zeros(1), 0


def test_a_loader_whose_workers_send_nothing_stops_with_one_sentence():
    from datamodules.workers import LoaderStalled, make_loader

    loader = make_loader(Stuck(), 2, num_workers=1, collate_fn=torch.utils.data.default_collate, timeout=2)
    with pytest.raises(LoaderStalled) as info:
        next(iter(loader))
    message = str(info.value)
    assert "delivered no batch in 2 s (data.loader_timeout)" in message and "data.num_workers 0" in message
    assert "\n" not in message


def test_in_memory_sources_reach_workers_as_shared_memory_not_copies(tmp_path):
    """The start-up message of a worker holds handles: digits' whole array would otherwise be copied into each."""
    import io
    from multiprocessing.reduction import ForkingPickler

    from datamodules import ImageClassificationDataModule

    dm = ImageClassificationDataModule(image_size=64, cache_dir=str(tmp_path))
    dm.setup("fit")
    dataset = dm.train_dataloader().dataset
    assert dataset.images.array.nbytes > 20_000_000  # 1,797 digits at 64x64 RGB
    buffer = io.BytesIO()
    ForkingPickler(buffer).dump(dataset)
    assert buffer.tell() < 64 * 1024
