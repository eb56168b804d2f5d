"""Class names end to end: label names in labels.csv, and every loader's names kept in checkpoints (its
`state_dict`), read back by `class_names`."""
import pytest
import torch
from torch.utils.data import TensorDataset

import test as test_script
import train
from data_loader.builtin import CsvImageDataLoader, ImageFolderDataLoader, TableDataLoader, TorchvisionDataLoader
from data_loader.datasets import CsvImageDataset
from trainer.checkpoint import class_names, load_checkpoint
from utils.errors import CheckpointError, DataError

from fake_data import write_mnist
from helpers import NAMES, REPO, TO_FLOAT, image_classes, named_copy, only_run, small_copy


def test_csv_label_names_are_numbered_in_sorted_order_and_logged(tmp_path, caplog):
    caplog.set_level("INFO")
    root = named_copy(tmp_path)
    loader = CsvImageDataLoader(data_dir=str(root), num_classes=10, validation_split=0)
    assert loader.classes == sorted(NAMES)
    assert "Classes (name: label): eight: 0, five: 1, four: 2, nine: 3, one: 4" in caplog.text
    dataset = loader.make_dataset(True, None)
    digits = CsvImageDataset(small_copy(tmp_path / "plain"))  # the same rows with integer labels
    assert [sorted(NAMES).index(NAMES[label]) for _, label, _ in digits.samples] == [s[1] for s in dataset.samples]
    assert loader.state_dict()["classes"] == sorted(NAMES) and digits.classes is None
    with pytest.raises(DataError, match=r"names 10 classes \(eight, five, .*zero\), but the data loader's num_classes "
                                        r"is 3\. Set num_classes .* to 10"):
        CsvImageDataLoader(data_dir=str(root), num_classes=3)


def test_mixed_names_and_numbers_name_the_odd_line(tmp_path, caplog):
    root = named_copy(tmp_path)
    lines = (root / "labels.csv").read_text().splitlines()
    lines[3] = lines[3].replace(",two,", ",2,")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 4: label '2' is a number, but the other labels \(19\) are class names; "
                                        "give every label as a class name, or every one as a number"):
        CsvImageDataset(root)
    loader = CsvImageDataLoader(data_dir=str(root), skip_bad=True, validation_split=0)  # the odd row is left out
    assert len(loader.split()[0]) == 19 and "Skipped 1 row(s)" in caplog.text
    root = small_copy(tmp_path / "numbers")
    lines = (root / "labels.csv").read_text().splitlines()
    lines[5] = lines[5].replace(",4,", ",four,")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 6: label 'four' is not a whole number, but the other labels \(19\) are "
                                        "whole numbers"):
        CsvImageDataset(root)


@pytest.mark.needs("base", "data_loader/device_loader.py", "data/diabetes")
def test_every_loader_keeps_its_class_names_in_its_state(tmp_path):
    from base import BaseDataLoader as ClassicLoader  # both left out of a minimal project
    from data_loader.device_loader import DeviceDataLoader

    tree = image_classes(tmp_path / "tree")
    assert ImageFolderDataLoader(str(tree)).state_dict()["classes"] == ["cat", "dog"]
    write_mnist(tmp_path / "mnist", "MNIST", train=32, test=8)
    mnist = TorchvisionDataLoader("MNIST", str(tmp_path / "mnist"))
    assert mnist.state_dict()["classes"][:2] == ["0 - zero", "1 - one"]
    assert CsvImageDataLoader().state_dict()["classes"] is None  # the bundled digits: numbers
    table = TableDataLoader().state_dict()
    assert table["classes"] is None and table["features"][0] == "age"
    named = {"type": "CsvImageDataLoader", "args": {"data_dir": str(named_copy(tmp_path)), "transform": TO_FLOAT}}
    device_loader = DeviceDataLoader(named)
    assert device_loader.state_dict()["classes"] == sorted(NAMES)  # passed through from its source

    class Named(TensorDataset):
        classes = ["no", "yes"]

    classic = ClassicLoader(Named(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])), 2, False, 0.0, 0)
    assert classic.state_dict() == {"classes": ["no", "yes"]}
    with pytest.raises(CheckpointError, match="trained on 2 classes, but this data names other ones"):
        device_loader.load_state_dict({"classes": ["no", "yes"]})  # reaches the source


def test_loaded_names_are_kept_or_other_classes_refused(tmp_path):
    numbers = CsvImageDataLoader()
    numbers.load_state_dict({"classes": NAMES})  # data labelled with numbers takes the model's names
    assert numbers.state_dict()["classes"] == NAMES
    tree = ImageFolderDataLoader(str(image_classes(tmp_path / "tree", ("cat", "dog", "fox"))))
    tree.load_state_dict({"classes": ["cat", "dog", "fox"]})
    with pytest.raises(CheckpointError, match=r"this data names other ones \(the model's classes bird are missing here "
                                              r"and fox are new\).*Use data with the training run's classes"):
        tree.load_state_dict({"classes": ["bird", "cat", "dog"]})
    with pytest.raises(CheckpointError, match=r"\(in another order\)"):
        tree.load_state_dict({"classes": ["dog", "cat", "fox"]})
    assert class_names({"data_loader": {"classes": ["cat", "dog"]}}) == ["cat", "dog"]
    assert class_names({"data_loader": {"classes": None}}) is None and class_names({"data_loader": {}}) is None


def test_class_folder_names_reach_the_checkpoint_and_test_py(tmp_path, capsys):
    tree = image_classes(tmp_path / "tree")
    args = f"{{data_dir: {tree}, batch_size: 4, validation_split: 4, num_classes: 2, transform: {TO_FLOAT}}}"
    assert train.main(["-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={tmp_path / 'saved'}",
                       "arch.args.width=8", "arch.args.num_classes=2", "trainer.epochs=1", "trainer.tensorboard=false",
                       "data_loader.type=ImageFolderDataLoader", f"data_loader.args={args}"]) == 0
    best = only_run(tmp_path / "saved") / "model_best.pth"
    assert class_names(load_checkpoint(best)) == ["cat", "dog"]
    assert test_script.main(["--resume", str(best)]) == 0
    assert "on the test split: 12 samples" in capsys.readouterr().out
