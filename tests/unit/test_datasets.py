"""Data users bring: torchvision's MNIST, FashionMNIST and CIFAR-10 classes on small files written here
(`download: false`), class-folder trees, and a clear message (or, with skip_bad, a count) for bad data."""
import re
import shutil
import urllib.request
from urllib.error import URLError

import pytest
import torch
import torchvision
from torchvision.io import write_png

import test as test_script
import train
from data_loader.base import BaseDataLoader, split_indices
from data_loader.builtin import CsvImageDataLoader, ImageFolderDataLoader, TorchvisionDataLoader
from utils.config import Config
from utils.errors import DataError

from fake_data import patch_cifar10_sums, write_cifar10, write_mnist
from helpers import ORDINARY_LOADER, REPO, TO_FLOAT, image_classes, only_run, small_copy, train_example


@pytest.mark.parametrize("config, folder", [("mnist.yaml", "MNIST"), ("fashion_mnist.yaml", "FashionMNIST")])
def test_mnist_configs_train_and_test_through_torchvision_classes(tmp_path, capsys, config, folder):
    write_mnist(tmp_path / "data", folder)
    loader = TorchvisionDataLoader(folder, str(tmp_path / "data"), num_classes=10, transform=TO_FLOAT)
    assert type(loader.make_dataset(True, None)) is getattr(torchvision.datasets, folder)
    assert train_example(config, tmp_path, "arch.args.width=8") == 0
    run = only_run(tmp_path / "saved")
    assert test_script.main(["--resume", str(run / "model_best.pth")]) == 0
    assert "on the test split: 64 samples" in capsys.readouterr().out


def test_fashion_mnist_targets_are_one_hot():
    config = Config.load(REPO / "configs" / "fashion_mnist.yaml")
    transform = BaseDataLoader(
        target_transform=config["data_loader"]["args"]["target_transform"]).target_transform
    assert torch.equal(transform(3), torch.zeros(10).scatter_(0, torch.tensor(3), 1.0))


@pytest.mark.needs("configs/cifar10_resnet18.yaml")
def test_cifar10_resnet18_config_trains_through_torchvisions_cifar10(tmp_path, monkeypatch, capsys):
    patch_cifar10_sums(monkeypatch, write_cifar10(tmp_path / "data"))
    assert train_example("cifar10_resnet18.yaml", tmp_path, "arch.args.weights=null",
                         "data_loader.args.batch_size=32", "data_loader.args.pin_memory=false") == 0
    out = capsys.readouterr().out
    assert re.search(r"Data per process: 128 training, 32 validation samples", out), out
    assert (only_run(tmp_path / "saved") / "model_best.pth").is_file()


def test_missing_files_and_impossible_download_are_explained(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"CIFAR10 not found \(or incomplete\) under '.*cifar-10-batches-py' and "
                                        r"download is off .*data_batch_1 \.\.\. data_batch_5, test_batch"):
        TorchvisionDataLoader("CIFAR10", str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match=r"the download failed \(.*no route to host.*; is this machine offline\?\)\. "
                                        "Run once on a machine with internet access .* or place the files"):
        TorchvisionDataLoader("CIFAR10", str(tmp_path), download=True)
    with pytest.raises(ValueError, match="^dataset must be one of MNIST, FashionMNIST"):
        TorchvisionDataLoader("ImageNet", str(tmp_path))


def test_labels_outside_num_classes_name_the_sample(tmp_path):
    write_mnist(tmp_path, "MNIST")
    with pytest.raises(DataError, match=r"sample \d+ of MNIST has label [5-9], outside 0..4 .*num_classes: 5"):
        TorchvisionDataLoader("MNIST", str(tmp_path), num_classes=5)


def image_tree(root, splits=("train", "test"), classes=("0", "1", "2"), per_class=6):
    """`root/<split>/<class>/<n>.png` from the bundled digits."""
    lines = (REPO / "data" / "digits" / "labels.csv").read_text().splitlines()[1:]
    for split in splits:
        for label in classes:
            folder = root / split / label
            folder.mkdir(parents=True)
            files = [line.split(",")[0] for line in lines if line.split(",")[1] == label][:per_class]
            for file in files:
                shutil.copy(REPO / "data" / "digits" / file, folder / file.split("/")[-1])
    return root


def test_image_folder_tree_trains_with_labels_from_folder_names(tmp_path, capsys):
    root = image_tree(tmp_path / "tree")
    hidden = root / "train" / ".ipynb_checkpoints"  # a notebook's hidden folder is not a class
    hidden.mkdir()
    shutil.copy(next((root / "train" / "0").iterdir()), hidden / "copy.png")
    loader = ImageFolderDataLoader(str(root), batch_size=4, validation_split=0, transform=TO_FLOAT, num_classes=3)
    assert loader.classes == ["0", "1", "2"]
    images, labels = next(iter(loader.test_loader()))
    assert images.shape == (4, 1, 8, 8) and images.dtype == torch.float32
    dataset = loader.make_dataset(False, None)
    assert [label for _, label in dataset.samples] == [0] * 6 + [1] * 6 + [2] * 6
    args = f"{{data_dir: {root}, batch_size: 8, validation_split: 6, num_classes: 3, transform: {TO_FLOAT}}}"
    assert train.main(["-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={tmp_path / 'saved'}",
                       "arch.args.width=8", "arch.args.num_classes=3", "trainer.epochs=1", "trainer.tensorboard=false",
                       "data_loader.type=ImageFolderDataLoader", f"data_loader.args={args}"]) == 0
    assert "Data per process: 12 training, 6 validation samples" in capsys.readouterr().out


def test_image_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="Image folder .*nowhere' not found"):
        ImageFolderDataLoader(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="No images found in .*empty/train"):
        ImageFolderDataLoader(str(tmp_path / "empty"))
    root = image_tree(tmp_path / "tree")
    with pytest.raises(DataError, match=r"tree/train/train' not found.* data_dir '.*tree/train' looks like that folder "
                                        r"itself: set data_dir to '.*tree', the folder that holds train/\."):
        ImageFolderDataLoader(str(root / "train"), train_dir="train")
    shutil.rmtree(root / "test" / "2")
    with pytest.raises(DataError, match=r"class folders of .*tree/test' differ .*\(2\)"):
        ImageFolderDataLoader(str(root)).test_loader()
    with pytest.raises(DataError, match=r"label 2, outside 0..1 .*num_classes: 2"):
        ImageFolderDataLoader(str(root), num_classes=2)


def test_corrupt_image_stops_with_its_name_even_in_a_worker_process(tmp_path, capfd):
    root = small_copy(tmp_path, rows=60)
    (root / "images" / "0002.png").write_bytes(b"not a png")
    args = ["-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={tmp_path / 'saved'}", ORDINARY_LOADER,
            "arch.args.width=8", "trainer.epochs=2", "trainer.tensorboard=false", f"data_loader.args.data_dir={root}",
            "data_loader.args.num_workers=2", "data_loader.args.validation_split=0", "data_loader.args.batch_size=8",
            "trainer.monitor=off"]
    assert train.main(args) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: Cannot read image '") and "0002.png': Unsupported image file" in err[-1]
    assert not any("Traceback" in line for line in err)
    # With skip_bad the epoch goes on without it, and each epoch's line counts it.
    assert train.main(args + ["data_loader.args.skip_bad=true"]) == 0
    log = capfd.readouterr()  # fd-level: the worker processes' output too
    epochs = [line for line in log.out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and all(line.endswith("1 bad sample(s) skipped") for line in epochs), log.out
    # The reason, once in the run (logged by the worker process that met it), without the advice to set skip_bad.
    assert len(re.findall(r"Skipping bad samples \(skip_bad: true\); the first: Cannot read image '.*0002.png': "
                          r"Unsupported image file[^\n]*\. The others are skipped without a message of their own \(in "
                          r"training, each epoch's line counts them\)\.$", log.out,
                          re.M)) == 1, log.out
    assert "skip_bad: true to skip" not in log.out + log.err


def test_bad_label_row_is_skipped_with_a_warning_when_asked(tmp_path, caplog):
    root = small_copy(tmp_path)
    lines = (root / "labels.csv").read_text().splitlines()
    file, _, split = lines[3].split(",")
    lines[3] = f"{file},12,{split}"
    (root / "labels.csv").write_text("\n".join(lines))
    with pytest.raises(DataError, match="line 4: label 12 is outside 0..9"):
        CsvImageDataLoader(data_dir=str(root), num_classes=10)
    loader = CsvImageDataLoader(data_dir=str(root), num_classes=10, skip_bad=True, validation_split=0)
    assert len(loader.split()[0]) == 19
    assert "Skipped 1 row(s)" in caplog.text and "line 4: label 12" in caplog.text


def test_wrong_channel_count_names_the_image(tmp_path):
    root = small_copy(tmp_path)
    write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(root / "images" / "0005.png"))
    loader = CsvImageDataLoader(data_dir=str(root), channels=1, validation_split=0, shuffle=False, batch_size=20,
                                transform=TO_FLOAT)
    with pytest.raises(DataError, match=r"image '.*0005.png' \(line 7 of labels.csv\) has 3 channels, but "
                                        r"the data loader's channels is 1"):
        next(iter(loader.train_loader()))
    unchecked = CsvImageDataLoader(data_dir=str(root), validation_split=0, batch_size=20, transform=TO_FLOAT)
    with pytest.raises(DataError, match="samples of a batch do not fit together .*image_mode"):
        next(iter(unchecked.train_loader()))
    converted = CsvImageDataLoader(data_dir=str(root), image_mode="gray", channels=1, validation_split=0,
                                   batch_size=20, transform=TO_FLOAT)
    assert next(iter(converted.train_loader()))[0].shape == (20, 1, 8, 8)


def test_empty_split_is_named(tmp_path):
    root = small_copy(tmp_path)
    with pytest.raises(DataError, match="lists no rows for split 'test'"):
        CsvImageDataLoader(data_dir=str(root)).test_loader()


def test_listed_paths_written_from_the_project_folder_are_named_before_anything_runs(tmp_path, monkeypatch, capsys):
    root = small_copy(tmp_path, rows=60)
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join([lines[0], *(f"digits/{line}" for line in lines[1:])]) + "\n")
    monkeypatch.chdir(tmp_path)
    args = ["-c", str(REPO / "configs" / "config.yaml"), "trainer.save_dir=saved", ORDINARY_LOADER,
            "data_loader.args.data_dir=digits", "data_loader.args.validation_split=0"]
    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert "None of the first 5 files that 'digits/labels.csv' lists exist under data_dir 'digits' (the first would " \
           "be 'digits/digits/images/0000.png', while 'digits/images/0000.png' exists from the current folder). The " \
           "file column is relative to data_dir" in err, err
    assert not (tmp_path / "saved").exists()


def test_one_folder_per_class_holds_out_a_seeded_stratified_test_split(tmp_path, capsys):
    root = image_classes(tmp_path / "photos", ("cat", "dog", "fox"), per_class=10, splits=("",))
    loader = ImageFolderDataLoader(str(root), test_split=0.2, validation_split=3, batch_size=4, transform=TO_FLOAT)
    assert loader.classes == ["cat", "dog", "fox"]
    fit, val, test = loader.split()
    assert len(test) == 6 and len(val) == 3 and len(fit) == 21
    assert not (set(fit) & set(val) or set(fit) & set(test) or set(val) & set(test))
    labels = loader.make_dataset(True, None).targets
    assert sorted(labels[i] for i in test) == [0, 0, 1, 1, 2, 2]  # two of each class
    assert ImageFolderDataLoader(str(root), test_split=0.2, validation_split=3).split() == (fit, val, test)
    assert ImageFolderDataLoader(str(root), test_split=0.2, validation_split=3, seed=1).split()[2] != test
    assert ImageFolderDataLoader(str(root), test_split=0.2, validation_split=0).split()[2] == test  # held out first
    assert sum(len(labels) for _, labels in loader.test_loader()) == 6
    # Without test_split there is no test data, and the message says how to get some.
    with pytest.raises(DataError, match=r"There is no test folder '.*photos/test'\. Hold out test images from the "
                                        r"class folders of '.*photos' with the data loader's test_split"):
        ImageFolderDataLoader(str(root)).test_loader()
    # Trained, tested, and refused a test split the model was not trained with.
    args = f"{{data_dir: {root}, batch_size: 8, test_split: 0.2, validation_split: 3, transform: {TO_FLOAT}}}"
    assert train.main(["-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={tmp_path / 'saved'}",
                       "arch.args.width=8", "arch.args.num_classes=3", "trainer.epochs=1", "trainer.tensorboard=false",
                       "data_loader.type=ImageFolderDataLoader", f"data_loader.args={args}", "--run-id", "r"]) == 0
    out = capsys.readouterr().out
    assert "Held out 6 of the 30 training files for testing (test_split 0.2, stratified by class)." in out
    assert "Data per process: 21 training, 3 validation samples" in out
    run = tmp_path / "saved" / "models" / "digits_cnn" / "r"
    assert test_script.main(["--resume", str(run), "--no-report"]) == 0
    assert "on the test split: 6 samples" in capsys.readouterr().out
    for changed, now in (("data_loader.args.test_split=0.3", "0.3 and 0"), ("seed=1", "0.2 and 1")):
        assert test_script.main(["--resume", str(run), "--no-report", changed]) == 2
        assert f"sets data_loader.args.test_split and seed to {now}, but the checkpoint was trained with 0.2 and 0: " \
               "its test images would include images it was trained on" in capsys.readouterr().err
    # Nor may a resumed run train on the held-out images.
    assert train.main(["--resume", str(run), "--epochs", "2", "data_loader.args.test_split=0"]) == 2
    assert "sets data_loader.args.test_split and seed to 0 and None, but the checkpoint was trained with 0.2 and 0" \
        in capsys.readouterr().err


def test_a_held_out_share_is_stratified_by_class_with_largest_remainders():
    labels = [0] * 90 + [1] * 7 + [2] * 3
    kept, held = split_indices(100, 10, seed=0, labels=labels)
    assert sorted(labels[i] for i in held) == [0] * 9 + [1]  # 9, 0.7 and 0.3: the larger remainder gets the 10th
    assert len(kept) == 90 and not set(kept) & set(held)
    kept, held = split_indices(100, 0.1, seed=0)  # without labels: a plain seeded draw
    assert len(held) == 10


def test_a_class_named_train_is_a_class_and_multi_label_targets_are_held_out_unstratified(tmp_path):
    vehicles = image_classes(tmp_path / "vehicles", ("bus", "car", "train"), per_class=4, splits=("",))
    assert ImageFolderDataLoader(str(vehicles), test_split=3).classes == ["bus", "car", "train"]
    tree = image_classes(tmp_path / "tree", ("bus", "car"), per_class=4, splits=("train",))  # no test/ yet
    assert ImageFolderDataLoader(str(tree), test_split=2).classes == ["bus", "car"]

    class MultiLabel(torch.utils.data.TensorDataset):
        @property
        def targets(self):
            return self.tensors[1]

    class Loader(BaseDataLoader):
        def make_dataset(self, train, transform):
            return MultiLabel(torch.zeros(50, 2), torch.randint(0, 2, (50, 3)))

    fit, val, test = Loader(test_split=0.2, validation_split=5).split()
    assert len(test) == 10 and len(val) == 5 and len(fit) == 35
