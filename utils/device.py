"""Choose the training device and set the global switches that trade speed against reproducibility."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import torch

from utils.errors import ConfigError, reason

log = logging.getLogger(__name__)


def select_device(requested: str, n_gpu: int | None = None, local_rank: int | None = None) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; `cpu`, `cuda`, `cuda:1`, `mps` are taken as asked. Under torchrun,
    `local_rank` picks this process's GPU.

    `n_gpu` comes from a classic template config: 0 means CPU; more than one is served by torchrun, not
    DataParallel.
    """
    if n_gpu is not None:
        if n_gpu == 0 and requested == "auto":
            requested = "cpu"
        if n_gpu > 1 and local_rank is None:
            log.info("The config asks for n_gpu=%d. This template trains on several GPUs with DDP: launch "
                     "`torchrun --standalone --nproc_per_node=%d train.py -c ...`; this process uses one device.",
                     n_gpu, n_gpu)
        log.info("Read the classic key n_gpu=%d as device: %s.", n_gpu, requested)
    if local_rank is not None and requested in ("auto", "cuda") and torch.cuda.is_available():
        requested = f"cuda:{local_rank}"
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise ConfigError(f"Unknown device '{requested}' (config key 'device' or --device). "
                          "Use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise ConfigError(f"Device '{requested}' was asked for (config key 'device' or --device), but this machine "
                              f"has {count} usable CUDA device(s). Use device: auto or --device cpu.")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("Device 'mps' was asked for, but MPS is not available here. Use device: auto or --device cpu.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"Unsupported device '{requested}'. Use auto, cpu, cuda, cuda:N or mps.")
    return device


def configure_backends(cudnn_benchmark: bool, deterministic: bool, matmul_precision: str) -> None:
    """Apply the trainer's speed/reproducibility switches before any model or data is built (each one set either
    way, so that a run in a process where another ran before, e.g. tune.py's LR range test, gets its own)."""
    torch.set_float32_matmul_precision(matmul_precision)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        cudnn_benchmark = False
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cudnn.deterministic = deterministic


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """`batch` with every tensor in it (in tuples, lists, dicts, at any depth) copied to `device`, asynchronously
    (fast when the loader pins memory); 4-D float tensors in channels-last layout when asked."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {key: to_device(value, device, channels_last) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(value, device, channels_last) for value in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass when `trainer.amp` asks for it, a no-op otherwise."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def maybe_compile(model: torch.nn.Module, option: Any) -> torch.nn.Module:
    """`model` compiled as `trainer.compile` says (`true`, or a mapping of `torch.compile` arguments), or as it is
    when that is false; the module itself is left uncompiled, so its state_dict keeps its own names."""
    if not option:
        return model
    try:
        return torch.compile(model, **(option if isinstance(option, dict) else {}))
    except (RuntimeError, TypeError, ValueError) as e:
        raise ConfigError(f"trainer.compile: torch.compile refused {option!r}: {reason(e)}. Use true, or a mapping "
                          "of torch.compile's arguments such as {mode: max-autotune, dynamic: false}.") from None
