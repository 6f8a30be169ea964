"""A user's folder of images: one sub-folder per class, optionally already split into train/ val/ [test/]."""

from __future__ import annotations

import os

from datamodules import imagefolder
from datamodules.sources.base import DataSource, LoadRequest, SourceData


class ImageFolderSource(DataSource):
    """``root``: a folder with one sub-folder of images per class (or train/ val/ [test/] holding those). Every
    file is decoded once when indexed; broken ones are left out with their reasons (see datamodules/imagefolder.py)."""

    name = "imagefolder"

    def __init__(self, root: str) -> None:
        self.root = imagefolder.check_root(os.path.expanduser(root) if root else root)

    def class_names(self) -> list[str]:
        return imagefolder.class_names(self.root)

    def load(self, request: LoadRequest) -> SourceData:
        return imagefolder.load_imagefolder_source(self.root, request.split, request.seed, request.cache_dir,
                                                   request.index_threads, stats=request.stats, decoded=request.decoded)
