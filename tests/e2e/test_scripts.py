"""The entry points as processes of their own, as a user runs them: exit codes, output, a second process on a live folder."""
import os
import signal
import subprocess
import sys

import test as test_script
import train

from helpers import REPO, fast_args, only_run, run_script


def test_train_resume_and_test_as_subprocesses(tmp_path, capsys):
    # The entry points as a user runs them: a process each (tests/e2e/test_classic_project.py runs them so too).
    save_dir = tmp_path / "saved"
    first = run_script("train.py", *fast_args(save_dir, "trainer.epochs=1", "--run-id", "cli"))
    assert first.returncode == 0, first.stderr
    assert "Evaluate with: python test.py --resume" in first.stdout
    assert "total" in first.stdout and "buffers" in first.stdout
    run = only_run(save_dir)
    assert train.main(["--resume", str(run), "--epochs", "2"]) == 0
    resumed = capsys.readouterr().out
    assert "epoch 2/2" in resumed and "epoch 1/" not in resumed
    tested = run_script("test.py", "--resume", str(run / "checkpoint-latest.pth"), "--device", "cpu")
    assert tested.returncode == 0, tested.stderr
    assert "on the test split: 360 samples" in tested.stdout
    broken = tmp_path / "broken.pth"
    broken.write_bytes((run / "checkpoint-latest.pth").read_bytes()[:1000])
    assert test_script.main(["--resume", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "broken.pth' is truncated or corrupt" in err and "Traceback" not in err


def test_new_project_copies_a_clean_template(tmp_path):
    target = tmp_path / "my_project"
    result = run_script("new_project.py", str(target))
    assert result.returncode == 0, result.stderr
    for name in ("train.py", "test.py", "configs/config.yaml", "data/digits/labels.csv", "trainer/trainer.py",
                 "requirements.txt", "README.md"):
        assert (target / name).is_file(), name
    for name in (".git", "saved", "__pycache__", ".pytest_cache"):
        assert not list(target.rglob(name)), name
    again = run_script("new_project.py", str(target))
    assert again.returncode == 2 and "not empty" in again.stderr
    # An option is never taken for the new folder's name, even outside the template.
    helped = run_script("new_project.py", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "usage: new_project.py [-h] [--example NAME] [--minimal] folder" in helped.stdout
    assert run_script("new_project.py", "--folder", "x", cwd=tmp_path).returncode == 2
    for folder, message in [(str(target / "README.md"), "is a file; choose a new folder"),
                            ("", "the folder name is empty"),
                            ("/proc/new_project", "could not copy the template into '/proc/new_project'")]:
        refused = run_script("new_project.py", folder, cwd=tmp_path)
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr, folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_project"]
    # predict.py's default output in the top folder stays behind; a user's file of that name elsewhere is copied.
    (target / "predictions.csv").write_text("file,label\n")
    (target / "data" / "predictions.csv").write_text("file,label\n")
    assert run_script("new_project.py", str(tmp_path / "next"), script_dir=target).returncode == 0
    assert not (tmp_path / "next" / "predictions.csv").exists() and (tmp_path / "next" / "data" / "predictions.csv").is_file()


def test_output_cut_short_by_its_reader_ends_quietly(tmp_path):
    # `python test.py ... | head -1`: the reader closes the pipe; the run ends as Unix tools do, with no error.
    script = tmp_path / "many_lines.py"
    script.write_text(f"import logging, sys\nsys.path.insert(0, {str(REPO)!r})\nfrom utils.errors import report_errors\n"
                      "sys.exit(report_errors(lambda: [print('line', i) for i in range(10**6)], logging.getLogger()))\n")
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline() == b"line 0\n"
    process.stdout.close()
    assert process.wait(timeout=60) == 128 + signal.SIGPIPE
    assert process.stderr.read() == b""


# ---------------------------------------------------------------------- faults that lose or strand work
def test_a_new_run_that_loses_the_race_for_its_run_id_leaves_the_winners_folder(tmp_path, monkeypatch, capsys):
    holder, new_run = None, train.new_run

    def racing(*args):
        """Two runs given the same --run-id both find its folder empty; the other one locks it first."""
        nonlocal holder
        paths = new_run(*args)
        holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                                   "fcntl.lockf(f, fcntl.LOCK_EX); print(1, flush=True); time.sleep(60)",
                                   str(paths.models / ".lock")], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline() == "1\n"
        return paths

    monkeypatch.setattr(train, "new_run", racing)
    try:
        assert train.main([*fast_args(tmp_path / "saved"), "--run-id", "same"]) == 2
        assert "is in use by another training process" in capsys.readouterr().err
        assert (tmp_path / "saved" / "models" / "digits_cnn" / "same" / ".lock").is_file()
    finally:
        holder.kill()
        holder.wait()


def test_a_second_process_on_a_live_run_folder_is_refused(run_copy, capsys):
    from utils.run import lock_run, release_runs

    lock_run(run_copy)  # as the first training process holds it while it trains
    try:
        before = sorted(p.name for p in run_copy.iterdir())
        result = subprocess.run([sys.executable, str(REPO / "train.py"), "--resume", str(run_copy)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert f"The run folder '{run_copy}' is in use by another training process (pid {os.getpid()})" in result.stderr
        assert sorted(p.name for p in run_copy.iterdir()) == before
    finally:
        release_runs()
    assert train.main(["--resume", str(run_copy), "trainer.epochs=2"]) == 0  # free again once the holder is done
