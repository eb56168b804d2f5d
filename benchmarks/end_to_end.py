"""Time the default example end to end and report its held-out accuracy:

    python benchmarks/end_to_end.py [--repeat 3] [--config configs/config.yaml]

Runs `python train.py -c configs/config.yaml` (into a temporary save_dir) and `python test.py` on the best
checkpoint, as a user would, and prints wall time, test accuracy, the warnings the run logged, the machine and
its load average before and after each run, and the cores other processes kept busy during it (other work on
the machine slows a run down, on 2 cores many times over: compare figures taken with the machine idle only).
"""
import argparse
import os
import platform
import re
import resource
import statistics
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


def load() -> str:
    """The 1-minute load average (the first figure of `uptime`)."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"


def busy_seconds() -> float | None:
    """CPU seconds spent by the whole machine since boot (Linux), to tell how busy others kept it during a run."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--config", default="configs/config.yaml")
    args = parser.parse_args()
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
    walls = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as save_dir:
            before, busy, ours = load(), busy_seconds(), children_seconds()
            started = time.perf_counter()
            out = run("train.py", "-c", args.config, f"trainer.save_dir={save_dir}")
            seconds = time.perf_counter() - started
            after = load()
            # Cores kept busy by other processes during the run (the load average lags by a minute).
            others = (busy_seconds() - busy - (children_seconds() - ours)) / seconds if busy is not None else None
            epochs = len(re.findall(r"^epoch \d+/", out, re.M))
            logged = "".join(path.read_text() for path in Path(save_dir).glob("log/*/*/train.log"))
            warnings = re.findall(r" WARNING \S+: (.*)", logged)
            best = re.search(r"python test.py --resume (\S+)", out).group(1)
            tested = run("test.py", "--resume", best)
            accuracy = float(re.search(r"^\s+accuracy\s+([\d.]+)$", tested, re.M).group(1))
        walls.append(seconds)
        print(f"run {i + 1}: train.py {seconds:.1f} s wall ({epochs} epochs), test accuracy {accuracy:.2%}, "
              f"load average {before} before, {after} after"
              + (f", other processes {max(others, 0):.2f} cores" if others is not None else "")
              + f", {len(warnings)} warnings"
              + (f" (the first: {warnings[0][:100]})" if warnings else ""))
    if len(walls) > 1:
        print(f"median {statistics.median(walls):.1f} s, best {min(walls):.1f} s over {len(walls)} runs")


if __name__ == "__main__":
    main()
