"""Data sources, one class a file, chosen in YAML by class name or import path:

    data:
      source: DigitsSource                       # a built-in without options
    data:
      source:
        class_path: ImageFolderSource            # or datamodules.sources.imagefolder.ImageFolderSource
        init_args: {root: data/my_images}
    data:
      source:
        class_path: my_sources.StripesSource     # a user's own, in my_sources.py where main.py runs
        init_args: {count: 200}

Every module of this package is imported here, so a new built-in is one new file and its class name works in YAML.
"""

import importlib
import pkgutil

from datamodules.sources.base import SPLITS, DataSource, LoadRequest, SourceData, SplitData, from_indices
from datamodules.sources.cifar import Cifar10Source, Cifar100Source
from datamodules.sources.digits import DigitsSource, Mnist5kSource
from datamodules.sources.imagefolder import ImageFolderSource
from datamodules.sources.synthetic import SyntheticSource

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SPLITS", "Cifar100Source", "Cifar10Source", "DataSource", "DigitsSource", "ImageFolderSource",
           "LoadRequest", "Mnist5kSource", "SourceData", "SplitData", "SyntheticSource", "from_indices"]
