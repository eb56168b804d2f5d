"""Start a new project from this template:  python new_project.py ../my_project

Copies the template without run outputs, caches, virtual environments or git history, and refuses to write
into a folder that is not empty. With `--example NAME`, the worked example examples/NAME/ is laid over the copy: its
files replace the user's slots (model/model.py, trainer/custom.py, ...), its config.yaml lands at the top and its
README.md as EXAMPLE.md. With `--minimal`, the optional features (LEFT_OUT: their code, docs and tests) are left
out, and the default example reads its images with the ordinary loader.
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


# What `--minimal` leaves out, by feature: each feature's files, docs and tests. The rest of the template does not
# need them (the registry skips a missing module; a config key of a missing feature names its file).
LEFT_OUT = {
    "hyperparameter search and the LR finder (tune.py, docs/search.md)": (
        "tune.py", "tools/search.py", "tools/trials.py", "tools/lr_find.py", "docs/search.md",
        "tests/unit/test_tune.py", "tests/unit/test_lr_find.py", "tests/e2e/test_tune_runs.py"),
    "export to ONNX, TorchScript and torch.export (export.py, docs/export.md)": (
        "export.py", "tools/preprocessing.py", "docs/export.md", "tests/e2e/test_export.py"),
    "predictions on new files (predict.py, docs/predict.md)": (
        "predict.py", "tools/predictor.py", "data_loader/inputs.py", "docs/predict.md", "tests/unit/test_predict.py"),
    "the data set held on the training device (DeviceDataLoader, docs/speed.md)": (
        "data_loader/device_loader.py", "docs/speed.md", "benchmarks", "tests/unit/test_speed_options.py"),
    "the EMA of the weights (trainer.ema)": ("trainer/ema.py", "tests/unit/test_ema.py"),
    "torchvision's classifiers and the training recipes (docs/recipes.md)": (
        "model/builtin/torchvision_model.py", "configs/cifar10_resnet18.yaml", "configs/cifar10_resnet18_recipe.yaml",
        "docs/recipes.md", "tests/unit/test_recipes.py", "tests/unit/test_torchvision_model.py"),
    "the tabular example (configs/diabetes_mlp.yaml)": (
        "configs/diabetes_mlp.yaml", "data/diabetes", "scripts/make_diabetes.py", "scripts/diabetes_r2.py",
        "tests/unit/test_table.py"),
    "the worked examples and the classic template's base classes (examples/, base/, docs/classic.md)": (
        "examples", "base", "docs/classic.md", "tests/e2e/test_examples.py", "tests/e2e/test_classic_project.py"),
}
# The minimal default example's data loader: the ordinary one, with the same augmentation drawn per sample.
MINIMAL_DATA_LOADER = """data_loader:
  type: CsvImageDataLoader      # reads the images listed in labels.csv (data_loader/builtin.py)
  args:
    data_dir: data/digits
    batch_size: 64
    shuffle: true
    validation_split: 0.15
    num_classes: 10
    num_workers: 0              # the bundled digits are small: worker processes would cost more than they save
    transform:                  # training images: uint8 (C, H, W) in, torchvision.transforms.v2 steps
      - {type: RandomAffine, args: {degrees: 10, translate: [0.1, 0.1]}}
      - {type: ToDtype, args: {dtype: float32, scale: true}}
      - {type: Normalize, args: {mean: [0.3], std: [0.4]}}
    eval_transform:             # validation and test images
      - {type: ToDtype, args: {dtype: float32, scale: true}}
      - {type: Normalize, args: {mean: [0.3], std: [0.4]}}

"""


def refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def leave_out(target: Path) -> None:
    """Remove LEFT_OUT's files from the copy in `target`, give its default example the ordinary loader, and say in
    its README what was left out."""
    for paths in LEFT_OUT.values():
        for path in (target / p for p in paths):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    config = target / "configs" / "config.yaml"
    text = config.read_text()
    start, end = text.index("\ndata_loader:\n") + 1, text.index("\noptimizer:\n") + 1
    config.write_text(text[:start] + MINIMAL_DATA_LOADER + text[end:])
    readme = target / "README.md"
    readme.write_text("> This project was made with `new_project.py --minimal`. It leaves out "
                      + "; ".join(LEFT_OUT) + ". The sections of this README about them do not apply; copy their "
                      "files from the template to add one back.\n\n" + readme.read_text())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Start a new project: a clean copy of this template.")
    parser.add_argument("folder", help="the new project's folder (new, or empty), outside this template")
    parser.add_argument("--example", metavar="NAME", help="start from a worked example of examples/: "
                        + ", ".join(sorted(EXAMPLES)))
    parser.add_argument("--minimal", action="store_true", help="leave the optional features out: search, LR finder, "
                        "export, predict.py, the device-resident loader, EMA, recipes, examples")
    args = parser.parse_args(argv)  # -h prints the usage; an unknown option exits 2, as a folder is never made of it
    source, target = Path(__file__).resolve().parent, Path(args.folder).resolve()
    if args.example is not None and args.minimal:
        return refuse("--example and --minimal do not go together: the examples use features --minimal leaves out.")
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
        if args.minimal:
            leave_out(target)
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
