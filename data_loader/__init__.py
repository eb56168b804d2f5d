from data_loader.data_loaders import CsvImageDataLoader, MnistDataLoader
from data_loader.device_loader import DeviceDataLoader

__all__ = ["CsvImageDataLoader", "DeviceDataLoader", "MnistDataLoader"]
