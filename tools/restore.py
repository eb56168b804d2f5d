"""Rebuild a trained model from a checkpoint, and the data to evaluate it on.

Shared by `test.py`, `export.py` and `predict.py`, so that all read a checkpoint, its config, its weights (the
EMA of the weights when the checkpoint holds one, trainer/ema.py) and its data the same way.
"""
from __future__ import annotations

import argparse
import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_loader.factory import build_data_loader, load_data_state
from model.factory import build_criterion, build_metrics, build_model
from trainer.checkpoint import BEST, find_checkpoint
from trainer.factory import build_trainer
from trainer.trainer import Trainer
from utils.config import Config, check_test_split
from utils.config_file import read_config_file
from utils.device import select_device
from utils.errors import CheckpointError, ConfigError, reason
from utils.registry import lookup
from utils.rng import seed_everything


@dataclass
class Restored:
    path: Path
    checkpoint: dict[str, Any]
    config: Config
    device: torch.device
    model: nn.Module
    weights: str  # "EMA" or "raw": which of the checkpoint's weights the model holds


def add_ema_argument(parser: argparse.ArgumentParser) -> None:
    """`--no-ema` (args.ema false): the raw trained weights instead of their EMA, for the scripts that restore."""
    parser.add_argument("--no-ema", dest="ema", action="store_false",
                        help="use the raw trained weights, not the EMA of the weights the checkpoint may hold")


def checkpoint_weights(checkpoint: dict[str, Any], ema: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """The model weights to use from `checkpoint`: its EMA weights (trainer.ema) when it holds them and `ema` is
    true, else the trained weights; and which ("EMA" or "raw")."""
    average = checkpoint.get("ema")
    if ema and average is not None and average.get("started", int(average["n_averaged"]) > 0):
        return average["model"], "EMA"
    return checkpoint["model"], "raw"


def restore(resume: str | Path, config_path: str | None = None, overrides: Sequence[str] = (),
            device: str | None = None, ema: bool = True) -> Restored:
    """The checkpoint `resume` (for a run folder: its model_best.pth, else, with a warning if model_best.pth is
    damaged, its newest intact checkpoint) with its model rebuilt from the saved config, weights loaded, on the
    device, in eval mode: the EMA weights when the checkpoint holds them, unless `ema` is false (`--no-ema`).

    `config_path` replaces only the config's `data_loader` section (the same model on other data).
    """
    path, checkpoint = find_checkpoint(resume, first=BEST)
    base = checkpoint["config"]
    if config_path is not None:
        other = read_config_file(config_path)
        if "data_loader" not in other:
            raise ConfigError(f"{config_path} has no 'data_loader' section; -c here gives the data to evaluate on "
                              "(only its data_loader is used), e.g. a copy of the training config with another "
                              "data_dir.")
        base = {**base, "data_loader": other["data_loader"]}
    config = Config.load(None, overrides, base=base, device=device)
    if config_path is None:  # the training data: its test split must be the one held out in training
        check_test_split(checkpoint["config"], config.data, "the command line")
    model = build_model(config, pretrained=False)
    weights, which = checkpoint_weights(checkpoint, ema)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        changed = [item for item in overrides if item.split("=", 1)[0].split(".")[0] == "arch"]
        hint = (f" The command line's {', '.join(changed)} changes the model the checkpoint was trained as: leave "
                "it out." if changed else "")
        raise CheckpointError(f"'{path}' does not fit the model '{config['arch']['type']}': "
                              f"{reason(e)}.{hint}") from None
    torch_device = select_device(config["device"])
    return Restored(path, checkpoint, config, torch_device, model.to(torch_device).eval(), which)


class Served(nn.Module):
    """What predict.py and export.py run: the model's `predict(x)` where it defines one (one tensor in, one tensor
    out: for a model whose forward returns several, or is fed otherwise in training), else its forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model.predict(inputs) if callable(getattr(self.model, "predict", None)) else self.model(inputs)


def check_one_input(trained: Restored, script: str) -> None:
    """predict.py and export.py give the model one tensor, `model(x)` (or its `predict(x)`), as the template's
    `Trainer.forward` does with `(input, target)` batches; refuse, before anything runs, a run whose model is fed
    another way and has no `predict`."""
    name, arch = trained.config["trainer"]["type"], trained.config["arch"]["type"]
    predict = getattr(trained.model, "predict", None)
    served = predict if callable(predict) else trained.model.forward
    if not callable(predict) and lookup(name, "trainer", "trainer.type", trained.config.source).forward \
            is not Trainer.forward:
        how = f"its trainer {name} overrides forward (its batches are not (input, target))"
    else:
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                 inspect.Parameter.KEYWORD_ONLY)
        needed = [p.name for p in inspect.signature(served).parameters.values()
                  if p.kind in kinds and p.default is inspect.Parameter.empty]
        if len(needed) <= 1:
            return
        how = f"its model {arch} takes {len(needed)} inputs ({', '.join(needed)})"
    raise ConfigError(f"{script} gives the model one input tensor per batch, model(x), but {how}. Give the model a "
                      "predict(x) method that takes one tensor and returns one (docs/predict.md), or load it with "
                      f"tools.restore.restore('{trained.path}') (its .model is ready, in eval mode) and feed it as "
                      "your trainer's forward does.")


def check_one_output(output: Any, arch: str, script: str) -> torch.Tensor:
    """The served model's output, which predict.py and export.py take as one tensor."""
    if not isinstance(output, torch.Tensor):
        what = f"a {type(output).__name__}" + (f" of {len(output)}" if isinstance(output, (tuple, list)) else "")
        raise ConfigError(f"{script} takes one tensor from the model per batch, and {arch} returns {what}. Give the "
                          "model a predict(x) method that returns the tensor to serve (e.g. the first of them; "
                          "docs/predict.md).")
    return output


def rebuilt_data(trained: Restored, training: bool = True) -> Any:
    """The checkpoint config's data loader, built as training built it (same seed, same split), with its saved
    state (fitted statistics, class names). `training=False` builds a classic loader for its test split."""
    config = trained.config
    seed_everything(config["seed"])  # as train.py does before it builds the data (the classic loaders read it)
    data = build_data_loader(config["data_loader"], config["seed"], training=training, source=config.source)
    load_data_state(data, trained.checkpoint)
    return data


def eval_loader(trained: Restored, split: str) -> Iterable:
    """The loader of the checkpoint config's `test` or `val` split, built as training built it (same seed, same
    split, the loader's saved state such as fitted statistics)."""
    data = rebuilt_data(trained, training=split != "test")
    loader = data.test_loader(trained.device) if split == "test" else data.val_loader(trained.device)
    if loader is None:
        raise CheckpointError("The checkpoint's config has no validation split (the data loader's validation_split "
                              "is 0); use --split test.")
    return loader


def evaluator(trained: Restored) -> Trainer:
    """The config's Trainer (`trainer.type`) around the restored model, for evaluation only: its
    `validation_step` computes the figures, as in training."""
    config = trained.config
    return build_trainer(config, model=trained.model, criterion=build_criterion(config),
                         metrics=build_metrics(config), optimizer=None, device=trained.device)
