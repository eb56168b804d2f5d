"""The worked examples of examples/: each, copied into a new project by `new_project.py --example NAME`, trains,
ends bit-identical after a SIGKILL and `--resume`, and evaluates with test.py."""
import signal
import subprocess
import sys

import pytest

import new_project
from trainer.checkpoint import load_checkpoint

from helpers import assert_same_state, run_script, same

# Lighter settings for the slowest examples, so that the test takes seconds (the same in every run it compares).
LIGHTER = {"sine_lbfgs": ["optimizer.args.max_iter=3", "data_loader.args.length=60"],
           "char_rnn": ["data_loader.args.files=docs/c*.md"]}


@pytest.mark.parametrize("name", sorted(new_project.EXAMPLES))
def test_an_example_trains_resumes_bit_identically_after_sigkill_and_evaluates(name, tmp_path):
    folder = tmp_path / name
    assert new_project.main([str(folder), "--example", name]) == 0
    assert (folder / "EXAMPLE.md").is_file() and (folder / "README.md").read_text().startswith("# ")
    args = ["-c", "config.yaml", "trainer.epochs=2", "trainer.save_every_steps=2", f"trainer.save_dir={tmp_path}",
            *LIGHTER.get(name, [])]
    ref = run_script("train.py", *args, "--run-id", "ref", cwd=folder, script_dir=folder)
    assert ref.returncode == 0, ref.stderr
    killed = subprocess.run([sys.executable, str(folder / "tests" / "interrupt.py"), "--at", "step:3", "--send", "KILL",
                             "--", *args, "--run-id", "killed"], cwd=folder, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    runs = next((tmp_path / "models").iterdir())
    resumed = run_script("train.py", "--resume", str(runs / "killed"), cwd=folder, script_dir=folder)
    assert resumed.returncode == 0, resumed.stderr
    a, b = runs / "ref" / "checkpoint-latest.pth", runs / "killed" / "checkpoint-latest.pth"
    assert_same_state(a, b)
    a, b = load_checkpoint(a), load_checkpoint(b)
    assert same(a["optimizer"], b["optimizer"]) and a["history"] == b["history"] and a["callbacks"] == b["callbacks"]
    # test.py's figures on the validation split are the ones training logged for these weights.
    tested = run_script("test.py", "--resume", str(runs / "ref" / "checkpoint-latest.pth"), "--split", "val",
                        cwd=folder, script_dir=folder)
    assert tested.returncode == 0 and "Traceback" not in tested.stderr, tested.stderr
    figures = dict(line.split() for line in tested.stdout.splitlines() if line.startswith("  ") and len(line.split()) == 2)
    assert float(figures["loss"]) == pytest.approx(a["history"][-1]["val_loss"], rel=1e-5, abs=1e-6)  # printed with 6 decimals
