"""Biological validation: do the models rank known lineage markers among their top genes?

Per final model, genes are ranked by the model's own importance (|coefficient| on standardized
genes for linear models, share of splits for the random forest, total gain for XGBoost; the DNN
has none). Among the top N, the number of known lineage markers (`reference.LINEAGE_MARKERS`)
is compared with chance by a hypergeometric test: population = the genes the model was given
(after any in-fold gene selection), successes = the markers among them, draws = N.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import LeukSparkError
from .metrics import marker_enrichment
from .reference import LINEAGE_MARKERS

MARKER_GENES = tuple(gene for gene, _, _ in LINEAGE_MARKERS)
MARKER_LINEAGE = {gene: lineage for gene, lineage, _ in LINEAGE_MARKERS}


def model_top_genes(bundle_dir: Path) -> pd.DataFrame | None:
    """(gene, importance, weight) of every gene the final model was given, most important first;
    None when the model has no per-gene importance or its bundle cannot be read."""
    from .bundle import load_bundle

    try:
        bundle = load_bundle(bundle_dir)
    except LeukSparkError:
        return None
    importances = bundle.spec.feature_importances(bundle.model)
    if importances is None:
        return None
    weights = bundle.spec.feature_weights(bundle.model)
    genes = np.asarray(bundle.gene_order, dtype=object)
    if bundle.preprocessor.selected_genes is not None:
        genes = genes[bundle.preprocessor.selected_genes]
    order = np.argsort(-np.asarray(importances, dtype=np.float64), kind="stable")
    frame = pd.DataFrame({"gene": genes[order], "importance": np.asarray(importances)[order],
                          "weight": np.asarray(weights)[order] if weights is not None else np.nan})
    frame["lineage_marker"] = frame["gene"].map(MARKER_LINEAGE).fillna("")
    return frame.reset_index(drop=True)


def enrichment_rows(model: str, top: pd.DataFrame, top_n: int) -> list[tuple]:
    """Long results rows (model, 'final', metric, value) of the marker enrichment among the top N."""
    ranked = [g for g, imp in zip(top["gene"], top["importance"]) if imp > 0]  # genes the model uses
    result = marker_enrichment(ranked, list(top["gene"]), MARKER_GENES, top_n)
    return [(model, "final", name, float(value)) for name, value in result.items()]
