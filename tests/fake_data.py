"""Small files in the formats torchvision's datasets read (MNIST IDX, CIFAR-10 pickled batches), made from
the bundled digits, so the torchvision code paths run offline with `download: false`."""
from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import torch
import torch.nn.functional as F

from data_loader.datasets import CsvImageDataset

from helpers import REPO


def digits(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` bundled digits as uint8 (n, size, size) images and their labels."""
    dataset = CsvImageDataset(REPO / "data" / "digits")
    images = torch.stack([dataset[i][0] for i in range(n)]).float()
    inner = size * 5 // 7  # MNIST's 20x20 digit in a 28x28 frame
    before, after = (size - inner) // 2, size - inner - (size - inner) // 2
    images = F.pad(F.interpolate(images, size=(inner, inner), mode="bilinear"), (before, after, before, after))
    return images.squeeze(1).clamp(0, 255).to(torch.uint8), torch.tensor([dataset.samples[i][1] for i in range(n)])


def write_idx(path: Path, array: torch.Tensor) -> None:
    """An IDX file, the format of MNIST, FashionMNIST and KMNIST."""
    header = struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


def write_mnist(root: Path, folder: str = "MNIST", train: int = 256, test: int = 64) -> None:
    """`root/<folder>/raw/` with the four IDX files of MNIST's layout, 28x28 digits."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    images, labels = digits(train + test, 28)
    write_idx(raw / "train-images-idx3-ubyte", images[:train])
    write_idx(raw / "train-labels-idx1-ubyte", labels[:train])
    write_idx(raw / "t10k-images-idx3-ubyte", images[train:])
    write_idx(raw / "t10k-labels-idx1-ubyte", labels[train:])


def write_cifar10(root: Path, per_batch: int = 32, test: int = 32) -> dict[str, str]:
    """`root/cifar-10-batches-py/` with five small training batches, a test batch and the meta file, as 32x32
    colour digits. Returns each file's MD5: torchvision checks CIFAR files against the real ones' sums, so a
    test patches `CIFAR10.train_list` / `test_list` / `meta` with these."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = digits(5 * per_batch + test, 32)
    colour = torch.stack([images, 255 - images, images // 2], dim=1)  # (n, 3, 32, 32)
    sums = {}

    def write(name: str, payload: dict) -> None:
        (folder / name).write_bytes(pickle.dumps(payload))
        sums[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()

    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        write(f"data_batch_{b + 1}", {"data": colour[part].reshape(per_batch, -1).numpy(),
                                      "labels": labels[part].tolist()})
    write("test_batch", {"data": colour[-test:].reshape(test, -1).numpy(), "labels": labels[-test:].tolist()})
    write("batches.meta", {"label_names": [str(i) for i in range(10)]})
    return sums


def patch_cifar10_sums(monkeypatch, sums: dict[str, str]) -> None:
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{b}", sums[f"data_batch_{b}"]] for b in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", sums["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": sums["batches.meta"]})
