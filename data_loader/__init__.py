from data_loader.data_loaders import CsvImageDataLoader, MnistDataLoader

__all__ = ["CsvImageDataLoader", "MnistDataLoader"]
