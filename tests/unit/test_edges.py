"""Hard edges of the entry points (issue 12): every path the template writes stays under its own folders, folders it
cannot write are reported, and checkpoints that are damaged or are not checkpoints get the right diagnosis."""
import contextlib
import os
import shutil
import subprocess

import pytest
import torch

import new_project
import test as test_script
import train
from data_loader.checks import CheckedDataset
from data_loader.datasets import CsvImageDataset
from data_loader.transforms import build_transforms
from model.builtin import metrics
from model.builtin.metrics import top_k_acc
from trainer.checkpoint import load_checkpoint
from utils import run as run_module
from utils.errors import DataError
from utils.run import run_of_checkpoint

from helpers import FAST, REPO, one_error, tiny_digits, train_args


@contextlib.contextmanager
def read_only(folder):
    """`folder` made unwritable: by its permissions, or for root (whom permissions do not stop) by the immutable
    attribute; skipped where neither works."""
    folder.chmod(0o555)
    immutable = False
    try:
        with contextlib.suppress(OSError):
            (folder / ".probe").touch()
            (folder / ".probe").unlink()
            immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
            if not immutable:
                pytest.skip("cannot make a folder read-only here")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


# ---------------------------------------------------------------------- paths and permissions
def test_a_checkpoint_outside_the_run_layout_resumes_with_its_log_beside_it(run_copy, tmp_path, capsys):
    elsewhere = tmp_path / "downloads" / "ckpt.pth"
    elsewhere.parent.mkdir()
    shutil.copy(run_copy / "checkpoint-latest.pth", elsewhere)
    assert train.main(["--resume", str(elsewhere), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert f"is not in a <save_dir>/models/digits_cnn/<run_id> folder: the run goes on in '{elsewhere.parent}'" in out
    assert {"checkpoint-latest.pth", "config.yaml", "train.log", "history.jsonl"} <= set(os.listdir(elsewhere.parent))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads", "saved"]


def test_a_checkpoint_at_the_top_of_the_file_system_keeps_its_log_beside_it(monkeypatch):
    monkeypatch.setattr(run_module, "_make_writable", lambda folder, fix: None)
    paths = run_of_checkpoint(run_module.Path("/ckpt.pth"), "digits_cnn")
    assert paths.models == paths.log == run_module.Path("/")


def test_a_tampered_checkpoint_name_cannot_choose_where_logs_go(run_copy, tmp_path, capsys):
    path = run_copy / "checkpoint-latest.pth"
    state = torch.load(path, weights_only=True)
    state["config"]["name"] = "../../../../evil"
    torch.save(state, path)
    before = sorted(tmp_path.rglob("*"))
    assert train.main(["--resume", str(path)]) == 2
    assert "'name' must be a folder name" in one_error(capsys)
    assert train.main(["--resume", str(path), "-c", str(REPO / "configs" / "config.yaml"), "arch.args.width=8",
                       "trainer.monitor=max val_accuracy"]) == 2
    assert "The experiment name saved in" in one_error(capsys) and sorted(tmp_path.rglob("*")) == before


def test_a_resume_refuses_a_new_run_id_or_name_instead_of_ignoring_them(run_copy, capsys):
    files = sorted(run_copy.rglob("*"))
    assert train.main(["--resume", str(run_copy), "--run-id", "other"]) == 2
    assert "--run-id names the folder of a new run, but --resume continues a run in its own folder" in one_error(capsys)
    assert train.main(["--resume", str(run_copy), "--name", "other"]) == 2
    assert "command line (--name other): a resumed run keeps its name ('digits_cnn')" in one_error(capsys)
    assert sorted(run_copy.rglob("*")) == files
    # A -c file naming another experiment (a run started with --name, a tune.py trial) resumes under the run's name.
    (run_copy.parent / "renamed.yaml").write_text((REPO / "configs" / "config.yaml").read_text().replace(
        "name: digits_cnn", "name: other_experiment"))
    assert train.main(["--resume", str(run_copy), "-c", str(run_copy.parent / "renamed.yaml"), *FAST[:1],
                       "trainer.monitor=max val_accuracy", "--epochs", "2"]) == 0
    assert "Resuming r from" in capsys.readouterr().out and not list(run_copy.parents[2].glob("*/other_experiment"))


def test_a_resumed_run_prints_its_folders_relative_to_the_working_directory(run_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert train.main(["--resume", "saved/models/digits_cnn/r", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "checkpoints in saved/models/digits_cnn/r, logs in saved/log/digits_cnn/r" in out


def test_a_read_only_save_dir_is_reported_before_anything_is_written(tmp_path, capsys):
    data = tiny_digits(tmp_path / "digits")
    (tmp_path / "saved").mkdir()
    with read_only(tmp_path / "saved"):
        assert train.main(train_args(tmp_path / "saved", data)) == 2
    assert f"Cannot write in '{tmp_path / 'saved' / 'models' / 'digits_cnn'}'" in one_error(capsys)
    assert list((tmp_path / "saved").iterdir()) == []


def test_a_read_only_run_folder_is_reported_on_resume(run_copy, capsys):
    before = sorted(os.listdir(run_copy))
    with read_only(run_copy):
        assert train.main(["--resume", str(run_copy), "--epochs", "2"]) == 2
    assert f"Cannot write in '{run_copy}'" in one_error(capsys)
    assert sorted(os.listdir(run_copy)) == before


# ---------------------------------------------------------------------- checkpoints
def test_test_py_falls_back_from_a_damaged_model_best_and_says_so(run_copy, capsys):
    best = run_copy / "model_best.pth"
    best.write_bytes(best.read_bytes()[:2000])
    assert test_script.main(["--resume", str(run_copy)]) == 0
    out = capsys.readouterr().out
    assert "model_best.pth' is truncated or corrupt" in out
    assert f"Using 'checkpoint-latest.pth', the newest intact checkpoint in '{run_copy}'." in out
    assert f"{run_copy / 'checkpoint-latest.pth'} (epoch 1, step 2, raw weights) on the test split: 20 samples" in out


def test_resume_of_a_file_that_is_not_a_checkpoint_says_what_it_is(run_copy, capsys):
    assert train.main(["--resume", str(run_copy / "config.yaml")]) == 2
    err = one_error(capsys)
    assert "config.yaml' is a text file (it begins 'name: digits_cnn'), not a training checkpoint" in err
    assert "weights_only=False" not in err


# ---------------------------------------------------------------------- the first ten minutes
def test_top_k_acc_with_k_at_or_above_the_classes_warns_once(caplog, monkeypatch):
    monkeypatch.setattr(metrics, "_warned_top_k", set(), raising=False)
    output, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    top_k_acc(output, target, k=2)  # k below the classes: no warning
    assert "top_k_acc" not in caplog.text
    assert top_k_acc(output, target, k=3) == 1.0 and top_k_acc(output, target, k=3) == 1.0
    assert caplog.text.count("top_k_acc: k=3, but the model scores 3 classes") == 1
    assert "metric is always 1.0. Give it a smaller k (metrics: [{type: top_k_acc, args: {k: 2}}])" in caplog.text
    for k in (0, -1, 1.5, True):  # k = 0 would always give 0.0
        with pytest.raises(ValueError, match=r"top_k_acc's k must be a whole number >= 1"):
            top_k_acc(output, target, k=k)


def test_one_channel_is_singular():
    gray = CheckedDataset([(torch.zeros(1, 8, 8), 0)], channels=3)
    with pytest.raises(DataError, match=r"has 1 channel, but the data loader's channels is 3"):
        gray[0]


def test_new_project_names_the_environment_setup_before_training(tmp_path, capsys):
    assert new_project.main([str(tmp_path / "mine")]) == 0
    steps = capsys.readouterr().out.splitlines()[1:]
    assert [s.split()[0:3] for s in steps] == [["cd", str(tmp_path / "mine")], ["python", "-m", "venv"],
                                               ["source", ".venv/bin/activate", "(Windows:"],
                                               ["pip", "install", "-r"], ["python", "train.py", "-c"]]


def test_a_corrupt_image_found_in_the_first_epoch_removes_the_new_run(tmp_path, capsys):
    data = tiny_digits(tmp_path / "digits")
    # The last validation image: the check before writing reads the first batch of each split only, so training
    # starts and writes.
    from data_loader.builtin import CsvImageDataLoader

    loader = CsvImageDataLoader(data_dir=str(data), validation_split=20, seed=0)
    dataset = loader.make_dataset(True, None)
    victim = data / dataset.samples[loader.split()[1][-1]][0]
    victim.write_bytes(b"not a png")
    assert train.main(train_args(tmp_path / "saved", data, "data_loader.args.batch_size=10")) == 2
    err = capsys.readouterr().err
    assert f"Cannot read image '{victim}'" in err
    assert not list((tmp_path / "saved" / "models" / "digits_cnn").iterdir())
    assert not list((tmp_path / "saved" / "log" / "digits_cnn").iterdir())


@pytest.mark.parametrize("override, key", [("--lr", "optimizer.args"), ("lr_scheduler.args.T_max=99", "lr_scheduler.args"),
                                           ("trainer.monitor=min val_loss", "trainer.monitor")])
def test_resuming_with_another_optimizer_scheduler_or_monitor_setting_is_refused(run_copy, capsys, override, key):
    extra = ["--lr", "0.5"] if override == "--lr" else [override]
    assert train.main(["--resume", str(run_copy), *extra]) == 2
    assert f"sets {key}" in one_error(capsys)


def test_a_training_loader_that_cannot_resume_is_refused_before_writing(tmp_path, monkeypatch, capsys):
    import data_loader.data_loaders

    class PlainLoader:
        """Builds a torch DataLoader itself, with a shuffling sampler that cannot resume mid-epoch."""

        def __init__(self, data_dir):
            self.data = CsvImageDataset(data_dir, split="train", transform=build_transforms(
                [{"type": "ToDtype", "args": {"dtype": "float32", "scale": True}}], "t"))

        def train_loader(self, device=None):
            return torch.utils.data.DataLoader(self.data, batch_size=20, shuffle=True)

        def val_loader(self, device=None):
            return None

    PlainLoader.__module__ = "data_loader.data_loaders"
    monkeypatch.setattr(data_loader.data_loaders, "PlainLoader", PlainLoader, raising=False)
    data = tiny_digits(tmp_path / "digits")
    code = train.main(train_args(tmp_path / "saved", data, f"data_loader={{type: PlainLoader, args: {{data_dir: {data}}}}}",
                                 "trainer.monitor=off"))
    assert code == 2 and "its train_loader() gives a DataLoader with a RandomSampler sampler" in one_error(capsys)
    assert not (tmp_path / "saved").exists()


def test_test_py_takes_the_data_loader_of_a_data_only_config(run_copy, tmp_path, capsys):
    data = tiny_digits(tmp_path / "other")
    (tmp_path / "data.yaml").write_text(f"data_loader:\n  type: CsvImageDataLoader\n  args: {{data_dir: {data}, "
                                        "validation_split: 20, eval_transform: [{type: ToDtype, args: {dtype: float32, "
                                        "scale: true}}]}\n")
    assert test_script.main(["--resume", str(run_copy), "-c", str(tmp_path / "data.yaml"), "--no-report"]) == 0
    assert "on the test split: 20 samples" in capsys.readouterr().out
    (tmp_path / "model.yaml").write_text("arch: {type: DigitsCNN}\n")
    assert test_script.main(["--resume", str(run_copy), "-c", str(tmp_path / "model.yaml")]) == 2
    assert "model.yaml has no 'data_loader' section" in one_error(capsys)
    # An arch override on the command line makes another model than the checkpoint's.
    assert test_script.main(["--resume", str(run_copy), "--no-report", "arch.args.width=4"]) == 2
    assert "does not fit the model 'DigitsCNN'" in (err := one_error(capsys)) and \
        "The command line's arch.args.width=4 changes the model the checkpoint was trained as: leave it out." in err


@pytest.mark.needs("configs/diabetes_mlp.yaml", "export.py")
def test_data_of_another_form_than_the_model_was_trained_on_is_one_message(run_copy, capsys):
    """A table for a model trained on images: one message before anything is evaluated or exported."""
    table = str(REPO / "configs" / "diabetes_mlp.yaml")
    assert test_script.main(["--resume", str(run_copy), "-c", table, "--no-report"]) == 2
    assert "One batch of the test data (inputs ((32, 10) float32, (32, 1) float32)) does not go through the trained " \
           "model" in one_error(capsys)
    import export  # a minimal project leaves it out

    assert export.main(["--resume", str(run_copy), "-c", table, "--format", "torchscript"]) == 2
    assert "A test batch (inputs (32, 10)) does not go through the trained model" in one_error(capsys)
    assert not list(run_copy.glob("*.ts.pt"))


# ---------------------------------------------------------------------- a run folder from elsewhere (issue 18)
@pytest.mark.parametrize("name, kind", [(".lock", "link"), ("train.log", "link"), ("train.log", "pipe")])
def test_a_link_or_pipe_planted_in_a_handed_run_folder_is_refused_and_its_target_kept(run_copy, tmp_path, name, kind,
                                                                                      capsys):
    handed = tmp_path / "handed"
    handed.mkdir()
    shutil.copy(run_copy / "checkpoint-latest.pth", handed)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    if kind == "link":
        (handed / name).symlink_to(victim)
    else:
        os.mkfifo(handed / name)
    assert train.main(["--resume", str(handed / "checkpoint-latest.pth"), "--epochs", "2"]) == 2
    err = one_error(capsys)
    assert f"'{handed / name}' is {'a symbolic link' if kind == 'link' else 'not a regular file'}" in err
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in handed.iterdir()) == sorted({"checkpoint-latest.pth", name, ".lock"})


def test_a_linked_log_folder_of_a_handed_run_is_refused(run_copy, tmp_path, capsys):
    log_dir = run_copy.parents[2] / "log" / "digits_cnn" / "r"
    elsewhere = tmp_path / "elsewhere"
    shutil.move(log_dir, elsewhere)
    log_dir.symlink_to(elsewhere)
    before = sorted(p.name for p in elsewhere.iterdir())
    assert train.main(["--resume", str(run_copy), "--epochs", "2"]) == 2
    assert f"'{log_dir}' is a symbolic link (to '{elsewhere}')" in one_error(capsys)
    assert sorted(p.name for p in elsewhere.iterdir()) == before


def test_a_config_key_with_a_newline_cannot_forge_a_line_of_the_log(run_copy, capsys):
    path = run_copy / "checkpoint-latest.pth"
    state = torch.load(path, weights_only=True)
    state["config"]["note\n2026-01-01 00:00:00,000 INFO train: FORGED"] = 1
    torch.save(state, path)
    assert train.main(["--resume", str(run_copy), "--epochs", "2"]) == 0
    log = (run_copy.parents[2] / "log" / "digits_cnn" / "r" / "train.log").read_text()
    assert "'note\\n2026-01-01 00:00:00,000 INFO train: FORGED'" in log
    assert not [line for line in log.splitlines() if line.startswith("2026-01-01")]


def test_an_experiment_name_with_a_control_character_is_refused(tmp_path, capsys):
    assert train.main(train_args(tmp_path / "saved", REPO / "data" / "digits", "--name", "a\nINFO forged")) == 2
    assert "without '..', '\\', a leading '/' or control characters" in one_error(capsys)
    assert not (tmp_path / "saved").exists()


def test_test_py_refuses_a_default_report_folder_that_is_a_link(run_copy, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run_copy / "report-model_best-test").symlink_to(elsewhere)
    assert test_script.main(["--resume", str(run_copy / "model_best.pth")]) == 2
    assert f"'{run_copy / 'report-model_best-test'}' is a symbolic link" in one_error(capsys)
    assert list(elsewhere.iterdir()) == []
    # Chosen on the command line, a link to a folder is the user's own: the report goes there.
    assert test_script.main(["--resume", str(run_copy / "model_best.pth"), "-o", str(run_copy / "report-model_best-test")]) == 0
    assert (elsewhere / "report.json").is_file()


@pytest.fixture
def small_disk(tmp_path):
    """A file system of 1 MiB (tmpfs), for a disk that fills up; skipped where mounting one is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small file system here")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk, leave: int = 0):
    """Fill `disk` up to `leave` bytes free; the filler file, to free the space again."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        with contextlib.suppress(OSError):
            while shutil.disk_usage(disk).free > leave:
                f.write(b"\0" * 4096)
                f.flush()
    return filler


@pytest.mark.parametrize("leave", [0, 4096])  # no room for the lock file, or none for the config
def test_a_full_disk_at_the_start_stops_with_one_message_and_leaves_no_folder(small_disk, tmp_path, leave, capsys):
    data = tiny_digits(tmp_path / "digits")
    (small_disk / "saved").mkdir()
    filler = fill(small_disk, leave)
    assert train.main(train_args(small_disk / "saved", data, "--run-id", "r")) == 2
    assert "No space left on device" in one_error(capsys)
    assert not (small_disk / "saved" / "models" / "digits_cnn" / "r").exists()
    assert not (small_disk / "saved" / "log" / "digits_cnn" / "r").exists()
    filler.unlink()
    assert train.main(train_args(small_disk / "saved", data, "--run-id", "r", "trainer.save_top_k=0")) == 0


def test_a_full_disk_on_resume_keeps_the_config_and_the_run_resumable(run_copy, small_disk, capsys):
    run = small_disk / "run"
    shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("checkpoint-epoch*", "model_best.pth"))
    config = (run / "config.yaml").read_bytes()
    filler = fill(small_disk)
    assert train.main(["--resume", str(run), "--epochs", "2"]) == 2
    assert "No space left on device" in one_error(capsys)
    assert (run / "config.yaml").read_bytes() == config
    filler.unlink()
    assert train.main(["--resume", str(run), "--epochs", "2", "trainer.save_top_k=0"]) == 0


@pytest.mark.parametrize("setting, key", [("optimizer.args.lr=.inf", "optimizer.args.lr"),
                                          ("optimizer.args.weight_decay=.inf", "optimizer.args.weight_decay"),
                                          ("optimizer.param_groups=[{modules: [classifier], lr: .nan}]",
                                           "optimizer.param_groups[0].lr")])
def test_an_infinite_or_nan_optimizer_setting_is_refused_before_writing(tmp_path, setting, key, capsys):
    assert train.main(train_args(tmp_path / "saved", REPO / "data" / "digits", setting)) == 2
    assert f"command line ({setting}): '{key}' is " in one_error(capsys)
    assert not (tmp_path / "saved").exists()


def test_new_project_refuses_an_example_in_a_minimal_project(tmp_path, capsys):
    assert new_project.main([str(tmp_path / "mine"), "--minimal", "--example", "vae"]) == 2
    assert "--example and --minimal do not go together" in capsys.readouterr().err
    assert not (tmp_path / "mine").exists()


@pytest.mark.needs("examples")
def test_new_project_lays_an_example_over_the_copy_and_refuses_an_unknown_one(tmp_path, capsys):
    assert new_project.main([str(tmp_path / "gan"), "--example", "dcgan"]) == 0
    assert "python train.py -c config.yaml" in capsys.readouterr().out
    assert (tmp_path / "gan" / "trainer" / "custom.py").read_text() == \
        (REPO / "examples" / "dcgan" / "trainer" / "custom.py").read_text()
    assert (tmp_path / "gan" / "EXAMPLE.md").read_text() == (REPO / "examples" / "dcgan" / "README.md").read_text()
    assert (tmp_path / "gan" / "README.md").read_text() == (REPO / "README.md").read_text()
    assert new_project.main([str(tmp_path / "other"), "--example", "gann"]) == 2
    assert "there is no example 'gann'; the examples are char_rnn, dcgan, sine_lbfgs, vae" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_a_loader_of_transform_objects_resumes_and_a_wrong_eval_transform_is_one_message(tmp_path, monkeypatch,
                                                                                        capsys):
    """A subclass may give BaseDataLoader transform objects: its checkpoints record no steps, and still load; a
    wrong eval_transform is explained by the check before writing, not by the record of the inputs."""
    from torchvision.transforms import v2

    import data_loader.data_loaders
    from data_loader.builtin import CsvImageDataLoader

    class ObjectTransforms(CsvImageDataLoader):
        def __init__(self, data_dir):
            super().__init__(data_dir, transform=v2.ToDtype(torch.float32, scale=True), batch_size=20,
                             validation_split=20)

    ObjectTransforms.__module__ = "data_loader.data_loaders"
    monkeypatch.setattr(data_loader.data_loaders, "ObjectTransforms", ObjectTransforms, raising=False)
    data = tiny_digits(tmp_path / "digits")
    args = train_args(tmp_path / "saved", data, f"data_loader={{type: ObjectTransforms, args: {{data_dir: {data}}}}}",
                      "--run-id", "r")
    assert train.main(args) == 0
    run = tmp_path / "saved" / "models" / "digits_cnn" / "r"
    assert load_checkpoint(run / "checkpoint-latest.pth")["data_loader"]["inputs"]["eval_transform"] is None
    assert train.main(["--resume", str(run), "--epochs", "2"]) == 0
    wrong = "data_loader.args.eval_transform=[{type: Normalize, args: {mean: [0.3], std: [0.4]}}]"
    assert train.main(train_args(tmp_path / "other", data, wrong)) == 2
    assert "does not go through the validation step" in one_error(capsys)
    assert not (tmp_path / "other").exists()
