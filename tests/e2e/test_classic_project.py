"""A project written for the classic victoresque/pytorch-template drops into a fresh copy of this template:
its model/ folder, data_loader/data_loaders.py and config.json are copied over unchanged, then it trains, is
evaluated offline by test.py, and resumes. The project's files are written here from the classic template's
documented API (BaseDataLoader(dataset, batch_size, shuffle, validation_split, num_workers), BaseModel,
metrics returning Python floats, a loader that takes `training`)."""
import json
import textwrap

import torch
import torchvision

from trainer.checkpoint import load_checkpoint

from fake_data import write_mnist
from helpers import run_script

MODEL = '''
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import resnet18

from base import BaseModel
from model.layers import Flatten


class MnistModel(BaseModel):
    """The classic template's model name, a different network: the stem comes from a pretrained ResNet-18."""

    def __init__(self, num_classes=10):
        super().__init__()
        resnet = resnet18(pretrained=True)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(64, 16, 3), nn.AdaptiveAvgPool2d(1), Flatten(), nn.Linear(16, num_classes))

    def forward(self, x):
        return F.log_softmax(self.head(self.stem(x.repeat(1, 3, 1, 1))), dim=1)
'''

LAYERS = '''
import torch.nn as nn


class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)
'''

LOSS = '''
import torch.nn.functional as F


def nll_loss(output, target):
    return F.nll_loss(output, target)
'''

METRIC = '''
import torch


def accuracy(output, target):
    with torch.no_grad():
        pred = torch.argmax(output, dim=1)
        assert pred.shape[0] == len(target)
        correct = torch.sum(pred == target).item()
    return correct / len(target)


def top_k_acc(output, target, k=3):
    with torch.no_grad():
        pred = torch.topk(output, k, dim=1)[1]
        correct = 0
        for i in range(k):
            correct += torch.sum(pred[:, i] == target).item()
    return correct / len(target)
'''

DATA_LOADERS = '''
from torchvision import datasets, transforms

from base import BaseDataLoader


class MnistDataLoader(BaseDataLoader):
    def __init__(self, data_dir, batch_size, shuffle=True, validation_split=0.0, num_workers=1, training=True):
        trsfm = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        self.data_dir = data_dir
        self.dataset = datasets.MNIST(self.data_dir, train=training, download=True, transform=trsfm)
        super().__init__(self.dataset, batch_size, shuffle, validation_split, num_workers)
'''

# The fork's own feature, ported as a Trainer subclass that reads the fork's top-level config key.
FORK_TRAINER = '''


class ForkTrainer(RegularizedTrainer):
    def __init__(self, *args, config, **kwargs):
        super().__init__(*args, config=config, l2=config["regularize"]["l2"], **kwargs)
'''

CONFIG = {
    "name": "Mnist_LeNet",
    "n_gpu": 1,
    "arch": {"type": "MnistModel", "args": {}, "init": {"type": "kaiming_normal", "args": {"nonlinearity": "relu"}}},
    "data_loader": {"type": "MnistDataLoader", "args": {"data_dir": "data/", "batch_size": 64, "shuffle": True,
                                                         "validation_split": 0.25, "num_workers": 2}},
    "optimizer": {"type": "Adam", "args": {"lr": 0.001, "weight_decay": 0, "amsgrad": True}},
    "loss": "nll_loss",
    "metrics": ["accuracy", "top_k_acc"],
    "lr_scheduler": {"type": "StepLR", "args": {"step_size": 50, "gamma": 0.1}},
    "trainer": {"type": "ForkTrainer", "epochs": 2, "save_dir": "saved/", "save_period": 1, "verbosity": 2,
                "monitor": "min val_loss", "early_stop": 10, "tensorboard": False},
    "regularize": {"l2": 1.0e-4},
}


def test_a_classic_project_drops_in_trains_tests_offline_and_resumes(tmp_path):
    project = tmp_path / "project"
    assert run_script("new_project.py", str(project)).returncode == 0
    for name, text in {"model/model.py": MODEL, "model/layers.py": LAYERS, "model/loss.py": LOSS,
                       "model/metric.py": METRIC, "data_loader/data_loaders.py": DATA_LOADERS}.items():
        (project / name).write_text(textwrap.dedent(text).lstrip())
    with open(project / "trainer" / "custom.py", "a") as f:
        f.write(FORK_TRAINER)
    (project / "config.json").write_text(json.dumps(CONFIG, indent=4))
    write_mnist(project / "data")
    # "Pretrained" ResNet-18 weights in a torch hub cache (this machine is offline), as a first download leaves them.
    torch_home = tmp_path / "torch"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")

    def run(script, *args, cache=torch_home):
        return run_script(script, *args, cwd=project, env={"TORCH_HOME": str(cache)},
                          script_dir=project)

    offline = run("train.py", "-c", "config.json", cache=tmp_path / "empty_torch_home")  # nothing cached yet
    assert offline.returncode == 2 and "Traceback" not in offline.stderr
    assert "A download of https://download.pytorch.org/models/resnet18-f37072fd.pth failed" in offline.stderr
    assert not (project / "saved").exists()

    trained = run("train.py", "-c", "config.json")
    assert trained.returncode == 0, trained.stderr
    out = trained.stdout
    assert "arch: using your MnistModel from model/model.py; it replaces the template's MnistModel" in out
    assert "data_loader: using your MnistDataLoader from data_loader/data_loaders.py" in out
    assert "metrics[0]: using your accuracy from model/metric.py" in out
    assert "Config keys not used by the template, kept for your code (config[key]): 'regularize'." in out
    assert "arch.init: left 1 loaded or frozen layer(s) as they were: stem.0." in out
    assert "arch.init: initialised 2 layer(s) with torch.nn.init.kaiming_normal_: head.0, head.3." in out
    assert "Data per process: 192 training, 64 validation samples" in out
    run_folder = next((project / "saved" / "models" / "Mnist_LeNet").iterdir())
    best = load_checkpoint(run_folder / "model_best.pth")
    assert best["config"]["regularize"] == {"l2": 1.0e-4}
    assert "stem.0.weight" in best["model"]

    # Evaluated offline with an empty hub cache: rebuilding the model must not download the ResNet weights.
    tested = run("test.py", "--resume", str(run_folder / "model_best.pth"), cache=tmp_path / "empty_torch_home")
    assert tested.returncode == 0, tested.stderr
    assert "on the test split: 64 samples" in tested.stdout  # built with training=False: MNIST's test files
    accuracy = float(next(line.split()[1] for line in tested.stdout.splitlines() if line.split()[:1] == ["accuracy"]))
    assert 0.0 <= accuracy <= 1.0

    resumed = run("train.py", "--resume", str(run_folder), "--epochs", "3", cache=tmp_path / "empty_torch_home")
    assert resumed.returncode == 0, resumed.stderr
    assert "epoch 3/3" in resumed.stdout
    assert load_checkpoint(run_folder / "checkpoint-latest.pth")["loop"]["epoch"] == 4
