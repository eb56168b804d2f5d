"""Models users bring: activation hooks, a custom autograd Function (torchvision's classifiers are in
test_torchvision_model.py)."""
import glob
import warnings

import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from model.builtin.activation import SwishFunction
from model.factory import build_model
from trainer.checkpoint import load_checkpoint
from trainer.hooks import ActivationStats
from utils.config import Config

from helpers import REPO, fast_args, only_run


def test_swish_function_backward_passes_gradcheck_and_saves_one_tensor():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SwishFunction.apply, (x,))
    assert torch.allclose(SwishFunction.apply(x), F.silu(x))

    def saved_by(fn) -> int:
        """Distinct tensors kept for the backward pass."""
        saved = set()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.add(t.data_ptr()) or t, lambda t: t):
            fn(x.detach().requires_grad_())
        return len(saved)

    assert saved_by(SwishFunction.apply) == 1 and saved_by(lambda t: t * torch.sigmoid(t)) == 2
    # TorchScript cannot hold a Python Function: while tracing, the module records the plain formula.
    model = build_model(Config.load(REPO / "configs" / "config.yaml", ["arch.args.activation=swish"])).eval()
    images = torch.randn(3, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; export.py says so once
        traced = torch.jit.trace(model, images)
    assert torch.allclose(traced(images), model(images), atol=1e-6)


def test_digits_cnn_with_the_custom_activation_trains(save_dir):
    assert train.main(fast_args(save_dir, "arch.args.activation=swish", "trainer.epochs=2")) == 0
    state = load_checkpoint(only_run(save_dir) / "checkpoint-latest.pth")
    assert state["config"]["arch"]["args"]["activation"] == "swish"
    assert state["monitor"]["best"] > 0.3  # well above chance (0.1) after two short epochs


def test_activation_hooks_write_statistics_and_leave_no_handle_behind(save_dir):
    model = build_model(Config.load(REPO / "configs" / "config.yaml"))
    stats = ActivationStats(model)
    stats.attach()
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    stats.detach()
    assert all(not m._forward_hooks for m in model.modules())
    relu = stats.records["activations/features.2"][0]
    assert 0.2 < relu[2] < 0.8  # a share of the ReLU outputs are zeros
    assert "gradients/features.2" in stats.records and "gradients/classifier.2" in stats.records
    assert train.main(fast_args(save_dir, "trainer.tensorboard=true", "trainer.activation_stats=7",
                                "trainer.epochs=1")) == 0
    events = EventAccumulator(glob.glob(str(save_dir / "log" / "*" / "*"))[0], size_guidance={"histograms": 0})
    events.Reload()
    zeros = events.Scalars("activations/features.2/zeros")
    assert [e.step for e in zeros] == [0, 7, 14] and all(0 < e.value < 1 for e in zeros)
    assert "gradients/features.0" in events.Tags()["histograms"]


def test_activation_stats_need_tensorboard(save_dir):
    assert train.main(fast_args(save_dir, "trainer.activation_stats=5")) == 2
