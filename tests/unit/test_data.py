import random

import pytest
import torch

import test as test_script
import train
from data_loader.builtin import CsvImageDataLoader
from data_loader.datasets import CsvImageDataset
from data_loader.factory import build_data_loader
from data_loader.sampling import ResumableSampler, SeededDataset
from data_loader.transforms import OneHot, build_transforms
from trainer.checkpoint import load_checkpoint
from utils.config import Config
from utils.errors import ConfigError, DataError

from helpers import DIGITS, FAST, REPO, TO_FLOAT, fast_args, only_run, small_copy


def test_bundled_digits_are_real_and_split():
    train = CsvImageDataset(DIGITS, split="train")
    test = CsvImageDataset(DIGITS, split="test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    image, label = train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.uint8 and image.max() > 200
    assert sorted({label for _, label, _ in test.samples}) == list(range(10))
    assert not {s[0] for s in train.samples} & {s[0] for s in test.samples}
    size = sum(p.stat().st_size for p in DIGITS.rglob("*") if p.is_file())
    assert size < 1_000_000


def test_transform_and_target_transform_are_applied():
    dataset = CsvImageDataset(DIGITS, split="test", transform=build_transforms(TO_FLOAT, "t"),
                              target_transform=OneHot(10), cache=True)
    image, target = dataset[3]
    assert image.dtype == torch.float32 and 0.0 <= image.min() and image.max() <= 1.0
    assert target.shape == (10,) and target.sum() == 1 and target.argmax() == dataset.samples[3][1]
    assert torch.equal(dataset[3][0], image)


def test_validation_split_is_seeded_disjoint_and_reproducible():
    a = CsvImageDataLoader(data_dir=str(DIGITS), validation_split=0.2, seed=1, transform=TO_FLOAT)
    b = CsvImageDataLoader(data_dir=str(DIGITS), validation_split=0.2, seed=1, transform=TO_FLOAT)
    c = CsvImageDataLoader(data_dir=str(DIGITS), validation_split=0.2, seed=2, transform=TO_FLOAT)
    train, val, test = a.split()
    assert a.split() == b.split() and a.split() != c.split()
    assert not set(train) & set(val) and len(train) + len(val) == 1437 and len(val) == round(1437 * 0.2)
    assert test == []  # the data's own test rows: no test_split
    assert len(a.val_loader().sampler) == len(val)
    assert len(CsvImageDataLoader(data_dir=str(DIGITS), validation_split=100).split()[1]) == 100


def test_bad_validation_split_is_refused():
    with pytest.raises(ValueError, match="^validation_split must be a fraction"):  # the config layer adds the key
        CsvImageDataLoader(data_dir=str(DIGITS), validation_split=1.0).split()


def test_missing_folder_csv_and_columns_are_clear(tmp_path):
    with pytest.raises(DataError, match="Data folder .*nowhere.* not found .*data_dir"):
        CsvImageDataset(tmp_path / "nowhere")
    with pytest.raises(DataError, match="labels.csv' not found"):
        CsvImageDataset(tmp_path)
    (tmp_path / "labels.csv").write_text("path,class\na.png,1\n")
    with pytest.raises(DataError, match="lacks the column"):
        CsvImageDataset(tmp_path)


def test_corrupt_image_names_the_file(tmp_path):
    root = small_copy(tmp_path)
    (root / "images" / "0002.png").write_bytes(b"not a png")
    dataset = CsvImageDataset(root, split="train")
    with pytest.raises(DataError, match=r"Cannot read image .*0002\.png"):
        [dataset[i] for i in range(len(dataset))]


def test_bad_labels_name_the_line(tmp_path):
    root = small_copy(tmp_path)
    lines = (root / "labels.csv").read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 2)[0] + ",x,train"
    (root / "labels.csv").write_text("\n".join(lines))
    with pytest.raises(DataError, match="line 4: label 'x'"):
        CsvImageDataset(root)
    lines[3] = lines[3].replace(",x,", ",12,")
    (root / "labels.csv").write_text("\n".join(lines))
    with pytest.raises(DataError, match="line 4: label 12 is outside 0..9"):
        CsvImageDataset(root, num_classes=10)


def test_transform_errors_name_the_step():
    with pytest.raises(ValueError, match=r"^transform\[1\]\.type: unknown transform type 'RandomFlipp'.*RandomVerticalFlip"):
        build_transforms(TO_FLOAT + [{"type": "RandomFlipp"}], "transform")
    with pytest.raises(ValueError, match=r"^transform\[0\]\.args\.dtype must name a torch dtype"):
        build_transforms([{"type": "ToDtype", "args": {"dtype": "float99"}}], "transform")
    # Through the config, the message names the whole key and who set it.
    config = Config.load(REPO / "configs" / "config.yaml", [*FAST, "data_loader.args.transform=[{type: RandomFlipp}]"])
    with pytest.raises(ConfigError, match=r"^command line \(data_loader\.args\.transform=\[\{type: RandomFlipp\}\]\): "
                                          r"'data_loader\.args\.transform\[0\]\.type': unknown transform type"):
        build_data_loader(config["data_loader"], 0, source=config.source)


def test_sampler_resumes_the_same_order_mid_epoch():
    sampler = ResumableSampler(range(50), shuffle=True, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    assert sorted(full) == list(range(50))
    sampler.set_epoch(3)
    assert list(sampler) != full
    sampler.set_epoch(2)
    sampler.skip(17)
    assert list(sampler) == full[17:]
    assert len(sampler) == 50


def test_per_sample_seeds_make_augmentation_independent_of_order():
    sampler = ResumableSampler(range(10), shuffle=True, seed=0, with_seeds=True)
    sampler.set_epoch(1)
    items = list(sampler)
    dataset = SeededDataset(torch.utils.data.TensorDataset(torch.arange(10)))

    class Noisy(torch.utils.data.Dataset):
        def __getitem__(self, i):
            return torch.rand(1)

        def __len__(self):
            return 10

    noisy = SeededDataset(Noisy())
    forward = [noisy[item] for item in items]
    backward = [noisy[item] for item in reversed(items)][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    assert len({float(x) for x in forward}) == 10
    assert dataset[items[0]][0] == items[0][0]


def test_per_sample_seeds_cover_numpy_too():
    # A dataset drawing its augmentation from NumPy, loaded by worker processes, replays it after a resume.
    import numpy as np

    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return np.random.randn(), random.random(), torch.rand(1).item()

    seeded = SeededDataset(Noisy())
    first = seeded[(2, 12345)]
    np.random.seed(0), random.seed(0), torch.manual_seed(0)  # whatever state the worker had before
    assert seeded[(2, 12345)] == first and seeded[(2, 54321)] != first


def test_distributed_shares_cover_every_sample_and_have_equal_length():
    for n, replicas in [(3, 8), (10, 4), (8, 2)]:
        shares = [list(ResumableSampler(range(n), seed=1, num_replicas=replicas, rank=r)) for r in range(replicas)]
        assert all(len(share) == -(-n // replicas) for share in shares)
        assert set(sum(shares, [])) == set(range(n))
        unpadded = [list(ResumableSampler(range(n), seed=1, num_replicas=replicas, rank=r, pad=False))
                    for r in range(replicas)]
        assert sorted(sum(unpadded, [])) == list(range(n))


def test_a_csv_with_excels_byte_order_mark_is_read(tmp_path):
    root = small_copy(tmp_path)
    (root / "labels.csv").write_bytes(b"\xef\xbb\xbf" + (root / "labels.csv").read_bytes())
    assert len(CsvImageDataset(root, split="train")) == 20


def test_a_header_with_trailing_commas_is_read_and_a_column_named_twice_is_refused(tmp_path):
    root = small_copy(tmp_path)
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join([lines[0] + ",,", *(line + ",," for line in lines[1:])]) + "\n")
    assert len(CsvImageDataset(root, split="train")) == 20  # Excel writes empty columns so
    (root / "labels.csv").write_text("\n".join([lines[0] + ",label", *(line + ",7" for line in lines[1:])]) + "\n")
    with pytest.raises(DataError, match="the column 'label' appears twice in the header"):
        CsvImageDataset(root, split="train")
    (root / "labels.csv").write_text("\n".join([lines[0], lines[1].rsplit(",", 2)[0] + ",1_0,train"]) + "\n")
    assert CsvImageDataset(root, split="train").classes == ["1_0"]  # a name, not the number 10


def test_split_values_are_read_without_case_or_spaces_and_others_name_their_line(tmp_path):
    root = small_copy(tmp_path)
    lines = (root / "labels.csv").read_text().splitlines()
    lines[1], lines[2], lines[3] = lines[1][:-5] + "Train", lines[2][:-5] + "train ", lines[3][:-5] + " TEST"
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    assert len(CsvImageDataset(root, split="train")) == 19 and len(CsvImageDataset(root, split="test")) == 1
    for value, message in [("val", r"line 5: the split is 'val', not train or test"), ("", r"line 5: the split is "
                                                                                             r"empty")]:
        lines[4] = lines[4].rsplit(",", 1)[0] + "," + value
        (root / "labels.csv").write_text("\n".join(lines) + "\n")
        with pytest.raises(DataError, match=message + r"\. Fix the row or remove it"):
            CsvImageDataset(root, split="train")
    lines[4] = lines[4].rsplit(",", 1)[0]  # no split column value at all
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 5: the split is empty"):
        CsvImageDataset(root, split="test")
    assert len(CsvImageDataset(root, split="train", skip_bad=True)) == 18


def test_a_latin1_csv_names_the_file_and_the_encoding(tmp_path):
    root = small_copy(tmp_path)
    lines = (root / "labels.csv").read_text().splitlines()
    lines[2] = lines[2].replace("images/", "images/é")
    (root / "labels.csv").write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(DataError, match=r"labels\.csv' is not UTF-8 text: line 3 holds the byte 0xe9, as in a file "
                                        r"saved as Latin-1"):
        CsvImageDataLoader(data_dir=str(root))


def test_skip_bad_with_every_row_bad_says_so_and_why(tmp_path):
    root = small_copy(tmp_path, rows=5)
    lines = (root / "labels.csv").read_text().splitlines()
    rows = [row.split(",")[0] + ",12,train" for row in lines[1:]]
    (root / "labels.csv").write_text("\n".join([lines[0], *rows]))
    with pytest.raises(DataError, match=r"lists no usable rows for split 'train': all 5 rows were skipped as bad "
                                        r"\(skip_bad: true\)\. The first: .*line 2: label 12 is outside 0\.\.9"):
        CsvImageDataset(root, split="train", num_classes=10, skip_bad=True)


class OwnValidation(CsvImageDataLoader):
    """The digits with validation data of their own (the test files here), and their class count as a model arg."""

    def make_val_dataset(self, transform):
        return self.make_dataset(False, transform)

    def model_args(self):
        return {"num_classes": 10, "not_a_model_arg": 1}


def test_a_loader_gives_its_own_validation_data_and_the_model_args_it_learned(monkeypatch, save_dir, capsys):
    import data_loader.data_loaders

    OwnValidation.__module__ = "data_loader.data_loaders"
    monkeypatch.setattr(data_loader.data_loaders, "OwnValidation", OwnValidation, raising=False)
    args = fast_args(save_dir, "data_loader.type=OwnValidation", "arch.args={width: 8}", "trainer.epochs=1")
    assert train.main(args) == 0
    out = capsys.readouterr().out
    test_files = sum(1 for line in (REPO / "data" / "digits" / "labels.csv").read_text().splitlines()
                     if line.endswith(",test"))
    train_files = sum(1 for line in (REPO / "data" / "digits" / "labels.csv").read_text().splitlines()
                      if line.endswith(",train"))
    assert f"Data per process: {train_files} training, {test_files} validation samples" in out
    assert "arch.args.num_classes: 10, from the data loader." in out
    checkpoint = only_run(save_dir) / "checkpoint-latest.pth"
    assert load_checkpoint(checkpoint)["config"]["arch"]["args"] == {"width": 8, "num_classes": 10}
    assert test_script.main(["--resume", str(checkpoint), "--split", "val"]) == 0
    assert f"on the val split: {test_files} samples" in capsys.readouterr().out


def test_resuming_with_c_keeps_the_model_args_the_loader_filled(monkeypatch, save_dir):
    import data_loader.data_loaders

    OwnValidation.__module__ = "data_loader.data_loaders"
    monkeypatch.setattr(data_loader.data_loaders, "OwnValidation", OwnValidation, raising=False)
    args = fast_args(save_dir, "data_loader.type=OwnValidation", "arch.args={width: 8}", "trainer.epochs=1",
                     "--run-id", "r")
    assert train.main(args) == 0
    run = only_run(save_dir)
    assert train.main(["--resume", str(run), *args[:-2], "trainer.epochs=2"]) == 0  # -c gives no num_classes
    assert load_checkpoint(run / "checkpoint-latest.pth")["loop"]["epoch"] == 3


@pytest.mark.needs("data_loader/device_loader.py")
def test_the_device_loader_uses_its_sources_own_validation_data(monkeypatch):
    import data_loader.data_loaders
    from data_loader.device_loader import DeviceDataLoader

    OwnValidation.__module__ = "data_loader.data_loaders"
    monkeypatch.setattr(data_loader.data_loaders, "OwnValidation", OwnValidation, raising=False)
    loader = DeviceDataLoader(source={"type": "OwnValidation", "args": {"data_dir": str(DIGITS)}})
    val = loader.val_loader(torch.device("cpu"))
    test_files = sum(1 for line in (DIGITS / "labels.csv").read_text().splitlines() if line.endswith(",test"))
    assert val is not None and sum(len(batch[1]) for batch in val) == test_files
