"""Your data loaders, named in the config's `data_loader.type`. Subclass `BaseDataLoader` (data_loader/base.py)
and implement `make_dataset(train, transform)`, or keep a classic template loader (`from base import
BaseDataLoader`, built with a dataset). No `__all__` is needed.

The template's own loaders are in `data_loader/builtin.py` (CsvImageDataLoader, ImageFolderDataLoader,
TorchvisionDataLoader, MnistDataLoader) and `data_loader/device_loader.py`; a class here with the same name
replaces the template's, and the log says so.
"""
