"""Predict with a checkpoint alone, from a notebook or a script; the training data need not be on the machine:

    from tools.predictor import load
    model = load("saved/models/digits_cnn/<run_id>/model_best.pth")
    model.predict("photo.png")                      # Prediction(label='3', index=3, probability=0.98, ...)
    model.predict(["a.png", pil_image, tensor])     # a list, in order

An input is an image file, a PIL image or an image tensor (uint8, or float in 0..1; (C, H, W)), read and prepared
as evaluation prepared the test data (the checkpoint's image_mode and eval_transform); for a model trained on a
table, a row: a mapping of its feature columns, or their values in order. predict.py prepares files the same way.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from data_loader.datasets import read_image, read_mode
from data_loader.inputs import ImageInputs, Inputs, TableInputs, find_images
from data_loader.table import Standardize
from data_loader.transforms import build_transforms
from tools.restore import Restored, Served, check_one_input, restore
from trainer.checkpoint import class_names, inputs_record
from utils.config import Config
from utils.device import to_device
from utils.errors import CheckpointError, DataError, plural

# Losses and metrics whose model outputs are class scores: softmax turns them into probabilities.
CLASSIFICATION = {"cross_entropy", "nll_loss", "CrossEntropyLoss", "NLLLoss", "accuracy", "top_k_acc"}
PIL_MODES = {"rgb": "RGB", "gray": "L"}


def is_classifier(config: Config, names: list[str] | None) -> bool:
    """Whether the model's outputs are class scores rather than values: its data names classes, or its loss or a
    metric is a classification one."""
    named = [item["type"] if isinstance(item, dict) else item for item in [config["loss"], *config["metrics"]]]
    return bool(names) or bool(CLASSIFICATION & set(named))


@dataclass
class Prediction:
    output: list[float]  # the model's output for the input, as it is
    label: str | None = None  # a classifier's best class: its name, or its number as text
    index: int | None = None  # that class's number
    probability: float | None = None  # its softmax probability
    probabilities: dict[str, float] | None = None  # every class's, by name


class Predictor:
    """A restored model with the preparation of its inputs, both read from the checkpoint alone."""

    def __init__(self, trained: Restored):
        state, record = trained.checkpoint.get("data_loader") or {}, inputs_record(trained.checkpoint)
        if not record:
            raise CheckpointError(f"'{trained.path}' does not record how its inputs are prepared (a checkpoint of an "
                                  "older version of the template, or of a loader of your own that does not derive "
                                  "from BaseDataLoader). Predict with the training data present: python predict.py "
                                  "-c CONFIG, which rebuilds the data loader.")
        check_one_input(trained, "tools/predictor.py")
        self.trained = trained
        self.transform = build_transforms(record["eval_transform"], "eval_transform")
        self.features = state.get("features")
        self.standardize = Standardize()
        if self.features is not None:
            self.standardize.mean, self.standardize.std = state["mean"], state["std"]
        self.mode = record["image_mode"] or "unchanged"
        shape = record["shape"]
        self.channels = shape[0] if self.features is None and shape and len(shape) == 3 else None
        self.names = class_names(trained.checkpoint)
        self.classify = is_classifier(trained.config, self.names)

    def files(self, paths: Sequence[str]) -> Inputs:
        """The inputs that `paths` give (image files, folders, lists; a table's CSV files), as predict.py reads them."""
        if self.features is not None:
            return TableInputs(paths, self.features, self.standardize, self.transform)
        return ImageInputs(find_images(paths), read_mode(self.mode), self.transform, self.channels)

    def prepare(self, item: Any) -> torch.Tensor:
        """One input prepared as evaluation prepared the test data; a DataError says why it cannot be."""
        if self.features is not None:
            values = [item[name] for name in self.features] if isinstance(item, Mapping) else list(item)
            if len(values) != len(self.features):
                raise DataError(f"a row has {len(values)} values; the model takes {len(self.features)}: "
                                f"{', '.join(self.features)}")
            sample = self.standardize(torch.tensor(values, dtype=torch.float32))
        elif isinstance(item, (str, Path)):
            sample = read_image(item, read_mode(self.mode), hint="")
        elif isinstance(item, Image.Image):
            # As image files are read: converted for gray and rgb; else kept as 1, 3 or 4 channels.
            sample = F.pil_to_tensor(item.convert(PIL_MODES.get(self.mode, item.mode if item.mode in ("L", "RGB", "RGBA")
                                                                 else "RGB")))
        elif isinstance(item, torch.Tensor):
            sample = item
        else:
            raise DataError(f"cannot predict on a {type(item).__name__}: give an image file, a PIL image or an "
                            "image tensor (C, H, W)")
        sample = self.transform(sample) if self.transform is not None else sample
        if self.channels is not None and sample.dim() == 3 and sample.shape[0] != self.channels:
            raise DataError(f"an image has {plural(sample.shape[0], 'channel')} after eval_transform, but the model "
                            f"was trained on images of {self.channels}")
        return sample

    @torch.inference_mode()
    def outputs(self, items: Sequence[Any], batch_size: int = 64) -> torch.Tensor:
        """The model's outputs (on the CPU) for `items`, in order."""
        served, outputs = Served(self.trained.model), []
        for start in range(0, len(items), batch_size):
            batch = torch.stack([self.prepare(item) for item in items[start:start + batch_size]])
            outputs.append(served(to_device(batch, self.trained.device)).float().cpu())
        return torch.cat(outputs) if outputs else torch.empty(0)

    def predict(self, items: Any, batch_size: int = 64) -> Prediction | list[Prediction]:
        """The prediction for one input, or a list of them for a list of inputs (a table row is one input)."""
        single = not isinstance(items, (list, tuple)) or (self.features is not None and items
                                                           and not isinstance(items[0], (Mapping, list, tuple)))
        outputs = self.outputs([items] if single else list(items), batch_size)
        predictions = [self.prediction(output) for output in outputs]
        return predictions[0] if single else predictions

    def prediction(self, output: torch.Tensor) -> Prediction:
        values = output.flatten().tolist()
        if not self.classify or output.dim() != 1 or len(output) < 2:
            return Prediction(values)
        probabilities = output.softmax(dim=0).tolist()
        names = self.names if self.names and len(self.names) == len(values) else [str(i) for i in range(len(values))]
        best = max(range(len(values)), key=probabilities.__getitem__)
        return Prediction(values, names[best], best, probabilities[best], dict(zip(names, probabilities)))


def load(checkpoint: str | Path, device: str | None = None, ema: bool = True) -> Predictor:
    """A Predictor for `checkpoint` (a file, or a run folder: its model_best.pth) on `device` (default: the config's,
    `auto`), with the EMA of the weights where the checkpoint holds one, unless `ema` is false."""
    return Predictor(restore(checkpoint, device=device, ema=ema))
