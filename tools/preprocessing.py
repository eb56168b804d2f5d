"""The evaluation preprocessing of a checkpoint as a module that exports with its model (`export.py
--with-preprocessing`), so that the exported file takes images as read: uint8 (N, C, H, W) of any size.

torchvision's Resize and CenterCrop choose their sizes with Python branches on the image's shape, which
torch.export turns into guards on one aspect ratio. The steps here compute the same sizes and offsets with integer
arithmetic instead, and call the same kernels, so that they give torchvision's results for any image; export.py
checks that they do on images of two shapes. Supported: Resize (bilinear, to a shorter side or to [h, w]),
CenterCrop no larger than the image it gets (torchvision pads; the file refuses a smaller image), ToDtype
(float32) and Normalize.
"""
from __future__ import annotations

import platform
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _pair(size: Any, step: str) -> tuple[int, int] | int:
    """An int (a shorter side) or (height, width), as torchvision reads a size."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    if isinstance(size, (list, tuple)) and len(size) in (1, 2) and all(isinstance(s, int) for s in size):
        return size[0] if len(size) == 1 else (size[0], size[1])
    raise ValueError(f"{step}'s size {size!r} is not a whole number or [height, width]")


class Resize(nn.Module):
    def __init__(self, size: Any, interpolation: Any = "bilinear", antialias: bool = True, max_size: Any = None):
        super().__init__()
        if str(interpolation).lower().rsplit(".", 1)[-1] != "bilinear" or max_size is not None:
            raise ValueError("Resize can be baked with bilinear interpolation and no max_size only")
        self.size, self.antialias = _pair(size, "Resize"), antialias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        if isinstance(self.size, int):  # the shorter side to `size`, the other in proportion (rounded down)
            short = torch.sym_min(h, w)
            size = ((h * self.size) // short, (w * self.size) // short)
        else:
            size = self.size
        if x.is_floating_point() or _native_uint8(x.device):
            return F.interpolate(x, size=size, mode="bilinear", antialias=self.antialias, align_corners=False)
        # As torchvision does where the uint8 kernel is not used: in float32, rounded back.
        return F.interpolate(x.to(torch.float32), size=size, mode="bilinear", antialias=self.antialias,
                             align_corners=False).round().to(x.dtype)


def _native_uint8(device: torch.device) -> bool:
    """Whether torchvision resizes uint8 images with the uint8 kernel here (its rule: x86 with AVX2 or AVX-512, or
    ARM, on the CPU); elsewhere it resizes in float32."""
    return device.type == "cpu" and (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
                                     or platform.machine() in ("aarch64", "arm64"))


class CenterCrop(nn.Module):
    def __init__(self, size: Any):
        super().__init__()
        size = _pair(size, "CenterCrop")
        self.height, self.width = (size, size) if isinstance(size, int) else size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        torch._check(h >= self.height, lambda: "the image is less high than the crop")
        torch._check(w >= self.width, lambda: "the image is narrower than the crop")
        # Rows and columns picked by index: a slice would let torch.export guard on whether it covers the image.
        rows = torch.arange(self.height, device=x.device) + _half(h - self.height)
        columns = torch.arange(self.width, device=x.device) + _half(w - self.width)
        return x.index_select(-2, rows).index_select(-1, columns)


def _half(n: Any) -> Any:
    """round(n / 2) as Python rounds it (half to even), for a symbolic whole number n >= 0."""
    return n // 2 + (n % 2) * ((n // 2) % 2)


class ToDtype(nn.Module):
    def __init__(self, dtype: Any, scale: bool = False):
        super().__init__()
        if str(dtype).removeprefix("torch.") != "float32":
            raise ValueError(f"ToDtype can be baked to float32 only, not {dtype}")
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = self.scale and not x.is_floating_point()
        return x.to(torch.float32) / 255 if scaled else x.to(torch.float32)


class Normalize(nn.Module):
    def __init__(self, mean: list[float], std: list[float], inplace: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


STEPS = {"Resize": Resize, "CenterCrop": CenterCrop, "ToDtype": ToDtype, "Normalize": Normalize}


def baked(spec: list[Any] | None) -> nn.Sequential:
    """The steps of an `eval_transform` spec ([{type, args}, ...]) as exportable modules; a ValueError names a step
    that cannot be baked."""
    steps: list[nn.Module] = []
    for item in spec or []:
        name, args = (item, {}) if isinstance(item, str) else (item.get("type"), item.get("args") or {})
        if name not in STEPS:
            raise ValueError(f"eval_transform's {name} cannot be baked in (only {', '.join(STEPS)} can)")
        try:
            steps.append(STEPS[name](**args))
        except TypeError as e:
            raise ValueError(f"eval_transform's {name} cannot be baked in ({e})") from None
        resized = next((s.size for s in reversed(steps[:-1]) if isinstance(s, Resize)), None)
        if isinstance(steps[-1], CenterCrop) and isinstance(resized, int) and resized < max(steps[-1].height,
                                                                                             steps[-1].width):
            raise ValueError(f"eval_transform's CenterCrop is larger than its Resize ({resized}), and torchvision "
                             "pads such a crop, which cannot be baked in")
    return nn.Sequential(*steps)


class Prepared(nn.Module):
    """`model(prepare(x))`: the model with its preprocessing, baked (`baked`) or torchvision's (to check against)."""

    def __init__(self, prepare: Any, model: nn.Module):
        super().__init__()
        self.prepare, self.model = prepare, model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.prepare(images))
