"""A run that is killed (SIGKILL) or stopped (SIGTERM, SIGINT, SIGUSR1) and resumed, as many times as it
was interrupted, ends bit-identical to the same run left alone: weights, buffers and optimizer state."""
import signal

import pytest

import train
from trainer.checkpoint import load_checkpoint

from helpers import ARGS, assert_same_state, interrupted
from interrupt import interrupting


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run left alone. Uninterrupted runs and resumes run in this process (a torch import less each); only the
    runs that get killed or signalled need a process of their own."""
    save_dir = tmp_path_factory.mktemp("reference")
    assert train.main([*ARGS, f"trainer.save_dir={save_dir}", "--run-id", "ref"]) == 0
    return save_dir / "models" / "digits_cnn" / "ref" / "checkpoint-latest.pth"


def test_sigkill_at_four_points_then_resume_is_bit_identical(tmp_path, reference, capsys):
    run = tmp_path / "models" / "digits_cnn" / "killed"
    first = ARGS + [f"trainer.save_dir={tmp_path}", "--run-id", "killed"]
    # 0. before the first checkpoint: the run folder holds only config.yaml; --resume starts the run again there
    result = interrupted("step:3", "KILL", *first)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert [p.name for p in run.iterdir() if not p.name.startswith(".")] == ["config.yaml"]
    assert train.main(first) == 2 and f"Continue it with --resume {run}" in capsys.readouterr().err
    # 1. inside epoch 1, three steps after the step-4 checkpoint
    result = interrupted("step:7", "KILL", "--resume", str(run))
    assert result.returncode == -signal.SIGKILL, result.stderr
    # 2. between epochs, before epoch 2's first batch
    result = interrupted("epoch-start:2", "KILL", "--resume", str(run))
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert "Resuming killed from" in result.stdout and "epoch 1, batch 4, step 4" in result.stdout
    # 3. in the middle of writing a checkpoint, the temporary file complete but not yet renamed: model_best.pth at the
    # end of epoch 2, the 7th file this process writes (5 step saves, then checkpoint-latest.pth, which already
    # records epoch 2's better val_loss). The issue's repro of a stale best: the resume must not trust it.
    result = interrupted("save:7", "KILL", "--resume", str(run))
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert list(run.glob(".*.tmp-*")), "the kill should leave a half-finished save behind"
    latest = load_checkpoint(run / "checkpoint-latest.pth")
    assert latest["loop"]["epoch"] == 3 and latest["monitor"]["best"] == latest["history"][-1]["val_loss"]
    assert load_checkpoint(run / "model_best.pth")["loop"]["epoch"] == 2, "the kill should leave an older best"
    assert train.main(["--resume", str(run)]) == 0
    assert "model_best.pth does not hold the best val_loss" in capsys.readouterr().out
    assert not list(run.glob(".*.tmp-*"))
    assert_same_state(reference, run / "checkpoint-latest.pth")
    assert_same_state(reference.with_name("model_best.pth"), run / "model_best.pth")


def test_stop_signals_save_and_exit_then_resume_is_bit_identical(tmp_path, reference, capsys):
    # One run stopped three times, each resumed: SIGUSR1 mid-epoch, SIGTERM in the next epoch, SIGINT (Ctrl+C) as
    # epoch 2's validation starts. A stop signal is handled in Python, so these runs can take it in this process; a
    # signal to a whole process group is tested in a process of its own below.
    run = tmp_path / "models" / "digits_cnn" / "stopped"
    command = [*ARGS, f"trainer.save_dir={tmp_path}", "--run-id", "stopped"]
    for sig, at, position in [("USR1", "step:9", (1, 9)), ("TERM", "step:23", (2, 3)), ("INT", "validation:2", (2, 20))]:
        with interrupting(at, sig):
            assert train.main(command) == 128 + getattr(signal, f"SIG{sig}")
        assert f"python train.py --resume {run}" in capsys.readouterr().out
        state = load_checkpoint(run / "checkpoint-latest.pth")
        assert (state["loop"]["epoch"], state["loop"]["batch_idx"]) == position, sig
        command = ["--resume", str(run)]
    assert train.main(command) == 0
    assert_same_state(reference, run / "checkpoint-latest.pth")


def test_sigterm_to_the_process_group_with_workers_saves_and_resumes_exactly(tmp_path):
    # The workers get the SIGTERM too (a terminal's kill, a job scheduler, Kubernetes); they leave it to the trainer.
    args = ARGS + ["data_loader.args.num_workers=2", "trainer.epochs=1"]
    assert train.main([*args, f"trainer.save_dir={tmp_path / 'a'}", "--run-id", "a"]) == 0
    run = tmp_path / "b" / "models" / "digits_cnn" / "b"
    result = interrupted("step:10", "TERM", *args, f"trainer.save_dir={tmp_path / 'b'}", "--run-id", "b", group=True)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert "Traceback" not in result.stderr and "Stopped by SIGTERM" in result.stdout
    assert train.main(["--resume", str(run)]) == 0
    assert_same_state(tmp_path / "a" / "models" / "digits_cnn" / "a" / "checkpoint-latest.pth",
                      run / "checkpoint-latest.pth")


def test_resume_refuses_another_seed_and_rederives_the_position_for_another_batch_size(tmp_path, capsys):
    run = tmp_path / "models" / "digits_cnn" / "mid"
    with interrupting("step:6", "TERM"):
        assert train.main([*ARGS, f"trainer.save_dir={tmp_path}", "--run-id", "mid"]) == 128 + signal.SIGTERM
    assert train.main(["--resume", str(run), "--seed", "5"]) == 2
    assert "trained with seed 0; seed 5 would pick another validation split" in capsys.readouterr().err
    assert train.main(["--resume", str(run), "--bs", "32", "--epochs", "1"]) == 0
    # 6 batches of 64 seen: the run goes on from sample 384, batch 12 of 32.
    out = capsys.readouterr().out
    assert "with batch size 64, this run has 1 with 32" in out and "(batch 12)" in out
