"""Start a new project from this template:  python new_project.py ../my_project

Copies the template without run outputs, caches, virtual environments or git history, and refuses to write
into a folder that is not empty. With `--example NAME`, the worked example examples/NAME/ is laid over the copy: its
files replace the user's slots (model/model.py, trainer/custom.py, ...), its config.yaml lands at the top and its
README.md as EXAMPLE.md.
"""
import argparse
import shutil
import sys
from pathlib import Path

IGNORE = shutil.ignore_patterns(".git", "saved", "__pycache__", ".pytest_cache", ".ruff_cache", ".venv", "venv",
                                "*.pyc", "*.egg-info", "MNIST", "FashionMNIST", "KMNIST", "cifar-10-batches-py",
                                "cifar-100-python", "*.tar.gz")


# The worked examples: folders of examples/ with a config.yaml (a project copy may have left them out).
_EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
EXAMPLES = {p.name: p for p in sorted(_EXAMPLES_DIR.iterdir()) if (p / "config.yaml").is_file()} \
    if _EXAMPLES_DIR.is_dir() else {}


def refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Start a new project: a clean copy of this template.")
    parser.add_argument("folder", help="the new project's folder (new, or empty), outside this template")
    parser.add_argument("--example", metavar="NAME", help="start from a worked example of examples/: "
                        + ", ".join(sorted(EXAMPLES)))
    args = parser.parse_args(argv)  # -h prints the usage; an unknown option exits 2, as a folder is never made of it
    source, target = Path(__file__).resolve().parent, Path(args.folder).resolve()
    if args.example is not None and args.example not in EXAMPLES:
        return refuse(f"there is no example '{args.example}'; the examples are {', '.join(sorted(EXAMPLES))} "
                      "(folders of examples/).")
    if not args.folder.strip():
        return refuse("the folder name is empty; give the new project's folder, e.g. ../my_project.")
    if target.exists() and not target.is_dir():
        return refuse(f"'{target}' is a file; choose a new folder.")
    if target.exists() and any(target.iterdir()):
        return refuse(f"'{target}' exists and is not empty; choose a new folder.")
    if target.is_relative_to(source):
        return refuse(f"'{target}' is inside the template; choose a folder outside it.")

    def ignore(folder: str, names: list[str]) -> set[str]:  # predict.py's default output, in the top folder only
        return IGNORE(folder, names) | ({"predictions.csv"} & set(names) if Path(folder) == source else set())

    existed = target.exists()
    try:
        shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)
        if args.example is not None:
            example = EXAMPLES[args.example]
            shutil.copytree(example, target, dirs_exist_ok=True, ignore=lambda folder, names: IGNORE(folder, names) | (
                {"README.md"} if Path(folder) == example else set()))
            shutil.copy(example / "README.md", target / "EXAMPLE.md")
    except OSError as e:  # shutil.Error (a file that failed to copy) included
        why = e.strerror or str(e).splitlines()[0][:300]
        if existed:  # it was empty: take back what was copied
            for path in target.iterdir():
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        else:
            shutil.rmtree(target, ignore_errors=True)
        return refuse(f"could not copy the template into '{target}': {why}. Choose a folder you can write to, on a "
                      "disk with free space; nothing was left there.")
    print(f"New project in {target}. Next, set up its environment and train the example:\n"
          f"  cd {target}\n"
          "  python -m venv .venv\n"
          "  source .venv/bin/activate        (Windows: .venv\\Scripts\\activate)\n"
          "  pip install -r requirements.txt\n"
          f"  python train.py -c {'config.yaml' if args.example else 'configs/config.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
