"""Write the bundled example data set: the UCI optical handwritten digits as PNG files plus labels.csv.

The 1,797 8x8 digits come from the copy inside scikit-learn (a dev-only dependency of this script:
`pip install scikit-learn`). Pixel values 0..16 are scaled to 0..255. The train/test split is fixed
(stratified, seed 0) and recorded in the `split` column, so every clone trains and tests on the same rows.

    python scripts/make_digits.py data/digits
"""
import argparse
import csv
from pathlib import Path

import torch
from torchvision.io import encode_png


def main() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder, e.g. data/digits")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    args = parser.parse_args()

    digits = load_digits()
    index = list(range(len(digits.target)))
    _, test_index = train_test_split(index, test_size=args.test_fraction, random_state=0, stratify=digits.target)
    test_index = set(test_index)

    images = args.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        name = f"{i:04d}.png"
        image = (torch.from_numpy(pixels).float() * 255.0 / 16.0).round().clamp(0, 255).to(torch.uint8)
        (images / name).write_bytes(encode_png(image.unsqueeze(0), compression_level=9).numpy().tobytes())
        rows.append((f"images/{name}", int(label), "test" if i in test_index else "train"))

    with open(args.out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "split"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} images ({len(test_index)} test) to {args.out}")


if __name__ == "__main__":
    main()
