"""`new_project.py --minimal`: the starter without the optional features trains the default example, resumes
bit-identically after SIGKILL, evaluates with test.py, and names the file of a feature it leaves out. Its own share
of the tests runs in CI (.ci/run), in the starter."""
import signal
import subprocess
import sys

import new_project

from helpers import assert_same_state

# The default example, short: two epochs of 20 steps, a checkpoint every 4 steps.
SHORT = ["-c", "configs/config.yaml", "trainer.epochs=2", "trainer.save_every_steps=4", "arch.args.width=8",
         "trainer.tensorboard=false", "lr_scheduler.args.T_max=2"]


def test_the_minimal_starter_trains_resumes_exactly_after_sigkill_and_evaluates(tmp_path):
    folder, saved = tmp_path / "mine", tmp_path / "saved"
    assert new_project.main([str(folder), "--minimal"]) == 0
    for paths in new_project.LEFT_OUT.values():
        for path in paths:
            assert not (folder / path).exists(), path
    assert (folder / "README.md").read_text().startswith("> This project was made with `new_project.py --minimal`")

    def run(script: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, script, *args], cwd=folder, capture_output=True, text=True,
                              timeout=300)

    args = [*SHORT, f"trainer.save_dir={saved}"]
    assert run("train.py", *args, "--run-id", "whole").returncode == 0
    killed = run("tests/interrupt.py", "--at", "step:7", "--send", "KILL", "--", *args, "--run-id", "killed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    runs = saved / "models" / "digits_cnn"
    resumed = run("train.py", "--resume", str(runs / "killed"))
    assert resumed.returncode == 0 and "epoch 1, batch 4, step 4" in resumed.stdout, resumed.stderr
    assert_same_state(runs / "whole" / "checkpoint-latest.pth", runs / "killed" / "checkpoint-latest.pth")
    tested = run("test.py", "--resume", str(runs / "whole"), "--no-report")
    assert tested.returncode == 0 and "on the test split" in tested.stdout and "accuracy" in tested.stdout
    refused = run("train.py", *args, "trainer.ema=true")
    assert refused.returncode == 2 and "'trainer.ema' needs trainer/ema.py, which this project was made without" \
        in refused.stderr and "Traceback" not in refused.stderr
    assert sorted(p.name for p in runs.iterdir()) == ["killed", "whole"]
