"""Time the default example end to end and report its held-out accuracy:

    python benchmarks/end_to_end.py [--repeat 3]

Runs `python train.py -c configs/config.yaml` (into a temporary save_dir) and `python test.py` on the best
checkpoint, as a user would, and prints wall time, test accuracy and the machine.
"""
import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--config", default="configs/config.yaml")
    args = parser.parse_args()
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as save_dir:
            started = time.perf_counter()
            out = run("train.py", "-c", args.config, f"trainer.save_dir={save_dir}")
            seconds = time.perf_counter() - started
            epochs = len(re.findall(r"^epoch \d+/", out, re.M))
            best = re.search(r"python test.py --resume (\S+)", out).group(1)
            tested = run("test.py", "--resume", best)
            accuracy = float(re.search(r"^\s+accuracy\s+([\d.]+)$", tested, re.M).group(1))
        print(f"run {i + 1}: train.py {seconds:.1f} s wall ({epochs} epochs), test accuracy {accuracy:.2%}")


if __name__ == "__main__":
    main()
