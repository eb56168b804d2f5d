"""The test R² of a trained table model next to that of a linear model, for the README's comparison.

The model's figure is the one `test.py` prints (the split's exact R²). The baseline is ordinary least squares
(`torch.linalg.lstsq`, with an intercept) fitted on the same standardised training rows, without the validation
rows. The data is rebuilt from the checkpoint's config (same seed, same split, the saved standardisation).

    python scripts/diabetes_r2.py saved/models/diabetes_mlp/<run_id>/model_best.pth
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_loader.factory import build_data_loader  # noqa: E402
from model.builtin.metrics import r2, rmse  # noqa: E402
from tools.restore import restore  # noqa: E402


def whole(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (features, target) of `dataset` as one batch."""
    return next(iter(DataLoader(dataset, batch_size=len(dataset))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint of a run on a TableDataLoader, e.g. its model_best.pth")
    args = parser.parse_args()

    trained = restore(args.checkpoint, device="cpu")
    config = trained.config
    data = build_data_loader(config["data_loader"], config["seed"], source=config.source)
    if "data_loader" in trained.checkpoint:
        data.load_state_dict(trained.checkpoint["data_loader"])
    x_train, y_train = whole(Subset(data.make_dataset(True, data.eval_transform), data.split()[0]))
    x_test, y_test = whole(data.make_dataset(False, data.eval_transform))

    with torch.no_grad():
        predicted = trained.model(x_test)
    design = torch.cat([x_train, torch.ones(len(x_train), 1)], dim=1).double()
    coef = torch.linalg.lstsq(design, y_train.double()).solution
    linear = (torch.cat([x_test, torch.ones(len(x_test), 1)], dim=1).double() @ coef).float()

    print(f"{trained.path} on the {len(y_test)} test rows ({len(y_train)} training rows for the linear fit):")
    for name, output in [(config["arch"]["type"], predicted), ("linear least squares", linear)]:
        print(f"  {name:<22} R² {float(r2(output, y_test)):.4f}   RMSE {float(rmse(output, y_test)):.2f}")


if __name__ == "__main__":
    main()
