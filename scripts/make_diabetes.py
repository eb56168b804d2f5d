"""Write the bundled regression example: the diabetes table (Efron et al. 2004) as one CSV file.

The 442 rows come from the raw files inside scikit-learn (a dev-only dependency of this script:
`pip install scikit-learn`), not from `load_diabetes()`, whose features are already centred and scaled over all
rows, test rows included; TableDataLoader fits its own standardisation on the training rows. The train/test
split is fixed (seed 0, 20% test) and recorded in the `split` column, so every clone trains and tests on the
same rows.

    python scripts/make_diabetes.py data/diabetes
"""
import argparse
import csv
import gzip
from importlib import resources
from pathlib import Path

COLUMNS = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def main() -> None:
    from sklearn.model_selection import train_test_split

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder, e.g. data/diabetes")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    args = parser.parse_args()

    raw = resources.files("sklearn.datasets") / "data"
    features = [line.split() for line in gzip.decompress((raw / "diabetes_data_raw.csv.gz").read_bytes()).decode()
                .splitlines()]
    targets = [line.strip() for line in gzip.decompress((raw / "diabetes_target.csv.gz").read_bytes()).decode()
               .splitlines()]
    assert len(features) == len(targets) == 442 and all(len(row) == len(COLUMNS) for row in features)
    _, test_index = train_test_split(range(len(targets)), test_size=args.test_fraction, random_state=0)
    test_index = set(test_index)

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "diabetes.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*COLUMNS, "target", "split"])
        for i, (row, target) in enumerate(zip(features, targets)):
            writer.writerow([*row, f"{float(target):g}", "test" if i in test_index else "train"])
    print(f"wrote {len(targets)} rows ({len(test_index)} test) to {args.out / 'diabetes.csv'}")


if __name__ == "__main__":
    main()
