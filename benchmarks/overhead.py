"""What the Trainer costs over a hand-written loop, measured in one process on the same model, data and steps:

    python benchmarks/overhead.py [--samples 60000] [--epochs 2] [--device cpu|cuda]

(a) a minimal hand-written loop, (b) the Trainer on the same per-sample Dataset and DataLoader settings,
(c) the Trainer on the device-resident loader, (d) PyTorch Lightning when it is installed. The classic MNIST
model, batch 128, Adam, MNIST-shaped data (1x28x28, 10 classes). Prints seconds per epoch, each ratio to (a),
and on CUDA the peak memory.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_loader.device_loader import DeviceBatches  # noqa: E402
from data_loader.factory import TrainingData  # noqa: E402
from data_loader.sampling import ResumableSampler  # noqa: E402
from model.builtin.models import MnistModel  # noqa: E402
from trainer.trainer import Trainer  # noqa: E402
from utils.config import Config  # noqa: E402
from utils.run import new_run  # noqa: E402

BATCH = 128


class MnistShaped(Dataset):
    """Per-sample access with normalisation, as a user's Dataset would do it."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return (self.images[i].float().div(255) - 0.1307) / 0.3081, self.labels[i]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def hand_written(dataset, device, epochs, workers):
    torch.manual_seed(0)
    model = MnistModel().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    sync(device)
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for data, target in loader:
            data, target = data.to(device, non_blocking=True), target.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = F.nll_loss(model(data), target)
            loss.backward()
            optimizer.step()
    sync(device)
    return time.perf_counter() - started


def with_trainer(loader, device, epochs, save_dir, extra=()):
    torch.manual_seed(0)
    model = MnistModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    base = {"name": "overhead", "arch": {"type": "MnistModel"}, "loss": "nll_loss",
            "data_loader": {"type": "none"}, "optimizer": {"type": "Adam"},
            "trainer": {"epochs": epochs, "save_dir": save_dir, "save_period": 0, "verbosity": 0}}
    config = Config.load(None, list(extra), base=base)
    trainer = Trainer(model, F.nll_loss, {}, optimizer, config, device, TrainingData(loader))
    sync(device)
    started = time.perf_counter()
    trainer.fit(new_run(save_dir, "overhead"))
    sync(device)
    return time.perf_counter() - started


def ordinary_loader(dataset, device, workers):
    sampler = ResumableSampler(range(len(dataset)), shuffle=True, seed=0)
    return DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0)


def device_loader(images, labels, device):
    data = ((images.float().div(255) - 0.1307) / 0.3081).to(device)
    return DeviceBatches(data, labels.to(device), BATCH, ResumableSampler(range(len(labels)), seed=0))


def lightning(dataset, device, epochs, workers):
    try:
        import lightning.pytorch as pl
    except ImportError:
        return None

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = MnistModel()

        def training_step(self, batch, _):
            data, target = batch
            return F.nll_loss(self.model(data), target)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    torch.manual_seed(0)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    trainer = pl.Trainer(max_epochs=epochs, accelerator=device.type, devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    sync(device)
    started = time.perf_counter()
    trainer.fit(Module(), loader)
    sync(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per variant (the median is shown)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.samples, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (args.samples,), generator=generator)
    dataset = MnistShaped(images, labels)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.samples} MNIST-shaped samples, batch {BATCH}, {args.epochs} epoch(s) x {args.repeat}, on {name}, "
          f"torch {torch.__version__}")

    with tempfile.TemporaryDirectory() as save_dir:
        variants = {
            "(a) hand-written loop": lambda: hand_written(dataset, device, args.epochs, args.workers),
            "(b) Trainer, same loader": lambda: with_trainer(ordinary_loader(dataset, device, args.workers), device,
                                                             args.epochs, save_dir),
            "(c) Trainer, device-resident loader": lambda: with_trainer(device_loader(images, labels, device), device,
                                                                        args.epochs, save_dir),
            "(d) Lightning, same loader": lambda: lightning(dataset, device, args.epochs, args.workers),
        }
        if device.type == "cuda":
            variants["(e) Trainer, device-resident, compiled"] = lambda: with_trainer(
                device_loader(images, labels, device), device, args.epochs, save_dir,
                ["trainer.compile={mode: max-autotune-no-cudagraphs}"])
        results: dict[str, list[float]] = {key: [] for key in variants}
        peaks: dict[str, int] = {}
        for _ in range(args.repeat):
            for key, run in variants.items():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                seconds = run()
                if seconds is not None:
                    results[key].append(seconds / args.epochs)
                    if device.type == "cuda":
                        peaks[key] = torch.cuda.max_memory_allocated()
    reference = statistics.median(results["(a) hand-written loop"])
    for key, times in results.items():
        if not times:
            print(f"{key:<42} not installed")
            continue
        per_epoch = statistics.median(times)
        peak = f"  peak {peaks[key] / 2**20:,.0f} MiB" if key in peaks else ""
        print(f"{key:<42} {per_epoch:7.3f} s/epoch  ratio {per_epoch / reference:5.3f}{peak}")


if __name__ == "__main__":
    main()
