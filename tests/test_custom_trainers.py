"""The example Trainer subclasses of trainer/custom.py: what their override points compute, and that a
subclass keeps exact resume after SIGKILL and runs under 2-process DDP (gloo)."""
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import train
from data_loader.factory import build_data_loader, training_data
from model.factory import build_criterion, build_metrics, build_model, build_optimizer
from trainer.checkpoint import load_checkpoint
from trainer.factory import build_trainer
from utils.config import Config
from utils.errors import ConfigError

from conftest import FAST, REPO, fast_args, run_script, torchrun
from test_exact_resume import ARGS, assert_same_state

REGULARIZED = ["trainer.type=RegularizedTrainer", "trainer.args={l1: 1.0e-4, l2: 1.0e-3}"]

# A user's project with dict batches and a model with two inputs: the digits image and its mean brightness.
DATA_LOADERS = '''
from torch.utils.data import Dataset

from data_loader.builtin import CsvImageDataLoader


class AsDict(Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        return {"image": image, "brightness": image.mean().reshape(1), "label": label}


class DigitsDictLoader(CsvImageDataLoader):
    def make_dataset(self, train, transform):
        return AsDict(super().make_dataset(train, transform))
'''
MODEL = '''
from torch import nn

from model.builtin.models import DigitsCNN


class TwoInputNet(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.cnn = DigitsCNN(num_classes, width=width)
        self.brightness = nn.Linear(1, num_classes)

    def forward(self, image, brightness):
        return self.cnn(image) + self.brightness(brightness)
'''
DICT_BATCHES = ["data_loader.type=DigitsDictLoader", "arch.type=TwoInputNet", "arch.args={width: 8}",
                "trainer.type=DictBatchTrainer", "trainer.args={inputs: [image, brightness], target: label}"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the template with the user's dict-batch loader and two-input model."""
    folder = tmp_path_factory.mktemp("user") / "project"
    assert run_script("new_project.py", str(folder)).returncode == 0
    (folder / "data_loader" / "data_loaders.py").write_text(textwrap.dedent(DATA_LOADERS).lstrip())
    (folder / "model" / "model.py").write_text(textwrap.dedent(MODEL).lstrip())
    return folder


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
    with pytest.raises(ConfigError, match="trainer.args.l2 must be a number >= 0"):
        small_trainer("trainer.type=RegularizedTrainer", "trainer.args={l2: -1}")
    with pytest.raises(ConfigError, match="wrong args for trainer type 'RegularizedTrainer'.*'l3'"):
        small_trainer("trainer.type=RegularizedTrainer", "trainer.args={l3: 1}")


@pytest.fixture
def user_code(monkeypatch):
    """The project copy's user code in this process too (one torch import less than a train.py process): its classes
    set into this repository's data_loader/data_loaders.py and model/model.py modules as if defined there."""
    import data_loader.data_loaders
    import model.model

    for module, text in ((data_loader.data_loaders, DATA_LOADERS), (model.model, MODEL)):
        namespace = {"__name__": module.__name__}
        exec(textwrap.dedent(text), namespace)
        for name, obj in namespace.items():
            if getattr(obj, "__module__", None) == module.__name__:
                monkeypatch.setattr(module, name, obj, raising=False)


def test_dict_batches_name_the_missing_key(user_code, tmp_path, capsys):
    args = ["-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={tmp_path}", *FAST, *DICT_BATCHES]
    assert train.main([*args, "trainer.args.target=digit"]) == 2 and not tmp_path.joinpath("models").exists()
    assert "DictBatchTrainer: the batch has no 'digit' (it holds image, brightness, label)" in capsys.readouterr().err


def killed_and_resumed(folder, tmp_path, *extra):
    """Train uninterrupted, then again with a SIGKILL at step 7 of the epoch's 20 and a resume; the two final
    checkpoints. The killed run is a process of its own, started in `folder` (this repository or a project copied
    from it); the uninterrupted run and the resume run in this process."""
    args = [*ARGS, "trainer.epochs=1", "lr_scheduler.args.T_max=1", *extra]
    assert train.main([*args, f"trainer.save_dir={tmp_path}", "--run-id", "ref"]) == 0
    killed = subprocess.run([sys.executable, str(folder / "tests" / "interrupt.py"), "--at", "step:7", "--send", "KILL",
                             "--", *args, f"trainer.save_dir={tmp_path}", "--run-id", "killed"], cwd=folder,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    runs = tmp_path / "models" / "digits_cnn"
    assert train.main(["--resume", str(runs / "killed")]) == 0
    return runs / "ref" / "checkpoint-latest.pth", runs / "killed" / "checkpoint-latest.pth"


def test_regularized_trainer_resumes_bit_identically_after_sigkill(tmp_path):
    assert_same_state(*killed_and_resumed(REPO, tmp_path, *REGULARIZED))


def test_dict_batch_trainer_resumes_bit_identically_after_sigkill(project, user_code, tmp_path):
    assert_same_state(*killed_and_resumed(project, tmp_path, *DICT_BATCHES))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
@pytest.mark.parametrize("subclass", ["regularized", "dict"])
def test_subclasses_train_under_two_process_ddp(project, tmp_path, subclass, capfd):
    extra = REGULARIZED if subclass == "regularized" else DICT_BATCHES
    result = torchrun(capfd, "-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={tmp_path}", *FAST,
                      "trainer.epochs=1", *extra, cwd=project)
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(next((tmp_path / "models" / "digits_cnn").iterdir()) / "checkpoint-latest.pth")
    assert state["world_size"] == 2 and state["config"]["trainer"]["type"] == extra[-2].split("=")[1]


def test_a_subclass_keeps_its_own_state_across_a_resume(tmp_path, monkeypatch):
    import trainer.custom
    from trainer.trainer import Trainer

    class CountingTrainer(Trainer):
        """Counts the training steps it ran, in its own checkpoint state."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.steps_seen = 0

        def training_step(self, model, batch):
            self.steps_seen += not self.checking  # the check before writing runs one step too
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
