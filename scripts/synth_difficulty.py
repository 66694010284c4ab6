"""How hard is a synthetic series? 5-fold stratified CV of a plain logistic regression.

Writes a series with leukspark.synth (preset and settings as `leukspark synth` takes
them), reads its series matrix back, collapses probes to genes (mean of the single-gene
probes of a symbol, as `features.aggregate: mean` / `multi_gene: drop` do; log2(max(v, 1))
first on the linear scale), keeps the ALL/AML samples (the default label rules) and
scores StandardScaler + LogisticRegression(C=0.1) with scikit-learn's
StratifiedKFold(5, shuffle=True, random_state=0). Not a test; see docs/synthetic.md.

    python scripts/synth_difficulty.py --samples 400 --probes 5000 --seeds 1 2 3 --preset hard
"""

from __future__ import annotations

import argparse
import re
import tempfile

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from leukspark.synth import PRESETS, preset_options, write_synthetic_series


def score(samples: int, probes: int, seed: int, options: dict) -> dict:
    with tempfile.TemporaryDirectory() as out:
        result = write_synthetic_series(out, n_samples=samples, n_probes=probes, seed=seed,
                                        **options)
        matrix = pd.read_csv(result.series_matrix, sep="\t", comment="!", index_col=0)
        classes = _characteristic(result.series_matrix, "leukemia class")
        annotation = pd.read_csv(result.annotation_csv, keep_default_na=False)
    if options.get("scale") == "linear":
        matrix = np.log2(matrix.clip(lower=1.0))
    genes = annotation.set_index("probe_id")["gene"].reindex(matrix.index)
    single = (genes != "") & ~genes.str.contains(" /// ", regex=False)
    by_gene = matrix[single.to_numpy()].groupby(genes[single].to_numpy()).mean()
    label = pd.Series(classes, index=matrix.columns).map(
        lambda c: "ALL" if re.search(r"\bALL\b", c) else "AML" if re.match(r"AML\b", c) else None)
    keep = label.notna().to_numpy()
    x = by_gene.T.to_numpy()[keep]
    x = np.where(np.isnan(x), np.nanmean(x, axis=0), x)
    y = (label[keep] == "AML").to_numpy().astype(int)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    fold_acc = []
    predicted = np.empty_like(y)
    for train, test in folds.split(x, y):
        model.fit(x[train], y[train])
        predicted[test] = model.predict(x[test])
        fold_acc.append(float((predicted[test] == y[test]).mean()))
    ambiguous = np.isin(np.asarray(matrix.columns)[keep], result.ambiguous_ids)
    return {
        "seed": seed, "n": int(keep.sum()), "genes": x.shape[1], "accuracy": float(np.mean(fold_acc)),
        "fold_sd": float(np.std(fold_acc)), "errors": int((predicted != y).sum()),
        "ambiguous": int(ambiguous.sum()), "ambiguous_errors": int((predicted != y)[ambiguous].sum()),
    }


def _characteristic(path, key: str) -> list[str]:
    import gzip

    with gzip.open(path, "rt") as handle:
        for line in handle:
            if line.startswith("!Sample_characteristics_ch1") and f'"{key}: ' in line:
                return [cell.strip('"').split(": ", 1)[1] for cell in line.rstrip("\n").split("\t")[1:]]
    raise ValueError(f"no characteristic {key!r} in {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--probes", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="hard")
    parser.add_argument("--labs", type=int)
    parser.add_argument("--batch-strength", type=float)
    parser.add_argument("--lab-confounding", type=float)
    parser.add_argument("--scale", choices=["log2", "linear"])
    parser.add_argument("--ambiguous-fraction", type=float)
    parser.add_argument("--signal", type=float)
    args = parser.parse_args()
    options = preset_options(
        args.preset, labs=args.labs, batch_strength=args.batch_strength,
        lab_confounding=args.lab_confounding, scale=args.scale,
        ambiguous_fraction=args.ambiguous_fraction, signal=args.signal)
    print(f"{args.samples} samples x {args.probes} probes, {options}")
    rows = [score(args.samples, args.probes, seed, options) for seed in args.seeds]
    for row in rows:
        print("  " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in row.items()))
    accuracies = [row["accuracy"] for row in rows]
    print(f"mean accuracy {np.mean(accuracies):.4f} (min {min(accuracies):.4f}, "
          f"max {max(accuracies):.4f}) over seeds {args.seeds}")


if __name__ == "__main__":
    main()
