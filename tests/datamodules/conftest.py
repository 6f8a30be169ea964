# Fixtures live beside their helpers in data_factory.py; tests import helpers from there, not from a conftest
# (several conftest modules share that name, so `from conftest import` would depend on collection order).
from data_factory import dirty_folder, image_folder  # noqa: F401
