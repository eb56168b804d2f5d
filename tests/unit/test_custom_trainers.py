"""The example Trainer subclasses of trainer/custom.py: what their override points compute, and that a
subclass keeps exact resume after SIGKILL and runs under 2-process DDP (gloo)."""

import pytest
import torch

import train
from data_loader.factory import build_data_loader, training_data
from model.factory import build_criterion, build_metrics, build_model, build_optimizer
from trainer.checkpoint import load_checkpoint
from trainer.factory import build_trainer
from utils.config import Config
from utils.errors import ConfigError

from helpers import DICT_BATCHES, FAST, REGULARIZED, REPO, fast_args


def small_trainer(*overrides: str):
    config = Config.load(REPO / "configs" / "config.yaml", [*FAST, *overrides])
    data = build_data_loader(config["data_loader"], config["seed"])
    model = build_model(config)
    return build_trainer(config, model=model, criterion=build_criterion(config), metrics=build_metrics(config),
                         optimizer=build_optimizer(config, model), device=torch.device("cpu"),
                         data=training_data(data, torch.device("cpu"), "CsvImageDataLoader"))


def test_the_weight_penalty_is_added_to_the_training_loss_only():
    trainer = small_trainer(*REGULARIZED)
    data, target = next(iter(trainer.train_loader))
    step = trainer.training_step(trainer.model, (data, target))
    plain = trainer.criterion(step.output, target)
    weights = [p for name, p in trainer.model.named_parameters() if name.endswith("weight") and p.dim() > 1]
    penalty = 1.0e-4 * sum(w.abs().sum() for w in weights) + 1.0e-3 * sum(w.pow(2).sum() for w in weights)
    assert torch.allclose(step.loss, plain + penalty) and penalty > 1e-3
    with torch.no_grad():
        val = trainer.validation_step(trainer.model, (data, target))
        assert torch.allclose(val.loss, trainer.criterion(val.output, target))
    with pytest.raises(ConfigError, match=r"^command line \(trainer\.args=\{l2: -1\}\): 'trainer\.args\.l2' must be a number >= 0"):
        small_trainer("trainer.type=RegularizedTrainer", "trainer.args={l2: -1}")
    with pytest.raises(ConfigError, match="wrong args for trainer type 'RegularizedTrainer'.*'l3'"):
        small_trainer("trainer.type=RegularizedTrainer", "trainer.args={l3: 1}")


def test_dict_batches_name_the_missing_key(user_code, tmp_path, capsys):
    args = ["-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={tmp_path}", *FAST, *DICT_BATCHES]
    assert train.main([*args, "trainer.args.target=digit"]) == 2 and not tmp_path.joinpath("models").exists()
    assert "DictBatchTrainer: the batch has no 'digit' (it holds image, brightness, label)" in capsys.readouterr().err


def test_a_subclass_keeps_its_own_state_across_a_resume(tmp_path, monkeypatch):
    import trainer.custom
    from trainer.trainer import Trainer

    class CountingTrainer(Trainer):
        """Counts the training steps it ran, in its own checkpoint state."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.steps_seen = 0

        def training_step(self, model, batch):
            self.steps_seen += 1  # the check before writing puts its step's count back
            return super().training_step(model, batch)

        def state_dict(self):
            return {**super().state_dict(), "steps_seen": self.steps_seen}

        def load_state_dict(self, state):
            super().load_state_dict(state)
            self.steps_seen = state["steps_seen"]

    CountingTrainer.__module__ = "trainer.custom"
    monkeypatch.setattr(trainer.custom, "CountingTrainer", CountingTrainer, raising=False)
    args = ["trainer.type=CountingTrainer", "trainer.epochs=1", "--run-id", "r"]
    assert train.main(fast_args(tmp_path, *args)) == 0
    run = tmp_path / "models" / "digits_cnn" / "r"
    first = load_checkpoint(run / "checkpoint-latest.pth")["steps_seen"]
    assert train.main(["--resume", str(run), "trainer.epochs=2"]) == 0
    assert load_checkpoint(run / "checkpoint-latest.pth")["steps_seen"] == 2 * first


@pytest.mark.needs("base")
def test_a_classic_train_epoch_override_is_refused_not_ignored(tmp_path, monkeypatch, capsys):
    import trainer.custom
    from base import BaseTrainer

    class ClassicTrainer(BaseTrainer):
        def _train_epoch(self, epoch):
            return {}

    ClassicTrainer.__module__ = "trainer.custom"
    monkeypatch.setattr(trainer.custom, "ClassicTrainer", ClassicTrainer, raising=False)
    assert train.main(fast_args(tmp_path, "trainer.type=ClassicTrainer")) == 2
    assert "overrides _train_epoch, the classic template's BaseTrainer method" in capsys.readouterr().err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.needs("predict.py", "export.py")
def test_predict_and_export_refuse_a_model_fed_another_way(user_code, tmp_path, capsys):
    import export
    import predict
    from model.model import TwoInputNet
    from tools.restore import Restored, check_one_input

    run = tmp_path / "models" / "digits_cnn" / "d"
    assert train.main(fast_args(tmp_path, *DICT_BATCHES, "trainer.epochs=1", "--run-id", "d")) == 0
    files = sorted(p.name for p in run.iterdir())
    image = str(REPO / "data" / "digits" / "images" / "0001.png")
    capsys.readouterr()
    assert predict.main(["--resume", str(run), image, "--output", str(tmp_path / "predictions.csv")]) == 2
    assert export.main(["--resume", str(run), "--format", "exported"]) == 2
    err = capsys.readouterr().err
    for script in ("predict.py", "export.py"):
        assert f"error: {script} gives the model one input tensor per batch, model(x), but its trainer " \
               "DictBatchTrainer overrides forward" in err, err
    assert "Traceback" not in err and sorted(p.name for p in run.iterdir()) == files
    assert not (tmp_path / "predictions.csv").exists()
    # The template's own Trainer, with a model that takes two inputs.
    config = Config.load(REPO / "configs" / "config.yaml", ["arch.type=TwoInputNet"])
    restored = Restored(run / "model_best.pth", {}, config, torch.device("cpu"), TwoInputNet(), "raw")
    with pytest.raises(ConfigError, match=r"but its model TwoInputNet takes 2 inputs \(image, brightness\)"):
        check_one_input(restored, "predict.py")

    class Masked(torch.nn.Module):  # a required keyword-only input is an input too
        def forward(self, x, *, mask):
            return x * mask

    restored.model = Masked()
    with pytest.raises(ConfigError, match=r"takes 2 inputs \(x, mask\)"):
        check_one_input(restored, "export.py")

    class Scaled(torch.nn.Module):  # inputs with defaults are not needed
        def forward(self, x, scale=2.0, *, shift=0.0):
            return x * scale + shift

    for model in (torch.nn.Sequential(torch.nn.Flatten()), Scaled()):
        restored.model = model
        assert check_one_input(restored, "predict.py") is None
