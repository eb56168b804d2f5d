from data_loader.data_loaders import CsvImageDataLoader, ImageFolderDataLoader, MnistDataLoader, TorchvisionDataLoader
from data_loader.device_loader import DeviceDataLoader

__all__ = ["CsvImageDataLoader", "DeviceDataLoader", "ImageFolderDataLoader", "MnistDataLoader",
           "TorchvisionDataLoader"]
