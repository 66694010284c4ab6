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
