"""Transfer learning: any classifier of `torchvision.models` by name, with a new head for `num_classes`,
pretrained weights from torchvision or a local file, and a frozen backbone if asked."""
from __future__ import annotations

import logging
from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn
from torchvision import models

from utils.errors import plural, reason, suggest

log = logging.getLogger(__name__)


class TorchvisionClassifier(nn.Module):
    """`torchvision.models.<name>` (resnet18, efficientnet_b0, convnext_tiny, vit_b_16, ...) whose last
    `nn.Linear` is replaced by a new one with `num_classes` outputs.

    `weights`: null (random), a torchvision weights name (`DEFAULT`, `IMAGENET1K_V1`; downloaded once into the
    torch hub cache), or the path of a local file: a state_dict of the same torchvision model (such as the file
    torchvision downloads) or a checkpoint of this template. `freeze`: `backbone` (everything but the new head)
    or a list of module names (`layer1`, `features.0`). Frozen modules get `requires_grad=False`, so the
    optimizer leaves them out, and stay in eval mode, so their BatchNorm statistics do not move either.
    """

    def __init__(self, name: str = "resnet18", num_classes: int = 10, weights: str | None = None,
                 freeze: str | list[str] | None = None):
        super().__init__()
        available = [n for n in models.list_models(module=models) if n not in _AUX_HEADS]
        if name in _AUX_HEADS:
            raise ValueError(f"name: {name} is not supported here: in training it returns auxiliary "
                             "outputs, and its architecture changes with the pretrained weights. Choose another "
                             "model (e.g. resnet50, efficientnet_b0), or write a model class in model/model.py.")
        if name not in available:
            raise ValueError(f"name: torchvision has no classifier '{name}'.{suggest(name, available)} "
                             "Names are those of torchvision.models.list_models(), e.g. resnet18, efficientnet_b0.")
        self.net = models.get_model(name, num_classes=num_classes) if weights is None else _pretrained(name, weights)
        head = _last_linear(self.net, name)
        self.head = f"net.{head}"
        if weights is not None:
            old = self.net.get_submodule(head)
            new_head = old.out_features != num_classes or not Path(weights).is_file()  # else: an earlier fine-tune's
            if new_head:
                parent, _, child = head.rpartition(".")
                setattr(self.net.get_submodule(parent), child, nn.Linear(old.in_features, num_classes))
            log.info("%s: loaded the %s weights%s.", name, weights,
                     f"; new head {head} for {num_classes} classes" if new_head else "")
        first_conv = next((m for m in self.net.modules() if isinstance(m, nn.Conv2d)), None)
        self.in_channels = first_conv.in_channels if first_conv is not None else None
        self._freeze(freeze)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Every parameter outside the head: what `freeze: backbone` and `param_groups: [{modules: backbone}]`
        mean (the vision transformers' class token and a classifier block's other layers included)."""
        head = {id(p) for p in self.get_submodule(self.head).parameters()}
        return [p for p in self.parameters() if id(p) not in head]

    def _freeze(self, freeze: str | list[str] | None) -> None:
        if freeze == "backbone":
            for param in self.backbone_parameters():
                param.requires_grad_(False)
            return
        known = [n for n, _ in self.net.named_modules() if n]
        for name in _as_list(freeze or []):
            if name not in known:
                raise ValueError(f"freeze: the model has no module '{name}'.{suggest(name, known)} Use "
                                 f"'backbone' or module names such as {', '.join(known[:4])}.")
            self.net.get_submodule(name).requires_grad_(False)

    def train(self, mode: bool = True) -> TorchvisionClassifier:
        """Modules whose parameters are all frozen stay in eval mode, so that BatchNorm statistics stay as
        loaded too."""
        super().train(mode)
        for module in self.modules():
            own = list(module.parameters(recurse=False))
            if own and not any(p.requires_grad for p in own):
                module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels is not None and x.dim() == 4 and x.shape[1] != self.in_channels:
            mode = "gray" if self.in_channels == 1 else "rgb"
            raise ValueError(f"The model takes {self.in_channels}-channel images and got {x.shape[1]}-channel ones. "
                             f"Set the data loader's image_mode: {mode} (or add a transform that converts them) so "
                             f"that the images have {plural(self.in_channels, 'channel')}.")
        size = getattr(self.net, "image_size", None)  # vision transformers take one image size only
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"The model takes {size}x{size} images and got {x.shape[-2]}x{x.shape[-1]}. Add a "
                             f"transform such as {{type: Resize, args: {{size: [{size}, {size}]}}}}.")
        return self.net(x)


# Models whose training output holds auxiliary heads and whose builder changes the architecture with the weights.
_AUX_HEADS = ("googlenet", "inception_v3")


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _last_linear(net: nn.Module, name: str) -> str:
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"name: '{name}' has no nn.Linear classification head to replace (squeezenet's "
                         "is a convolution). Choose another model, or write a model class in model/model.py.")
    return linears[-1]


def _pretrained(name: str, weights: str) -> nn.Module:
    """The torchvision model with its original head and `weights` loaded: a local file or a weights name."""
    if Path(weights).is_file():
        net = models.get_model(name)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"weights: cannot read '{weights}' ({reason(e)}). Pass a "
                             "file written with torch.save(model.state_dict(), path).") from None
        if isinstance(state, dict) and isinstance(state.get("model"), dict):  # a checkpoint of this template
            state = {k.removeprefix("net."): v for k, v in state["model"].items()}
        if not isinstance(state, dict):
            raise ValueError(f"weights: '{weights}' holds a {type(state).__name__}, not a state_dict. "
                             "Pass a file written with torch.save(model.state_dict(), path).")
        head = _last_linear(net, name)
        file_head = state.get(f"{head}.weight")
        if file_head is not None and file_head.dim() == 2 and file_head.shape[0] != net.get_submodule(head).out_features:
            net = models.get_model(name, num_classes=file_head.shape[0])  # a head fine-tuned for other classes
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            detail = " ".join(str(e).split("\n", 1)[-1].split())[:300]
            raise ValueError(f"weights: '{weights}' does not fit torchvision's {name} ({detail}). "
                             "Pass a state_dict of the same model.") from None
        return net
    choices = models.get_model_weights(name)
    if weights not in choices.__members__:
        raise ValueError(f"weights: '{weights}' is neither a file nor a weights name of {name} "
                         f"({', '.join(choices.__members__)}). Give one of those, a path to a local file, or null.")
    chosen = choices[weights]
    try:
        return models.get_model(name, weights=chosen)
    except (URLError, OSError, RuntimeError) as e:
        raise ValueError(f"weights: cannot download the {weights} weights of {name} "
                         f"({reason(e)}); this machine seems to be offline. On a machine with internet, "
                         f"download {chosen.url}, copy the file here, and set weights to its path "
                         f"(or place it in {torch.hub.get_dir()}/checkpoints/).") from None
