"""Reference metadata of the MILE study (GEO series GSE13159, platform GPL570).

Two small real files ship inside the package (see ``leukspark/data/PROVENANCE.md``):

* ``GSE13159.info``: every sample of GSE13159 with its GSM id, title and MILE class;
* ``GPL570_annot.csv``: the GPL570 probes that have a gene symbol, with that symbol.

They are read from the installed package, never from outside it, so the project works
offline and anywhere it is installed.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.resources import files

import pandas as pd

# Package data sits next to this module. importlib.resources finds it in a source checkout,
# an installed copy and a --py-files zip alike (a path built from __file__ does not work in a
# zip); leukspark/data needs no __init__.py for files("leukspark").joinpath("data").
DATA_DIR = files("leukspark").joinpath("data")
MILE_SAMPLES_FILE = DATA_DIR / "GSE13159.info"
GPL570_SYMBOLS_FILE = DATA_DIR / "GPL570_annot.csv"

#: Number of probe sets on the GPL570 (HG-U133 Plus 2.0) array; only 45,782 of them have
#: a gene symbol in ``GPL570_annot.csv``.
GPL570_PROBE_COUNT = 54_675

#: Separator between the symbols of a probe set that matches several genes.
MULTI_GENE_SEPARATOR = " /// "

#: Lineage names used in ``load_mile_samples()["lineage"]``.
LINEAGE_ALL = "ALL"
LINEAGE_AML = "AML"
LINEAGE_OTHER = "other"

#: B-lymphoid (precursor) marker genes, highly expressed in B-cell ALL. CD10 is MME.
ALL_MARKERS: tuple[str, ...] = (
    "CD19", "CD79A", "VPREB1", "DNTT", "PAX5", "CD22", "MME", "EBF1", "IGLL1", "CD79B",
)

#: Myeloid marker genes, highly expressed in AML.
AML_MARKERS: tuple[str, ...] = (
    "MPO", "CD33", "LYZ", "CST3", "CEBPA", "CSF3R", "ELANE", "AZU1", "PRTN3", "CTSG",
)

#: Known lineage markers for biological validation of the models' top genes: (HGNC symbol,
#: lineage, basis). Provenance, honestly stated: the list was written from the leukemia
#: immunophenotyping literature by the developers, not extracted from a database, and the cited
#: texts could not be consulted from the (offline) build machine. The "EGIL" basis refers to the
#: lineage scoring system of the European Group for the Immunological Characterization of
#: Leukemias (Bene et al., Leukemia 1995;9:1783-1786), whose B, T and myeloid antigens (CD19,
#: CD79a, CD22, CD10/MME, TdT/DNTT; CD3, CD2, CD5, CD7, CD1a; MPO, lysozyme/LYZ, CD13/ANPEP,
#: CD33, CD117/KIT, CD14) are the proteins of these genes; the WHO classification of mixed-phenotype
#: acute leukemia uses MPO (myeloid), cytoplasmic CD3 (T) and CD19 with CD79a/CD22/CD10 (B) for
#: lineage assignment. The other genes are lineage transcription factors, pre-B receptor parts or
#: myeloid granule proteins (gene function per their HGNC names). The symbols are HGNC-approved
#: and each is on GPL570 in ``GPL570_annot.csv``. The first ten B and ten myeloid genes are
#: ALL_MARKERS and AML_MARKERS, which the synthetic generator plants; the T markers are extra.
LINEAGE_MARKERS: tuple[tuple[str, str, str], ...] = (
    ("CD19", "B-lymphoid", "EGIL B-lineage antigen; WHO MPAL B criterion"),
    ("CD79A", "B-lymphoid", "EGIL B-lineage antigen (cyCD79a); WHO MPAL B criterion"),
    ("CD79B", "B-lymphoid", "B-cell receptor signalling chain, partner of CD79A"),
    ("CD22", "B-lymphoid", "EGIL B-lineage antigen (cyCD22); WHO MPAL B criterion"),
    ("MME", "B-lymphoid", "CD10 (common ALL antigen); EGIL B-lineage antigen"),
    ("DNTT", "B-lymphoid", "TdT, precursor lymphoid (B and T) blast marker; EGIL"),
    ("VPREB1", "B-lymphoid", "surrogate light chain of the pre-B-cell receptor"),
    ("IGLL1", "B-lymphoid", "surrogate light chain (lambda5) of the pre-B-cell receptor"),
    ("PAX5", "B-lymphoid", "B-lineage commitment transcription factor"),
    ("EBF1", "B-lymphoid", "early B-cell transcription factor"),
    ("CD3E", "T-lymphoid", "CD3 epsilon; EGIL T-lineage antigen; WHO MPAL T criterion (cyCD3)"),
    ("CD3D", "T-lymphoid", "CD3 delta; EGIL T-lineage antigen (CD3)"),
    ("CD3G", "T-lymphoid", "CD3 gamma; EGIL T-lineage antigen (CD3)"),
    ("CD2", "T-lymphoid", "EGIL T-lineage antigen"),
    ("CD5", "T-lymphoid", "EGIL T-lineage antigen"),
    ("CD7", "T-lymphoid", "EGIL T-lineage antigen"),
    ("CD1A", "T-lymphoid", "EGIL T-lineage antigen (cortical thymocyte)"),
    ("MPO", "myeloid", "myeloperoxidase; EGIL myeloid antigen; WHO MPAL myeloid criterion"),
    ("LYZ", "myeloid", "lysozyme; EGIL myeloid antigen; WHO monocytic criterion"),
    ("CD33", "myeloid", "EGIL myeloid antigen"),
    ("ANPEP", "myeloid", "CD13; EGIL myeloid antigen"),
    ("KIT", "myeloid", "CD117; EGIL myeloid antigen"),
    ("CD14", "myeloid", "EGIL myeloid (monocytic) antigen"),
    ("CST3", "myeloid", "cystatin C, myeloid-expressed; among the AML genes of Golub et al., Science 1999"),
    ("CEBPA", "myeloid", "granulocytic lineage transcription factor"),
    ("CSF3R", "myeloid", "G-CSF receptor"),
    ("ELANE", "myeloid", "neutrophil elastase (azurophil granule)"),
    ("AZU1", "myeloid", "azurocidin (azurophil granule)"),
    ("PRTN3", "myeloid", "proteinase 3 (azurophil granule)"),
    ("CTSG", "myeloid", "cathepsin G (azurophil granule)"),
)

# Columns of GSE13159.info are separated by runs of two or more spaces (titles contain
# single spaces, e.g. "MILES stage 1 data N1_1925").
_COLUMN_SEPARATOR = re.compile(r"\s{2,}")


def lineage_of_class(mile_class: str) -> str:
    """Lineage of a MILE class name: "ALL" if it contains "ALL", "AML" if it starts with
    "AML", otherwise "other" (CLL, CML, MDS, non-leukemia)."""
    if "ALL" in mile_class:
        return LINEAGE_ALL
    if mile_class.startswith("AML"):
        return LINEAGE_AML
    return LINEAGE_OTHER


@lru_cache(maxsize=1)
def _read_mile_samples() -> pd.DataFrame:
    text = MILE_SAMPLES_FILE.read_text(encoding="utf-8")
    lines = text.splitlines()
    records = []
    for line_number, line in enumerate(lines[1:], start=2):  # line 1 is the header
        if not line.strip():
            continue
        fields = _COLUMN_SEPARATOR.split(line.strip())
        if len(fields) != 3:
            raise ValueError(
                f"{MILE_SAMPLES_FILE}:{line_number}: expected 3 columns separated by 2+ "
                f"spaces, got {len(fields)}: {line!r}"
            )
        gsm, title, mile_class = fields
        records.append((gsm, title, mile_class, lineage_of_class(mile_class)))
    return pd.DataFrame.from_records(records, columns=["gsm", "title", "mile_class", "lineage"])


def load_mile_samples() -> pd.DataFrame:
    """All 2,096 samples of GSE13159, in the file's order.

    Returns a DataFrame with string columns ``gsm`` (e.g. "GSM331561"), ``title`` (the GEO
    sample title), ``mile_class`` (one of the 18 MILE classes) and ``lineage`` ("ALL",
    "AML" or "other", see :func:`lineage_of_class`).
    """
    return _read_mile_samples().copy()


@lru_cache(maxsize=1)
def _read_gpl570_symbols() -> pd.DataFrame:
    # keep_default_na=False: a symbol such as "NA" must stay a string, not become NaN.
    with GPL570_SYMBOLS_FILE.open("rb") as handle:
        table = pd.read_csv(handle, dtype=str, keep_default_na=False)
    if list(table.columns) != ["probe_id", "gene"]:
        raise ValueError(f"{GPL570_SYMBOLS_FILE}: unexpected columns {list(table.columns)}")
    return table


def load_gpl570_symbols() -> pd.DataFrame:
    """GPL570 probe sets that have a gene symbol: 45,782 rows, columns ``probe_id, gene``.

    Probe sets matching several genes carry all their symbols joined by " /// "
    (e.g. "DDR1 /// MIR4640"). The other 8,893 probe sets of the array have no symbol and
    are not listed.
    """
    return _read_gpl570_symbols().copy()


# -- lineage programs of a sample ------------------------------------------------------------
#: The three programs scored per sample, from the genes of LINEAGE_MARKERS.
LINEAGE_PROGRAMS: tuple[str, ...] = ("B-lymphoid", "T-lymphoid", "myeloid")

#: A program is expressed in a sample when its markers sit on average this far (in within-sample
#: rank percentile) above the sample's median gene. 0.15 puts them in the sample's top 35 %: on the
#: GSEA Leukemia set every B-ALL scores B-lymphoid 0.24-0.39, AML T-lymphoid at most 0.16, and
#: Chiaretti's T-ALL score T-lymphoid 0.18-0.38 (benchmarks/results/abstention.md).
LINEAGE_EXPRESSED = 0.15

#: A program counts as covered by training when at least this share of one class's training
#: samples express it; one or two odd samples (an AML with some T-cell admixture) do not teach
#: the model a lineage.
LINEAGE_COVERED_SHARE = 0.10


def lineage_scores(matrix, gene_order) -> "np.ndarray":
    """(n samples x 3) program scores in LINEAGE_PROGRAMS order: the mean within-sample rank
    percentile of the program's marker genes minus the sample's median percentile (0.5).

    Ranks are taken over each sample's measured genes, so the score is the same on linear,
    log2, quantile- or rank-normalised values (any per-sample monotone map keeps the ranks).
    A program none of whose markers is among `gene_order`, or a sample with none of them
    measured, scores NaN.
    """
    return marker_set_scores(matrix, gene_order, _lineage_sets())


def _lineage_sets() -> list[list[str]]:
    return [[g for g, lineage, _ in LINEAGE_MARKERS if lineage == program] for program in LINEAGE_PROGRAMS]


def marker_set_scores(matrix, gene_order, marker_sets: list) -> "np.ndarray":
    """(n samples x len(marker_sets)): per sample and set, the mean within-sample rank percentile
    of the set's genes (over the sample's measured genes) minus 0.5; NaN where none is measured."""
    import numpy as np
    from scipy.stats import rankdata

    values = np.asarray(matrix, dtype=np.float64)
    if values.ndim == 1:
        values = values[None, :]
    position = {gene: i for i, gene in enumerate(gene_order)}
    columns = [[position[g] for g in genes if g in position] for genes in marker_sets]
    wanted = sorted({i for cols in columns for i in cols})
    scores = np.full((values.shape[0], len(marker_sets)), np.nan)
    if not wanted:
        return scores
    for row_index, row in enumerate(values):
        measured = np.isfinite(row)
        if not measured[wanted].any():
            continue
        percentile = np.full(row.size, np.nan)
        percentile[measured] = (rankdata(row[measured]) - 0.5) / measured.sum()
        for j, cols in enumerate(columns):
            marker_values = percentile[cols]
            if np.isfinite(marker_values).any():
                scores[row_index, j] = np.nanmean(marker_values) - 0.5
    return scores


# -- blast program: is this an acute leukemia at all? -----------------------------------------
#: Precursor (blast) cell markers of the two acute leukemias: TdT (DNTT), the pre-B surrogate light
#: chain (VPREB1, IGLL1) and CD34 in lymphoblasts; the azurophil granule proteins of myeloblasts and
#: promyelocytes (MPO, ELANE, AZU1, PRTN3, CTSG) with CD34 and CD117 (KIT). An acute leukemia sample
#: is mostly blasts, so one of the two sets sits high in its ranks; CLL (mature B cells), chronic-phase
#: CML and most MDS or normal marrow hold few blasts (WHO: acute leukemia needs >= 20 % blasts).
BLAST_MARKER_SETS: dict[str, tuple[str, ...]] = {
    "lymphoblast": ("DNTT", "VPREB1", "IGLL1", "CD34"),
    "myeloblast": ("MPO", "ELANE", "AZU1", "PRTN3", "CTSG", "CD34", "KIT"),
}
#: Secondary (specific) granule proteins, made from the myelocyte stage on: lactoferrin (LTF),
#: cathelicidin (CAMP), neutrophil collagenase (MMP8), CD66b (CEACAM8), lipocalin 2 (LCN2). High in
#: CML and normal marrow, low in AML blasts, monocytic AML included (whose mature markers, CD14, LYZ,
#: S100A8/9, are therefore not used here).
MATURE_GRANULOCYTE_MARKERS: tuple[str, ...] = ("LTF", "CAMP", "MMP8", "CEACAM8", "LCN2")


def blast_index(matrix, gene_order) -> "np.ndarray":
    """Per sample: the stronger of the two blast marker-set scores minus the mature granulocyte
    score (that part 0 where none of its genes is measured); NaN when no blast marker is measured.
    Within-sample ranks only, so scale-free like `lineage_scores`. Low: few blasts, many maturing
    cells - not what an ALL/AML model was trained on."""
    return _blast_from_set_scores(marker_set_scores(matrix, gene_order, _blast_sets()))


def lineage_and_blast_scores(matrix, gene_order) -> tuple:
    """(`lineage_scores`, `blast_index`) from one ranking of each sample (the ranks are the cost)."""
    scores = marker_set_scores(matrix, gene_order, _lineage_sets() + _blast_sets())
    n_lineage = len(LINEAGE_PROGRAMS)
    return scores[:, :n_lineage], _blast_from_set_scores(scores[:, n_lineage:])


def _blast_sets() -> list[list[str]]:
    return [list(s) for s in (*BLAST_MARKER_SETS.values(), MATURE_GRANULOCYTE_MARKERS)]


def _blast_from_set_scores(scores):
    """The blast index from the set scores of `_blast_sets` (blast sets first, the mature set last)."""
    import numpy as np

    blast = scores[:, : len(BLAST_MARKER_SETS)]
    has_blast = np.isfinite(blast).any(axis=1)
    strongest = np.max(np.where(np.isfinite(blast), blast, -np.inf), axis=1)
    mature = np.nan_to_num(scores[:, -1], nan=0.0)
    return np.where(has_blast, strongest - mature, np.nan)


def lineage_coverage(scores, labels) -> dict:
    """{class: {program: share of the class's training samples expressing it}} (NaN scores skipped)."""
    import numpy as np

    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    coverage = {}
    for label in sorted(set(labels.tolist())):
        part = scores[labels == label]
        coverage[str(label)] = {program: (float(np.mean(part[np.isfinite(part[:, j]), j] >= LINEAGE_EXPRESSED))
                                          if np.isfinite(part[:, j]).any() else None)
                                for j, program in enumerate(LINEAGE_PROGRAMS)}
    return coverage


def unseen_lineages(sample_scores, coverage: dict) -> list[str]:
    """The programs a sample expresses that no training class covered (LINEAGE_COVERED_SHARE)."""
    import numpy as np

    unseen = []
    for j, program in enumerate(LINEAGE_PROGRAMS):
        value = sample_scores[j]
        shares = [c.get(program) for c in coverage.values() if c.get(program) is not None]
        if not shares or not np.isfinite(value) or value < LINEAGE_EXPRESSED:
            continue
        if max(shares) < LINEAGE_COVERED_SHARE:
            unseen.append(program)
    return unseen


def dominant_lineage(sample_scores) -> str | None:
    """The highest-scoring program when it is expressed, 'none' when none is, None when unscored."""
    import numpy as np

    values = np.asarray(sample_scores, dtype=np.float64)
    if not np.isfinite(values).any():
        return None
    best = int(np.nanargmax(values))
    return LINEAGE_PROGRAMS[best] if values[best] >= LINEAGE_EXPRESSED else "none"


# The programs an ALL or an AML call should not be dominated by: a lymphoblast expresses its
# lymphoid program (B or T), a myeloblast its myeloid one. Measured on the real cohorts here, every
# GSEA Leukemia and Chiaretti ALL's dominant program is lymphoid and 19 of GSEA's 24 AML's myeloid
# (1 B, 1 T, 3 none), so a call against the dominant program is rare when right: the 10 B-ALL a
# GSEA-trained linear SVM calls AML in Chiaretti are all B-lymphoid dominant (issue 23).
CONFLICTING_PROGRAMS = {"AML": ("B-lymphoid", "T-lymphoid"), "ALL": ("myeloid",)}


def lineage_conflict(sample_scores, call: str | None) -> str | None:
    """The dominant program of a sample when it contradicts its ALL/AML call, else None."""
    dominant = dominant_lineage(sample_scores)
    return dominant if dominant in CONFLICTING_PROGRAMS.get(call, ()) else None

