"""What the tests share: the repository's paths, fast settings for runs on the bundled digits, small copies of the
data, and the ways the tests run the entry points (in this process, as a process of their own, under torchrun)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

import train
from trainer.checkpoint import load_checkpoint
from trainer.confusion import ConfusionCollector
from trainer.trainer import Step

REPO = Path(__file__).resolve().parents[1]

TO_FLOAT_TEXT = "{type: ToDtype, args: {dtype: float32, scale: true}}"
NORMALIZE = "{type: Normalize, args: {mean: [0.3], std: [0.4]}}"
# The ordinary (host-side, per-sample) loader on the bundled digits, with per-sample RandomAffine: the tests
# of the trainer run on it, so that they keep exercising the general data path (workers, per-sample seeds,
# bad samples) while the default example uses the device-resident loader (tests/unit/test_speed_options.py).
ORDINARY_LOADER = (
    "data_loader={type: CsvImageDataLoader, args: {data_dir: data/digits, batch_size: 64, validation_split: 0.15, "
    f"num_classes: 10, cache: true, transform: [{{type: RandomAffine, args: {{degrees: 10, translate: [0.1, 0.1]}}}}, "
    f"{TO_FLOAT_TEXT}, {NORMALIZE}], eval_transform: [{TO_FLOAT_TEXT}, {NORMALIZE}]}}}}")

# A small network and light transforms keep a digits epoch well under a second on two CPU cores. The tests
# that read the monitored value expect val_accuracy (the default example monitors val_loss).
FAST = [
    "arch.args.width=8",
    "trainer.tensorboard=false",
    "trainer.epochs=2",
    "trainer.monitor=max val_accuracy",
    ORDINARY_LOADER,
    f"data_loader.args.transform=[{TO_FLOAT_TEXT}]",
    f"data_loader.args.eval_transform=[{TO_FLOAT_TEXT}]",
]


def fast_args(save_dir: Path, *extra: str) -> list[str]:
    return ["-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={save_dir}", *FAST, *extra]


def one_error(capsys: pytest.CaptureFixture) -> str:
    """The one-line error an entry point printed (no traceback), read from capsys."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def run_script(script: str, *args: str, cwd: Path = REPO, timeout: int = 300, env: dict[str, str] | None = None,
               script_dir: Path = REPO) -> subprocess.CompletedProcess:
    """Run one of the entry points (of this repository, or of a project copied from it) as a user would, in a
    fresh interpreter; `env` adds environment variables."""
    return subprocess.run([sys.executable, str(script_dir / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def torchrun(capfd: pytest.CaptureFixture, *args: str, script: str = "train.py", cwd: Path = REPO,
             timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 <script> <args>`, with torchrun's own launcher running in this process
    (one torch import less than its command line): it starts the two worker processes as the command does, and stops
    them after `timeout` seconds (with SIGALRM: an alarm set before is cancelled). What the launcher changes here
    (signal handlers, OMP_NUM_THREADS, the working folder) is put back afterwards. The workers' output is read back
    through `capfd`, after what it held before the call is dropped."""
    from torch.distributed import run as launcher
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    def too_long(signum, frame):
        raise TimeoutError(f"torchrun {script} ran over {timeout} s")

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGALRM)
    handlers, environ, folder = {s: signal.getsignal(s) for s in handled}, dict(os.environ), os.getcwd()
    capfd.readouterr()
    signal.signal(signal.SIGALRM, too_long)
    signal.alarm(timeout)
    try:
        os.chdir(cwd)
        launcher.main(["--standalone", "--nproc_per_node=2", str(cwd / script), *args])
        code = 0
    except ChildFailedError:
        code = 1
    finally:
        signal.alarm(0)
        os.chdir(folder)
        os.environ.clear()
        os.environ.update(environ)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["torchrun", script, *args], code, out, err)


def only_run(save_dir: Path) -> Path:
    """The single run folder (checkpoints) under save_dir."""
    runs = [p for p in (save_dir / "models").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


DIGITS = REPO / "data" / "digits"


TO_FLOAT = [{"type": "ToDtype", "args": {"dtype": "float32", "scale": True}}]


def small_copy(tmp_path, rows=20):
    """A copy of the first `rows` digits, to edit freely."""
    root = tmp_path / "digits"
    (root / "images").mkdir(parents=True)
    lines = (DIGITS / "labels.csv").read_text().splitlines()[: rows + 1]
    for line in lines[1:]:
        shutil.copy(DIGITS / line.split(",")[0], root / line.split(",")[0])
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def named_copy(tmp_path, rows=20):
    """A copy of the first `rows` digits whose labels.csv gives each label as a name (zero, one, ...)."""
    root = small_copy(tmp_path, rows)
    lines = (root / "labels.csv").read_text().splitlines()
    lines[1:] = [f"{file},{NAMES[int(label)]},{split}" for file, label, split in (x.split(",") for x in lines[1:])]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def image_classes(root, classes=("cat", "dog"), per_class=6, splits=("train", "test")):
    """`root/<split>/<class>/<n>.png`: tiny random 8x8 grey images, a folder per class."""
    generator = torch.Generator().manual_seed(0)
    for split in splits:
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                image = torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8, generator=generator)
                write_png(image, str(root / split / name / f"{i:03d}.png"))
    return root


def tiny_digits(root):
    """60 training and 20 test digits of the bundled set: an epoch takes a fraction of a second."""
    lines = (DIGITS / "labels.csv").read_text().splitlines()
    rows = [r for r in lines[1:] if r.endswith(",train")][:60] + [r for r in lines[1:] if r.endswith(",test")][:20]
    (root / "images").mkdir(parents=True)
    for row in rows:
        shutil.copy(DIGITS / row.split(",")[0], root / row.split(",")[0])
    (root / "labels.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    return root


def train_args(save_dir, data, *extra):
    return ["-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={save_dir}", *FAST, "trainer.epochs=1",
            f"data_loader.args.data_dir={data}", "data_loader.args.batch_size=20", "data_loader.args.validation_split=20",
            *extra]


QUICK = ["trainer.epochs=1", "trainer.tensorboard=false", "data_loader.args.num_workers=0",
         "data_loader.args.download=false", "data_loader.args.validation_split=32"]


def train_example(config: str, tmp_path, *overrides: str) -> int:
    return train.main(["-c", str(REPO / "configs" / config), f"trainer.save_dir={tmp_path / 'saved'}",
                       f"data_loader.args.data_dir={tmp_path / 'data'}", *QUICK, *overrides])


# Two epochs of 20 steps, with random augmentation (RandomAffine) and dropout, so the data order and
# every random draw have to be replayed exactly.
ARGS = ["-c", str(REPO / "configs" / "config.yaml"), ORDINARY_LOADER, "arch.args.width=8", "trainer.tensorboard=false",
        "trainer.epochs=2", "trainer.save_every_steps=4", "trainer.monitor=min val_loss",
        "data_loader.args.batch_size=64", "lr_scheduler.args.T_max=2"]


def interrupted(at: str, sig: str, *train_args: str, group: bool = False) -> subprocess.CompletedProcess:
    """train.py with `sig` sent at `at`; with `group`, to its whole process group (in a session of its own)."""
    return subprocess.run([sys.executable, str(REPO / "tests" / "interrupt.py"), "--at", at, "--send", sig,
                           *(["--group"] if group else []), "--", *train_args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, start_new_session=group)


def same(a, b) -> bool:
    """Equal values, tensors compared exactly, inside lists and dicts too (LBFGS keeps lists of tensors)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def assert_same_state(a_path, b_path):
    a, b = load_checkpoint(a_path), load_checkpoint(b_path)
    assert a["loop"] == b["loop"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert same(a["optimizer"], b["optimizer"]), "optimizer states differ"
    assert a["lr_scheduler"] == b["lr_scheduler"]
    assert a["monitor"] == b["monitor"]
    assert (a.get("ema") is None) == (b.get("ema") is None)
    for name, tensor in (a.get("ema") or {"model": {}})["model"].items():
        assert torch.equal(tensor, b["ema"]["model"][name]), f"ema {name}"


CLASSIC = {
    "name": "Mnist_LeNet",
    "n_gpu": 1,
    "arch": {"type": "MnistModel", "args": {}},
    "data_loader": {"type": "MnistDataLoader", "args": {"data_dir": "data/", "batch_size": 128, "shuffle": True,
                                                         "validation_split": 0.1, "num_workers": 2}},
    "optimizer": {"type": "Adam", "args": {"lr": 0.001, "weight_decay": 0, "amsgrad": True}},
    "loss": "nll_loss",
    "metrics": ["accuracy", "top_k_acc"],
    "lr_scheduler": {"type": "StepLR", "args": {"step_size": 50, "gamma": 0.1}},
    "trainer": {"epochs": 100, "save_dir": "saved/", "save_period": 1, "verbosity": 2,
                "monitor": "min val_loss", "early_stop": 10, "tensorboard": True},
}


def search_folder(save_dir):
    return save_dir / "models" / "digits_cnn_tune" / "s"


def a_search(tmp_path, **changes):
    """A search folder as tune.py writes it, one trial pending, with `changes` made to its record."""
    folder = search_folder(tmp_path / "saved")
    folder.mkdir(parents=True)
    trial = {"id": "trial-000", "params": {"optimizer.args.lr": 0.01}, "status": "pending", "best": None,
             "epochs": 0, "seconds": 0.0, "error": ""}
    state = {"format": 1, "name": "digits_cnn_tune/s", "command": "python tune.py", "mode": "grid", "n": None,
             "seed": 0, "space": {"optimizer.args.lr": "1e-3,1e-2"}, "train_args": ["-c", str(REPO / "configs" /
                                                                                            "config.yaml")],
             "monitor": "max val_accuracy", "save_dir": str(tmp_path / "saved"), "cwd": str(REPO), "trials": [trial]}
    for key, value in changes.items():
        if key in trial:
            trial[key] = value
        elif value is None:
            del trial[key.removeprefix("no_")]
        else:
            state[key] = value
    (folder / "search.json").write_text(json.dumps(state))
    return folder


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


# Six samples, three classes: true 0 0 0 1 1 2, predicted 0 0 1 1 2 2. Confusion matrix (rows true):
#   [2 1 0]   class 0: precision 2/2, recall 2/3, F1 4/5        accuracy 4/6
#   [0 1 1]   class 1: precision 1/2, recall 1/2, F1 1/2        macro:    P 2/3, R 13/18, F1 59/90
#   [0 0 1]   class 2: precision 1/2, recall 1/1, F1 2/3        weighted: P 3/4, R 4/6,   F1 61/90
TRUE = [0, 0, 0, 1, 1, 2]


PREDICTED = [0, 0, 1, 1, 2, 2]


CONFIDENCE = [0.9, 0.8, 0.7, 0.6, 0.95, 0.5]  # the mistakes: sample 4 (0.95) before sample 2 (0.7)


MATRIX = [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def logits(rows: range) -> torch.Tensor:
    """Outputs whose softmax gives each sample's confidence to its predicted class (the rest shared evenly)."""
    probabilities = torch.full((len(rows), 3), 0.0, dtype=torch.float64)
    for k, i in enumerate(rows):
        probabilities[k] = (1 - CONFIDENCE[i]) / 2
        probabilities[k, PREDICTED[i]] = CONFIDENCE[i]
    return probabilities.log().float()


def feed(collector: ConfusionCollector, rows: range, one_hot: bool = False) -> None:
    target = torch.tensor([TRUE[i] for i in rows])
    if one_hot:
        target = torch.nn.functional.one_hot(target, 3).float()
    images = torch.arange(len(rows) * 4, dtype=torch.float32).reshape(len(rows), 1, 2, 2)
    collector((images, target), Step(torch.tensor(0.0), logits(rows), target))


# A training step that steps the optimizers of the config's `optimizers` itself, each over its part of the model.
PER_PART_TRAINER = '''
from trainer.trainer import Trainer


class PerPartTrainer(Trainer):
    """Back-propagates the loss once, then steps every optimizer of the config's `optimizers`, in order."""

    def training_step(self, model, batch):
        step = super().training_step(model, batch)
        self.manual_backward(step.loss)
        for name in self.optimizers:
            self.step_optimizer(name)
        return step
'''
TWO_OPTIMIZERS = ["trainer.type=PerPartTrainer", "optimizer=null", "lr_scheduler=null",
                  "optimizers={features: {type: SGD, args: {lr: 0.05, momentum: 0.9}, modules: [features]}, "
                  "classifier: {type: Adam, args: {lr: 1.0e-3}, modules: [classifier], lr_scheduler: {type: StepLR, "
                  "args: {step_size: 5, gamma: 0.5}, interval: step}}}"]


def define_in_custom(monkeypatch: pytest.MonkeyPatch, source: str, folder: Path | None = None) -> None:
    """The classes of `source` defined in trainer/custom.py, as a user would write them there: in this process
    (for the runs the test makes here) and, with `folder`, appended to that project copy's file too."""
    import trainer.custom

    namespace = {"__name__": "trainer.custom"}
    exec(source, namespace)
    for name, obj in namespace.items():
        if isinstance(obj, type) and obj.__module__ == "trainer.custom":
            monkeypatch.setattr(trainer.custom, name, obj, raising=False)
    if folder is not None:
        custom = folder / "trainer" / "custom.py"
        custom.write_text(custom.read_text() + "\n" + source)
