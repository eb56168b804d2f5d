"""Start a new project from this template:  python new_project.py ../my_project

Copies the template without run outputs, caches, virtual environments or git history, and refuses to write
into a folder that is not empty.
"""
import argparse
import shutil
import sys
from pathlib import Path

IGNORE = shutil.ignore_patterns(".git", "saved", "__pycache__", ".pytest_cache", ".ruff_cache", ".venv", "venv",
                                "*.pyc", "*.egg-info", "MNIST", "FashionMNIST", "KMNIST", "cifar-10-batches-py",
                                "cifar-100-python", "*.tar.gz")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Start a new project: a clean copy of this template.")
    parser.add_argument("folder", help="the new project's folder (new, or empty), outside this template")
    args = parser.parse_args(argv)  # -h prints the usage; an unknown option exits 2, as a folder is never made of it
    source, target = Path(__file__).resolve().parent, Path(args.folder).resolve()
    if target.exists() and any(target.iterdir()):
        print(f"error: '{target}' exists and is not empty; choose a new folder.", file=sys.stderr)
        return 2
    if target.is_relative_to(source):
        print(f"error: '{target}' is inside the template; choose a folder outside it.", file=sys.stderr)
        return 2
    def ignore(folder: str, names: list[str]) -> set[str]:  # predict.py's default output, in the top folder only
        return IGNORE(folder, names) | ({"predictions.csv"} & set(names) if Path(folder) == source else set())

    shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)
    print(f"New project in {target}. Next, set up its environment and train the example:\n"
          f"  cd {target}\n"
          "  python -m venv .venv\n"
          "  source .venv/bin/activate        (Windows: .venv\\Scripts\\activate)\n"
          "  pip install -r requirements.txt\n"
          "  python train.py -c configs/config.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
