"""trainer.ema: the moving average of the weights is the hand-computed one, is validated beside the model, is what
test.py and export.py use unless --no-ema, and is one and the same copy in every DDP process."""
import json
import re

import pytest
import torch

import export as export_script
import test as test_script
import train
from tools.restore import restore
from trainer.checkpoint import load_checkpoint
from trainer.ema import ModelEMA
from trainer.trainer import Trainer

from helpers import REPO, fast_args, only_run

EMA = "trainer.ema={decay: 0.999, every_steps: 3, warmup: 1}"


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """Two epochs with an EMA every 3 steps, copying the weights in epoch 1; the model's weights after every
    optimizer step, recorded as (epoch, step, state)."""
    save_dir = tmp_path_factory.mktemp("ema")
    snapshots = []
    step = Trainer.optimizer_step

    def recording_step(self):
        step(self)
        snapshots.append((self.epoch, self.global_step, {k: v.clone() for k, v in self.model.state_dict().items()}))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "optimizer_step", recording_step)
        assert train.main(fast_args(save_dir, EMA, "trainer.monitor=max val_accuracy_ema")) == 0
    return only_run(save_dir), snapshots


def test_ema_weights_equal_a_hand_computation(ema_run):
    run, snapshots = ema_run
    # The reference's adjustment: 1 - decay scaled by samples per step x steps per update / epochs.
    decay = 1 - (1 - 0.999) * 64 * 3 / 2
    average, count = None, 0
    for epoch, step, weights in snapshots:
        if step % 3:
            continue
        if count == 0:
            average = {k: v.double() for k, v in weights.items()}
        else:
            average = {k: decay * average[k] + (1 - decay) * weights[k].double()
                       if v.is_floating_point() else weights[k].double() for k, v in weights.items()}
        count = 0 if epoch <= 1 else count + 1  # warmup: 1 epoch of plain copies
    ema = load_checkpoint(run / "checkpoint-latest.pth")["ema"]
    assert int(ema["n_averaged"]) == count > 5
    assert ema["model"].keys() == snapshots[-1][2].keys()
    for name, value in ema["model"].items():  # parameters and BatchNorm buffers alike
        assert torch.allclose(value.double(), average[name], rtol=1e-5, atol=1e-6), name
    last = [weights for _, step, weights in snapshots if step % 3 == 0][-1]  # the weights of the last update
    assert not torch.equal(ema["model"]["classifier.2.weight"], last["classifier.2.weight"])
    assert not torch.equal(ema["model"]["features.1.running_mean"], last["features.1.running_mean"])
    assert torch.equal(ema["model"]["features.1.num_batches_tracked"], last["features.1.num_batches_tracked"])


def test_ema_is_validated_beside_the_model_and_used_by_test_and_export_unless_no_ema(ema_run, capsys):
    run, _ = ema_run
    history = run.parents[2] / "log" / run.parent.name / run.name / "history.jsonl"
    logged = [json.loads(line) for line in history.read_text().splitlines()]
    best = max(logged, key=lambda row: row["val_accuracy_ema"])
    assert all(row["val_loss"] != row["val_loss_ema"] for row in logged)
    for flags, suffix in (([], "_ema"), (["--no-ema"], "")):
        figures = test_script.run_test(test_script.parse_args(["--resume", str(run / "model_best.pth"), "--split",
                                                                "val", *flags]))
        for name, value in figures.items():
            assert value == pytest.approx(best[f"val_{name}{suffix}"], rel=1e-6, abs=1e-7), (flags, name)
    assert "EMA weights) on the val split" in capsys.readouterr().out
    ema, raw = restore(run / "model_best.pth", device="cpu"), restore(run / "model_best.pth", device="cpu", ema=False)
    assert (ema.weights, raw.weights) == ("EMA", "raw")
    x = torch.randn(4, 1, 8, 8)
    path = run.parent / "exported.pt2"
    assert export_script.main(["--resume", str(run / "model_best.pth"), "--format", "exported", "-o", str(path)]) == 0
    with torch.no_grad():
        exported = torch.export.load(path).module()(x)
        assert torch.allclose(exported, ema.model(x), atol=1e-6)
        assert not torch.allclose(exported, raw.model(x), atol=1e-3)


def test_ema_under_compile_keeps_plain_names(tmp_path):
    assert train.main(fast_args(tmp_path, "trainer.epochs=1", "trainer.compile={backend: eager}",
                                "trainer.ema={decay: 0.99, every_steps: 1}")) == 0
    state = load_checkpoint(only_run(tmp_path) / "checkpoint-latest.pth")
    assert state["ema"]["model"].keys() == state["model"].keys()
    assert "val_accuracy_ema" in state["history"][0]
    ema = ModelEMA(torch.nn.Linear(2, 2), 0.9, 1, 0, compile={"backend": "eager"})
    assert isinstance(ema.eval_model, torch._dynamo.eval_frame.OptimizedModule) and ema.module is not ema.eval_model


def test_ema_switches_are_checked():
    from utils.config import Config
    from utils.errors import ConfigError

    config = Config.load(REPO / "configs" / "config.yaml", ["trainer.ema=true"])
    assert config["trainer"]["ema"] == {"decay": 0.99998, "every_steps": 32, "warmup": 0}
    for override, message in (("trainer.ema={decay: 1.5}", "'trainer.ema.decay' must be a number in [0, 1)"),
                              ("trainer.ema={every_steps: 0}", "'trainer.ema.every_steps' must be a whole number >= 1"),
                              ("trainer.ema={decy: 0.9}", "unknown key 'trainer.ema.decy'. Did you mean 'trainer.ema.decay'?")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            Config.load(REPO / "configs" / "config.yaml", [override])


def test_an_average_never_updated_is_the_trained_weights_and_test_py_says_so(tmp_path, capsys):
    assert train.main(fast_args(tmp_path, "trainer.epochs=1", "trainer.ema={every_steps: 1000}")) == 0
    out = capsys.readouterr().out
    assert "trainer.ema.every_steps is 1000, but the run takes 20 optimizer steps" in out
    history = load_checkpoint(only_run(tmp_path) / "checkpoint-latest.pth")["history"][0]
    assert history["val_accuracy_ema"] == history["val_accuracy"] and history["val_loss_ema"] == history["val_loss"]
    assert test_script.main(["--resume", str(only_run(tmp_path))]) == 0
    assert "raw weights) on the test split" in capsys.readouterr().out
