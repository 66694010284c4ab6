"""Synthetic GSE13159-like microarray series, written in real GEO file formats.

The MILE study (GEO series GSE13159, platform GPL570) is too large to ship and cannot be
downloaded here, so tests, benchmarks and demos run on a synthetic stand-in that has its
shape and its metadata: the real GSM ids, titles and MILE classes of GSE13159, the real
GPL570 probe ids and gene symbols, and log2-scale values from a simple generative model
in which ALL and AML differ the way they do in real bone marrow: strong B-lymphoid,
T-lymphoid and myeloid marker genes, plus a broad lymphoid-vs-myeloid program in which
about 12% of all genes are up in one lineage by a moderate amount (so that any sizeable
probe subset holds hundreds of informative genes and the lineages separate in a PCA).

:func:`write_synthetic_series` writes, into one directory:

* ``<accession>_family.soft.gz``: a family SOFT file (series, platform, one block per
  sample), the format GEO serves and GEOparse reads;
* ``<accession>_series_matrix.txt.gz``: the series matrix (metadata rows, then one row
  per probe and one column per sample);
* ``GPL570_annotation.csv``: ``probe_id,gene`` for the probes written.

The values are not measurements: every file says so in its series summary.

Model, per probe ``p`` of gene ``g`` and sample ``s`` (values are log2 intensities)::

    gene signal  S[g,s] = programs[g] . loading[s]      lineage programs (broad lymphoid and
                                                          myeloid ones, B, T, blast...)
                        + subtype[g, class(s)] * blast[s]  each MILE class shifts its own genes
                        + factors[g] . z[s]               low-rank biological variation
                        + idio[g] * N(0,1)               gene-specific variation
    probe value  x[p,s] = baseline[p] + response[p] * mean(S[genes of p], s)
                        + centre[p, centre(s)] + noise_sd[p] * quality[s] * N(0,1)
    written      v[p,s] = 8 + scale[s] * (x[p,s] - 8) + shift[s], clipped to [1, 16]

Probes of one gene share its signal, so they are correlated; a sample's ``loading`` is its
class profile diluted by normal marrow according to its blast fraction, with marker
dropout, aberrant cross-lineage expression and a few ambiguous (mixed-lineage) samples,
so that a good classifier is very accurate but not trivially perfect.

Real-cohort settings (all off by default, which writes the files of earlier versions):

* ``labs=K``: each sample belongs to a lab (``lab: L3``), which adds to ``x`` a per-probe
  shift and the log2 of an intensity factor, and multiplies the probe noise, all scaled
  by ``batch_strength``; ``lab_confounding`` makes the lab mix depend on the lineage;
* ``scale="linear"``: ``v = LINEAR_GAIN * 2**x + background noise`` (MAS5-like values,
  some negative) instead of the clipped log2 value;
* ``ambiguous_fraction``: exactly that share of the ALL/AML samples get a mixed-lineage
  profile (instead of the built-in ~2%, drawn per sample);
* ``signal``: scales the programs and subtype signatures (the class-dependent part of S);
* ``subtype_overlap``: each leukemic sample's subtype signature is mixed with that of another
  class of its lineage, with a weight drawn uniformly from [0, subtype_overlap] per sample
  (real subtypes share much of their expression: the MILE classifier's errors are mostly
  within a lineage), so that subtype calls are hard while the lineage signal is unchanged.

``PRESETS["hard"]`` combines them (see docs/synthetic.md for measured accuracies).

Everything is drawn from ``numpy.random.Generator`` streams keyed by ``(seed, stream,
block)`` and the gzip headers carry no time stamp, so the same arguments give
byte-identical files.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from .reference import (
    ALL_MARKERS,
    AML_MARKERS,
    GPL570_PROBE_COUNT,
    LINEAGE_ALL,
    LINEAGE_AML,
    LINEAGE_OTHER,
    MULTI_GENE_SEPARATOR,
    load_gpl570_symbols,
    load_mile_samples,
)

# --------------------------------------------------------------------------------------
# Public surface
# --------------------------------------------------------------------------------------

PLATFORM_ID = "GPL570"
PLATFORM_TITLE = "[HG-U133_Plus_2] Affymetrix Human Genome U133 Plus 2.0 Array"
SERIES_TITLE = "Microarray Innovations in LEukemia (MILE) study: Stage 1 data (synthetic values)"
ANNOTATION_FILE_NAME = "GPL570_annotation.csv"
LEUKEMIA_CLASS_KEY = "leukemia class"
TISSUE_KEY = "tissue"
BONE_MARROW = "bone marrow"
PERIPHERAL_BLOOD = "peripheral blood"

#: Ids given to the GPL570 probe sets that ``GPL570_annot.csv`` does not list (it only has
#: the 45,782 with a symbol): ``1600001_at``, ``1600002_at``, ... They are shaped like
#: Affymetrix ids but lie above every numeric id of GPL570_annot.csv (the highest is
#: 1570651_at; the platform's numeric ids stop in the 157xxxx range), so they cannot
#: collide with a real id (checked in ``_probe_universe``).
FIRST_SYNTHETIC_PROBE_NUMBER = 1_600_001

#: Where the embedded demo series lives (see :func:`demo_series_dir`).
DEMO_DIR = Path(__file__).resolve().parent / "data" / "demo"


@dataclass
class SynthResult:
    """Paths and ids of one synthetic series written by :func:`write_synthetic_series`."""

    family_soft: Path  # <out>/<accession>_family.soft.gz
    series_matrix: Path | None  # <out>/<accession>_series_matrix.txt.gz (None if not written)
    annotation_csv: Path  # <out>/GPL570_annotation.csv (probe_id,gene for the probes used)
    sample_ids: list[str]  # GSM ids, in the order written
    probe_ids: list[str]  # probe ids, in the order written (sorted like GPL570 tables)
    accession: str
    #: Lab of each sample ("L1".."LK", in ``sample_ids`` order); empty when ``labs == 1``
    #: (no lab is recorded in the files then).
    sample_labs: list[str] = field(default_factory=list)
    #: GSM ids of the ALL/AML samples given a mixed-lineage (ambiguous) profile. They keep
    #: their MILE class; nothing in the files marks them.
    ambiguous_ids: list[str] = field(default_factory=list)


#: Named sets of the "real cohort" settings of :func:`write_synthetic_series`. ``default``
#: is what the generator does when none is given; ``hard`` is a multi-lab series on which
#: a plain classifier is no longer perfect (docs/synthetic.md has the measured accuracies).
PRESETS: dict[str, dict[str, object]] = {
    "default": {
        "labs": 1, "batch_strength": 1.0, "lab_confounding": 0.0, "scale": "log2",
        "ambiguous_fraction": None, "signal": 1.0, "subtype_overlap": 0.0,
    },
    "hard": {
        "labs": 11, "batch_strength": 1.5, "lab_confounding": 0.5, "scale": "log2",
        "ambiguous_fraction": 0.03, "signal": 0.25, "subtype_overlap": 0.6,
    },
}
SCALES = ("log2", "linear")


def preset_options(name: str = "default", **overrides) -> dict[str, object]:
    """The cohort settings of preset ``name``, with the ``overrides`` that are not None
    replacing its values: keyword arguments for :func:`write_synthetic_series`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    unknown = set(overrides) - set(PRESETS[name])
    if unknown:
        raise ValueError(f"not a preset setting: {', '.join(sorted(unknown))}")
    options = dict(PRESETS[name])
    options.update({key: value for key, value in overrides.items() if value is not None})
    return options


def demo_series_dir() -> Path:
    """Directory of the embedded demo series: 120 samples x 3,000 probes, seed 7.

    It holds ``GSE13159_family.soft.gz``, ``GSE13159_series_matrix.txt.gz`` and
    ``GPL570_annotation.csv``, written by ``write_synthetic_series(out, n_samples=120,
    n_probes=3000, seed=7, accession="GSE13159", compress_level=9)`` (the level changes
    the gzip bytes only, not the content).
    """
    return DEMO_DIR


#: Series of a multi-series lake (``series_index`` k > 0): accession ``GSE{SYNTHETIC_SERIES_BASE + k}``
#: and sample ids ``GSM{SYNTHETIC_GSM_BASE + k * 10,000 + r}`` (r: the sample's row in
#: GSE13159.info, 0..2,095). GEO's accessions stop far below these (GSE ~300,000, GSM ~9
#: million in 2025), so they cannot be taken for real series or samples, and no two series share one.
SYNTHETIC_SERIES_BASE = 90_000_000
SYNTHETIC_GSM_BASE = 900_000_000
MAX_SERIES_INDEX = 9_999
_SERIES_SEED_KEY = 0x5E21E5   # keys the seed of series k > 0 apart from every stream of `_rng`


def series_accession(series_index: int) -> str:
    """GSE13159 for series 0; an invented ``GSE9000000k`` for series k > 0."""
    return "GSE13159" if series_index == 0 else f"GSE{SYNTHETIC_SERIES_BASE + int(series_index)}"


def series_sample_ids(rows, series_index: int) -> list[str]:
    """GSM ids of series ``series_index`` > 0 for GSE13159.info rows ``rows``: disjoint across series."""
    return [f"GSM{SYNTHETIC_GSM_BASE + int(series_index) * 10_000 + int(r)}" for r in rows]


def series_seed(seed: int, series_index: int) -> int:
    """The seed of everything drawn per series (samples, noise, centres, labs): ``seed`` itself
    for series 0, a 63-bit number derived from ``(seed, series_index)`` for the others."""
    if series_index == 0:
        return int(seed)
    state = np.random.SeedSequence([int(seed), _SERIES_SEED_KEY, int(series_index)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) | (int(state[1]) >> 1))


def synthetic_probe_ids(count: int) -> list[str]:
    """Ids for the GPL570 probe sets without a symbol: ``1600001_at``, ``1600002_at``, ..."""
    return [f"{FIRST_SYNTHETIC_PROBE_NUMBER + i}_at" for i in range(count)]


def write_synthetic_series(
    out_dir: str | os.PathLike,
    n_samples: int = 2096,
    n_probes: int = GPL570_PROBE_COUNT,
    seed: int = 0,
    *,
    accession: str | None = None,
    series_index: int = 0,
    write_matrix: bool = True,
    compress_level: int = 1,
    missing_fraction: float = 1e-5,
    labs: int = 1,
    batch_strength: float = 1.0,
    lab_confounding: float = 0.0,
    scale: str = "log2",
    ambiguous_fraction: float | None = None,
    signal: float = 1.0,
    subtype_overlap: float = 0.0,
) -> SynthResult:
    """Write a synthetic GSE13159-like series (family SOFT, series matrix, annotation CSV).

    Args:
        out_dir: directory to write into (created if missing).
        n_samples: number of samples, 1..2,096. Fewer than 2,096 picks a subset stratified
            by MILE class (every class represented when ``n_samples >= 18``, proportions
            kept); 2,096 takes every sample in the order of ``GSE13159.info``.
        n_probes: number of probes, from the number of marker probes (38) to 54,675.
            A subset always holds every probe of ``ALL_MARKERS`` and ``AML_MARKERS`` and
            keeps the platform's share of multi-gene and symbol-less probes.
        seed: non-negative integer; the same arguments give byte-identical files.
        accession: series accession used in the file names and records (default: GSE13159
            for series 0, :func:`series_accession` for the others).
        series_index: which series of a multi-series lake to write (0..MAX_SERIES_INDEX). 0 is
            GSE13159 itself (the files of earlier versions). Series ``k > 0`` are further
            GSE13159-shaped series of the same disease and platform: their own accession and
            GSM ids (:func:`series_sample_ids`), their own samples, noise, centres and labs
            (lab effects drawn afresh, lab names ``L{k*labs+1}``..), from a seed derived from
            ``(seed, k)`` (:func:`series_seed`); the gene model and the probe parameters (the
            biology and the GPL570 platform) are those of ``seed``.
        write_matrix: also write the series matrix.
        compress_level: gzip level (1 is several times faster than 6 and 9).
        missing_fraction: share of values written as ``null`` (rounded to a whole count).
        labs: number of laboratories (1..100). With more than one, every sample is assigned
            to a lab (characteristic ``lab: L3`` and a ``!Sample_description`` line) and each
            lab adds its own batch effect: a per-probe additive shift, a multiplicative
            intensity factor and its own noise level. 1 (the default): no lab, no batch
            effect, the files of earlier versions.
        batch_strength: scales the three lab effects (0: labs recorded but no effect).
        lab_confounding: 0..1, how much a sample's lab depends on its lineage (ALL, AML,
            other): 0 gives every lineage the same lab mix, 1 gives each lineage its own
            strongly skewed mix (real centres saw different case mixes).
        scale: ``log2`` (default) or ``linear``: MAS5-style signal, ``GAIN * 2**x`` plus
            additive background noise (so that low values can be negative), one decimal.
        ambiguous_fraction: share of the ALL/AML samples written with a mixed-lineage
            profile (a blend of the lymphoid and myeloid programs; exactly
            ``round(fraction * n_ALL_AML)`` of the selected ones, class kept). None (the
            default): the built-in rate of ~2%, drawn per sample.
        signal: scales the biological (lineage and subtype) signal; 1 is the default,
            smaller values make the classes overlap more.
        subtype_overlap: the most of an ALL/AML sample's subtype signature moved to another
            class of its lineage (weight U(0, subtype_overlap) per sample); 0 (the default)
            draws nothing, so the files of earlier versions are unchanged.

    Returns:
        A :class:`SynthResult` with the paths written and the sample and probe ids.
    """
    _check_arguments(n_samples, n_probes, seed, compress_level, missing_fraction)
    if not isinstance(series_index, (int, np.integer)) or not 0 <= series_index <= MAX_SERIES_INDEX:
        raise ValueError(f"series_index must be an integer in 0..{MAX_SERIES_INDEX}, got {series_index!r}")
    accession = accession or series_accession(series_index)
    own_seed = series_seed(seed, series_index)
    cohort = _Cohort(
        labs=labs, batch_strength=batch_strength, lab_confounding=lab_confounding,
        scale=scale, ambiguous_fraction=ambiguous_fraction, signal=signal, subtype_overlap=subtype_overlap,
    )
    cohort.check()
    out_path = Path(out_dir)
    out_path.mkdir(parents=True, exist_ok=True)

    samples = _select_samples(n_samples, own_seed)
    probes = _select_probes(n_probes, seed)
    genes = _gene_model(seed)
    sample_model = _sample_model(samples, own_seed, genes, cohort, lab_base=series_index * labs)
    samples = samples.assign(tissue=sample_model.tissue, lab=sample_model.lab_name)
    if series_index:
        samples = samples.assign(gsm=series_sample_ids(samples["row"], series_index),
                                 title=[f"{t} (synthetic series {series_index}, {accession})" for t in samples["title"]])
    codes = _simulate_codes(probes, seed, missing_fraction, genes, sample_model, cohort,
                            series_seed=own_seed if series_index else None)

    header_note = (
        f"Synthetic expression values generated by leukspark.synth.write_synthetic_series("
        f"n_samples={n_samples}, n_probes={n_probes}, seed={seed}, "
        f"missing_fraction={missing_fraction!r}{cohort.call_text()}"
        f"{f', series_index={series_index}' if series_index else ''}); "
        f"they are not measurements. "
        + ("Sample ids, titles and classes are those of GEO series GSE13159; " if not series_index else
           f"Sample ids ({SYNTHETIC_GSM_BASE}+) and the accession are invented; titles and classes are "
           f"those of GEO series GSE13159; ")
        + f"probe ids and gene symbols "
        f"are those of GPL570, except the probe sets without a symbol, whose ids "
        f"({FIRST_SYNTHETIC_PROBE_NUMBER}_at onwards) are invented."
    )
    series = _SeriesText(
        accession=accession, samples=samples, probes=probes, note=header_note, cohort=cohort
    )

    annotation_csv = out_path / ANNOTATION_FILE_NAME
    _write_atomically(annotation_csv, lambda f: f.write(_annotation_csv_bytes(probes)))

    family_soft = out_path / f"{accession}_family.soft.gz"
    series_matrix = out_path / f"{accession}_series_matrix.txt.gz" if write_matrix else None
    jobs = [(family_soft, _soft_chunks(series, codes))]
    if series_matrix is not None:
        jobs.append((series_matrix, _matrix_chunks(series, codes)))
    # One thread formats each file; a shared pool of threads compresses (zlib and most
    # numpy kernels release the GIL, so this uses every core).
    with ThreadPoolExecutor(max_workers=_compression_threads()) as compressors:
        with ThreadPoolExecutor(max_workers=len(jobs)) as writers:
            futures = [
                writers.submit(_write_gzip, path, chunks, compress_level, compressors)
                for path, chunks in jobs
            ]
            for future in futures:
                future.result()

    return SynthResult(
        family_soft=family_soft,
        series_matrix=series_matrix,
        annotation_csv=annotation_csv,
        sample_ids=list(samples["gsm"]),
        probe_ids=list(probes["probe_id"]),
        accession=accession,
        sample_labs=list(samples["lab"]) if cohort.has_labs else [],
        ambiguous_ids=list(samples["gsm"][sample_model.ambiguous]),
    )


def _compression_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class _Cohort:
    """The "real cohort" settings: labs and batch effects, scale, ambiguity, signal."""

    labs: int = 1
    batch_strength: float = 1.0
    lab_confounding: float = 0.0
    scale: str = "log2"
    ambiguous_fraction: float | None = None
    signal: float = 1.0
    subtype_overlap: float = 0.0

    @property
    def has_labs(self) -> bool:
        return self.labs > 1

    @property
    def linear(self) -> bool:
        return self.scale == "linear"

    def check(self) -> None:
        if not isinstance(self.labs, (int, np.integer)) or not 1 <= self.labs <= MAX_LABS:
            raise ValueError(f"labs must be an integer in 1..{MAX_LABS}, got {self.labs!r}")
        if not 0.0 <= self.batch_strength <= 10.0:
            raise ValueError(f"batch_strength must be in [0, 10], got {self.batch_strength}")
        if not 0.0 <= self.lab_confounding <= 1.0:
            raise ValueError(f"lab_confounding must be in [0, 1], got {self.lab_confounding}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {self.scale!r}")
        if self.ambiguous_fraction is not None and not 0.0 <= self.ambiguous_fraction <= 1.0:
            raise ValueError(
                f"ambiguous_fraction must be in [0, 1] or None, got {self.ambiguous_fraction}"
            )
        if not 0.0 < self.signal <= 10.0:
            raise ValueError(f"signal must be in (0, 10], got {self.signal}")
        if not 0.0 <= self.subtype_overlap <= 1.0:
            raise ValueError(f"subtype_overlap must be in [0, 1], got {self.subtype_overlap}")

    def call_text(self) -> str:
        """The settings that differ from the defaults, as keyword arguments (or "")."""
        defaults = _Cohort()
        changed = [
            f"{name}={getattr(self, name)!r}"
            for name in ("labs", "batch_strength", "lab_confounding", "scale",
                         "ambiguous_fraction", "signal", "subtype_overlap")
            if getattr(self, name) != getattr(defaults, name)
        ]
        return "".join(f", {text}" for text in changed)


def _check_arguments(
    n_samples: int, n_probes: int, seed: int, compress_level: int, missing_fraction: float
) -> None:
    total_samples = len(load_mile_samples())
    if not 1 <= n_samples <= total_samples:
        raise ValueError(f"n_samples must be in 1..{total_samples}, got {n_samples}")
    marker_probes = int(_probe_universe()["is_marker"].sum())
    if not marker_probes <= n_probes <= GPL570_PROBE_COUNT:
        raise ValueError(
            f"n_probes must be in {marker_probes}..{GPL570_PROBE_COUNT} (every marker probe "
            f"is always written), got {n_probes}"
        )
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level must be in 0..9, got {compress_level}")
    if not 0.0 <= missing_fraction < 1.0:
        raise ValueError(f"missing_fraction must be in [0, 1), got {missing_fraction}")


# --------------------------------------------------------------------------------------
# Random streams: one generator per (seed, purpose, block), so that results do not depend
# on the order in which blocks are computed.
# --------------------------------------------------------------------------------------

_STREAM_SAMPLE_CHOICE = 1
_STREAM_PROBE_CHOICE = 2
_STREAM_GENE_PARAMETERS = 10
_STREAM_PROBE_PARAMETERS = 11
_STREAM_SAMPLE_PARAMETERS = 12
_STREAM_GENE_NOISE = 20
_STREAM_PROBE_NOISE = 21
_STREAM_MISSING = 30
# Streams of the cohort settings (labs, ambiguity, linear scale): the default settings
# draw nothing from them, so the files of earlier versions are unchanged.
_STREAM_LAB_ASSIGNMENT = 40
_STREAM_LAB_PARAMETERS = 41
_STREAM_AMBIGUOUS_CHOICE = 42
_STREAM_BACKGROUND_NOISE = 43
_STREAM_SUBTYPE_OVERLAP = 44
_STREAM_CENTRE_OFFSETS = 45   # series k > 0 only


def _rng(seed: int, stream: int, block: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream, block])


# --------------------------------------------------------------------------------------
# Samples and probes
# --------------------------------------------------------------------------------------


def _select_samples(n_samples: int, seed: int) -> pd.DataFrame:
    """Real GSE13159 samples, stratified by MILE class, in the file's order.

    The returned frame keeps ``row`` (the sample's position in GSE13159.info), which keys
    the per-sample parameters so that a sample looks the same in every subset.
    """
    table = load_mile_samples()
    table["row"] = np.arange(len(table))
    if n_samples == len(table):
        return table

    classes = sorted(table["mile_class"].unique())
    sizes = np.array([(table["mile_class"] == c).sum() for c in classes])
    quotas = _stratified_quotas(sizes, n_samples)
    rng = _rng(seed, _STREAM_SAMPLE_CHOICE)
    chosen: list[np.ndarray] = []
    for mile_class, quota in zip(classes, quotas):
        rows = np.flatnonzero(table["mile_class"].to_numpy() == mile_class)
        chosen.append(rng.choice(rows, size=int(quota), replace=False))
    picked = np.sort(np.concatenate(chosen))
    return table.iloc[picked].reset_index(drop=True)


def _stratified_quotas(sizes: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over groups in proportion to ``sizes`` (largest remainders), giving
    every group at least one when ``total`` allows it."""
    expected = total * sizes / sizes.sum()
    quotas = np.floor(expected).astype(int)
    if total >= len(sizes):
        quotas = np.maximum(quotas, 1)
    quotas = np.minimum(quotas, sizes)
    shortfall = total - int(quotas.sum())
    # Stable sorts: ties go to the group listed first, so quotas depend on sizes only.
    if shortfall > 0:
        order = np.argsort(-(expected - quotas), kind="stable")
        for group in order:
            if shortfall == 0:
                break
            if quotas[group] < sizes[group]:
                quotas[group] += 1
                shortfall -= 1
    elif shortfall < 0:
        floor = 1 if total >= len(sizes) else 0
        order = np.argsort(expected - quotas, kind="stable")  # most over-served first
        while shortfall < 0:
            for group in order:
                if shortfall == 0:
                    break
                if quotas[group] > floor:
                    quotas[group] -= 1
                    shortfall += 1
    return quotas


@lru_cache(maxsize=1)
def _probe_universe() -> pd.DataFrame:
    """All 54,675 GPL570 probes: the 45,782 real ones with a symbol, then generated ids.

    Columns: ``probe_id``, ``gene`` ("" when none), ``kind`` ("single", "multi", "none")
    and ``is_marker`` (the probe measures one of ALL_MARKERS / AML_MARKERS).
    """
    real = load_gpl570_symbols()
    generated = synthetic_probe_ids(GPL570_PROBE_COUNT - len(real))
    universe = pd.DataFrame(
        {
            "probe_id": list(real["probe_id"]) + generated,
            "gene": list(real["gene"]) + [""] * len(generated),
        }
    )
    if not universe["probe_id"].is_unique:
        raise AssertionError("generated probe ids collide with real GPL570 ids")
    universe["kind"] = np.where(
        universe["gene"] == "",
        "none",
        np.where(
            universe["gene"].str.contains(MULTI_GENE_SEPARATOR, regex=False), "multi", "single"
        ),
    )
    markers = set(ALL_MARKERS) | set(AML_MARKERS)
    universe["is_marker"] = [
        bool(markers.intersection(gene.split(MULTI_GENE_SEPARATOR))) for gene in universe["gene"]
    ]
    return universe


def _select_probes(n_probes: int, seed: int) -> pd.DataFrame:
    """A deterministic probe subset in GPL570 table order (ids sorted as strings).

    Every marker probe is kept; the rest is drawn so that single-gene, multi-gene and
    symbol-less probes keep their share of the whole platform. The frame keeps ``row``
    (the probe's position in the universe), which keys the per-probe parameters.
    """
    universe = _probe_universe().copy()
    universe["row"] = np.arange(len(universe))
    if n_probes < len(universe):
        kinds = ["single", "multi", "none"]
        sizes = np.array([(universe["kind"] == k).sum() for k in kinds])
        quotas = _stratified_quotas(sizes, n_probes)
        forced = np.array([(universe["is_marker"] & (universe["kind"] == k)).sum() for k in kinds])
        # Markers count towards their kind's quota; take what they need from the others.
        quotas = _rebalance_for_forced(quotas, forced, sizes)
        rng = _rng(seed, _STREAM_PROBE_CHOICE)
        chosen: list[np.ndarray] = []
        for kind, quota in zip(kinds, quotas):
            in_kind = universe["kind"].to_numpy() == kind
            marker_rows = np.flatnonzero(in_kind & universe["is_marker"].to_numpy())
            other_rows = np.flatnonzero(in_kind & ~universe["is_marker"].to_numpy())
            extra = rng.choice(other_rows, size=int(quota) - len(marker_rows), replace=False)
            chosen.extend([marker_rows, extra])
        universe = universe.iloc[np.sort(np.concatenate(chosen))]
    # GEO platform tables list probe sets sorted by id, as GPL570_annot.csv does.
    return universe.sort_values("probe_id", kind="stable").reset_index(drop=True)


def _rebalance_for_forced(quotas: np.ndarray, forced: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    quotas = quotas.copy()
    deficit = np.maximum(forced - quotas, 0)
    quotas = np.maximum(quotas, forced)
    to_remove = int(deficit.sum())
    for group in np.argsort(-(quotas - forced), kind="stable"):
        take = min(to_remove, int(quotas[group] - forced[group]))
        quotas[group] -= take
        to_remove -= take
    if to_remove or np.any(quotas > sizes):
        raise ValueError("cannot fit the marker probes into the requested number of probes")
    return quotas


# --------------------------------------------------------------------------------------
# The expression model
# --------------------------------------------------------------------------------------

# Lineage programs: sets of genes that move together with a cell type's share of the
# sample. The two broad programs ("lymphoid", "myeloid") carry the genome-wide lineage
# difference: LINEAGE_GENE_SHARE of all genes with a symbol, each up in one of the two
# lineages (see _gene_model). The narrower programs each have strong marker genes (log2
# effects) and a number of random genes with weak to moderate effects of either sign.
PROGRAMS = (
    "lymphoid",  # any lymphoid cell, B or T, precursor or mature (broad program)
    "myeloid",  # any myeloid cell, blast or maturing (broad program)
    "lymphoblast",  # precursor lymphoid blasts, B and T (TdT)
    "b_lineage",  # B cells at any stage
    "b_precursor",  # pre-B: surrogate light chain, CD10
    "t_lineage",  # T cells
    "myeloid_blast",  # myeloblasts / promyelocytes (granule proteins)
    "myeloid_mature",  # maturing granulocytes and monocytes
    "peripheral_blood",  # sample drawn from blood rather than marrow
)
PROGRAM_MARKERS: dict[str, dict[str, float]] = {
    "lymphoblast": {"DNTT": 3.5},
    "b_lineage": {"CD19": 3.0, "CD79A": 3.2, "CD79B": 2.8, "PAX5": 2.8, "CD22": 2.6, "EBF1": 2.8},
    "b_precursor": {"VPREB1": 3.0, "IGLL1": 3.2, "MME": 3.0},
    "t_lineage": {"CD3E": 3.0, "CD3D": 3.0, "CD7": 3.0, "CD2": 2.5, "LCK": 2.5},
    "myeloid_blast": {
        "MPO": 3.5, "CD33": 2.8, "ELANE": 3.0, "AZU1": 3.2, "PRTN3": 3.0, "CTSG": 3.0,
        "CEBPA": 2.6, "CSF3R": 2.0, "LYZ": 2.0, "CST3": 2.0,
    },
    "myeloid_mature": {
        "LYZ": 2.0, "CST3": 1.5, "CSF3R": 2.5, "S100A8": 3.0, "S100A9": 3.0, "LTF": 3.0,
        "CAMP": 3.0, "CD14": 2.0,
    },
    "peripheral_blood": {},
    "lymphoid": {},
    "myeloid": {},
}
PROGRAM_RANDOM_GENES = {
    "lymphoid": 0, "myeloid": 0,  # drawn as one lineage gene set instead (_gene_model)
    "lymphoblast": 250, "b_lineage": 120, "b_precursor": 60, "t_lineage": 100,
    "myeloid_blast": 300, "myeloid_mature": 120, "peripheral_blood": 60,
}

_B_PRECURSOR_ALL = {"lymphoid": 1.0, "lymphoblast": 1.0, "b_lineage": 1.0, "b_precursor": 1.0}
_TYPICAL_AML = {"myeloid": 1.0, "myeloid_blast": 1.0, "myeloid_mature": 0.3}
#: Normal marrow: what a sample holds besides its leukemic blasts (mostly myeloid cells).
NORMAL_MARROW = {
    "lymphoid": 0.2, "myeloid": 0.7,
    "myeloid_blast": 0.25, "myeloid_mature": 0.8, "b_lineage": 0.15, "b_precursor": 0.05,
    "lymphoblast": 0.05, "t_lineage": 0.1,
}
#: Program loadings of each MILE class's leukemic cells. Known phenotypes are kept where
#: they matter (TdT-negative mature B-ALL, CD10-negative pro-B ALL, CD19+ AML t(8;21)...).
CLASS_PROFILES: dict[str, dict[str, float]] = {
    "c-ALL/Pre-B-ALL without t(9;22)": _B_PRECURSOR_ALL,
    "c-ALL/Pre-B-ALL with t(9;22)": {**_B_PRECURSOR_ALL, "myeloid": 0.1, "myeloid_blast": 0.1},
    "ALL with hyperdiploid karyotype": _B_PRECURSOR_ALL,
    "ALL with t(12;21)": _B_PRECURSOR_ALL,
    "ALL with t(1;19)": _B_PRECURSOR_ALL,
    "Pro-B-ALL with t(11q23)/MLL": {
        "lymphoid": 0.9, "myeloid": 0.15,
        "lymphoblast": 1.0, "b_lineage": 0.8, "b_precursor": 0.2, "myeloid_blast": 0.15,
    },
    "mature B-ALL with t(8;14)": {
        "lymphoid": 1.0, "lymphoblast": 0.2, "b_lineage": 1.1, "b_precursor": 0.5,
    },
    "T-ALL": {"lymphoid": 1.0, "lymphoblast": 1.0, "t_lineage": 1.0, "b_precursor": 0.2},
    "AML with t(8;21)": {
        "myeloid": 1.0, "lymphoid": 0.1,
        "myeloid_blast": 1.0, "myeloid_mature": 0.3, "b_lineage": 0.2,
    },
    "AML with t(15;17)": {"myeloid": 1.0, "myeloid_blast": 1.3},
    "AML with inv(16)/t(16;16)": {"myeloid": 1.0, "myeloid_blast": 0.9, "myeloid_mature": 0.6},
    "AML with t(11q23)/MLL": {"myeloid": 1.0, "myeloid_blast": 0.7, "myeloid_mature": 0.7},
    "AML complex aberrant karyotype": {
        "myeloid": 1.0, "myeloid_blast": 0.9, "myeloid_mature": 0.2,
    },
    "AML with normal karyotype + other abnormalities": _TYPICAL_AML,
    "CLL": {"lymphoid": 1.0, "b_lineage": 1.0},
    "CML": {"myeloid": 1.0, "myeloid_blast": 0.4, "myeloid_mature": 1.2},
    "MDS": {"myeloid": 0.9, "myeloid_blast": 0.5, "myeloid_mature": 0.7},
    "Non-leukemia and healthy bone marrow": NORMAL_MARROW,
}
NON_LEUKEMIA_CLASS = "Non-leukemia and healthy bone marrow"
#: Share of samples drawn from peripheral blood, by class (default for the others).
PERIPHERAL_BLOOD_SHARE = {"CLL": 0.75, "CML": 0.5, NON_LEUKEMIA_CLASS: 0.1}
DEFAULT_PERIPHERAL_BLOOD_SHARE = 0.2

#: Share of the genes with a symbol (markers aside) that differ between the lymphoid and
#: myeloid lineages, and the gamma distribution of their log2 effects (clipped).
#: An effect is the gene's log2 change in a pure population of its lineage (diluted by
#: normal marrow and the probe's response in a sample). With 12% of genes at a mean of 1
#: (90% of effects in 0.27..2.1), the 3,000-probe demo keeps ~250 lineage genes among its
#: ~2,200 single-gene ones, and the lineages split along a leading principal component, as
#: in the real MILE data.
LINEAGE_GENE_SHARE = 0.12
LINEAGE_EFFECT_SHAPE = 3.0
LINEAGE_EFFECT_MEAN = 1.0
LINEAGE_EFFECT_RANGE = (0.25, 2.5)
N_FACTORS = 8  # low-rank biological variation shared by many genes
#: sd of every gene's loading on each factor: small enough that no factor outweighs the
#: lineage program in a PCA (8 factors x 0.08**2 of variance per gene).
FACTOR_LOADING_SD = 0.08
N_CENTRES = 11  # laboratories: each adds its own small per-probe offset
AMBIGUOUS_LINEAGE_SHARE = 0.02  # ALL/AML samples with a mixed-lineage profile
MARKER_DROPOUT_RATE = 0.06  # a marker gene not expressed in a sample
MARKER_ABERRANT_RATE = 0.03  # a marker gene expressed out of lineage
LOWEST_VALUE, HIGHEST_VALUE = 1.0, 16.0
DECIMALS = 4
_CODE_SCALE = 10**DECIMALS
_HIGHEST_CODE = int(round(HIGHEST_VALUE * _CODE_SCALE))
MISSING_CODE = _HIGHEST_CODE + 1  # written as "null"

# Labs (``labs > 1``). Each lab ``L`` has, per probe ``p``, an additive log2 shift
# ``N(0, LAB_SHIFT_SD)``; a multiplicative intensity factor ``2**N(0, LAB_LOG2_FACTOR_SD)``
# (an additive constant on the log2 scale) and a noise multiplier
# ``exp(N(0, LAB_NOISE_LOG_SD))`` clipped to LAB_NOISE_RANGE; ``batch_strength`` scales
# the three sds. A lineage's lab mix is ``(1 - c) * sizes + c * skew[lineage]`` for
# ``c = lab_confounding``: ``sizes`` ~ Dirichlet(LAB_SIZE_CONCENTRATION) (lab sizes
# differ), ``skew`` ~ Dirichlet(LAB_SKEW_CONCENTRATION) per lineage (strongly skewed).
MAX_LABS = 100
LAB_SHIFT_SD = 0.15
LAB_LOG2_FACTOR_SD = 0.3
LAB_NOISE_LOG_SD = 0.3
LAB_NOISE_RANGE = (0.4, 4.0)
LAB_SIZE_CONCENTRATION = 8.0
LAB_SKEW_CONCENTRATION = 0.5
LAB_KEY = "lab"

# Linear scale (MAS5-style signal): v = LINEAR_GAIN * 2**x + N(0, background sd), the
# sample's background sd being LINEAR_BACKGROUND_SD (times its lab's noise multiplier),
# written with one decimal and clipped to [LINEAR_LOWEST, LINEAR_HIGHEST]; x is the
# unclipped log2 value. The gain puts the median near 200 and the largest values of a
# full-size series near 60,000, as in real MAS5 GPL570 series; the highest value stands
# for scanner saturation.
LINEAR_GAIN = 4.0
LINEAR_BACKGROUND_SD = 12.0
LINEAR_DECIMALS = 1
LINEAR_LOWEST, LINEAR_HIGHEST = -999.9, 65535.9
_LINEAR_CODE_SCALE = 10**LINEAR_DECIMALS
_LINEAR_LOWEST_UNITS = int(round(LINEAR_LOWEST * _LINEAR_CODE_SCALE))
_LINEAR_HIGHEST_CODE = int(round(LINEAR_HIGHEST * _LINEAR_CODE_SCALE)) - _LINEAR_LOWEST_UNITS


def _profile_vector(profile: dict[str, float]) -> np.ndarray:
    return np.array([profile.get(name, 0.0) for name in PROGRAMS], dtype=np.float64)


def _class_profile(mile_class: str, lineage: str) -> np.ndarray:
    if mile_class in CLASS_PROFILES:
        return _profile_vector(CLASS_PROFILES[mile_class])
    # A class this module does not know: fall back on its lineage.
    fallback = {LINEAGE_ALL: _B_PRECURSOR_ALL, LINEAGE_AML: _TYPICAL_AML}
    return _profile_vector(fallback.get(lineage, NORMAL_MARROW))


@dataclass
class _GeneModel:
    """Per-gene parameters for every gene of the probe universe.

    ``weights`` has one row per gene and columns ``[programs | classes | factors]``,
    matching the columns of the sample design (see :class:`_SampleModel`).
    """

    index: dict[str, int]  # gene symbol (or a symbol-less probe's id) -> row
    weights: np.ndarray  # float32 (n_genes, n_programs + n_classes + N_FACTORS)
    idio_sd: np.ndarray  # float32 (n_genes,)
    marker_rows: np.ndarray  # rows of the program marker genes (subject to dropout)


@lru_cache(maxsize=4)
def _gene_model(seed: int) -> _GeneModel:
    universe = _probe_universe()
    symbols: dict[str, int] = {}
    for gene in universe["gene"]:
        for symbol in gene.split(MULTI_GENE_SEPARATOR) if gene else ():
            symbols.setdefault(symbol, len(symbols))
    n_symbols = len(symbols)
    index = dict(symbols)
    # A probe set without a symbol is its own "gene": it gets idiosyncratic variation only.
    for probe_id in universe.loc[universe["gene"] == "", "probe_id"]:
        index[probe_id] = len(index)
    n_genes = len(index)
    classes = _class_names()
    n_programs, n_classes = len(PROGRAMS), len(classes)

    rng = _rng(seed, _STREAM_GENE_PARAMETERS)
    weights = np.zeros((n_genes, n_programs + n_classes + N_FACTORS), dtype=np.float64)
    marker_symbols = sorted({s for markers in PROGRAM_MARKERS.values() for s in markers})
    missing = [s for s in marker_symbols if s not in symbols]
    if missing:
        raise ValueError(f"marker genes absent from GPL570_annot.csv: {missing}")
    marker_rows = np.array([symbols[s] for s in marker_symbols])
    ordinary_rows = np.setdiff1d(np.arange(n_symbols), marker_rows)

    def random_effects(count: int, mean_size: float) -> np.ndarray:
        sizes = np.minimum(rng.gamma(2.0, mean_size / 2.0, size=count), 2.5)
        return sizes * rng.choice([-1.0, 1.0], size=count)

    for column, program in enumerate(PROGRAMS):
        rows = rng.choice(ordinary_rows, size=PROGRAM_RANDOM_GENES[program], replace=False)
        weights[rows, column] = random_effects(len(rows), 0.6)
        for symbol, effect in PROGRAM_MARKERS[program].items():
            weights[symbols[symbol], column] = effect
    # The broad lineage program: a share of all genes, each up in lymphoid or in myeloid
    # cells (random side), by a moderate amount.
    n_lineage = int(round(LINEAGE_GENE_SHARE * len(ordinary_rows)))
    rows = rng.choice(ordinary_rows, size=n_lineage, replace=False)
    sizes = np.clip(
        rng.gamma(LINEAGE_EFFECT_SHAPE, LINEAGE_EFFECT_MEAN / LINEAGE_EFFECT_SHAPE, n_lineage),
        *LINEAGE_EFFECT_RANGE,
    )
    up_in_lymphoid = rng.random(n_lineage) < 0.5
    weights[rows[up_in_lymphoid], PROGRAMS.index("lymphoid")] = sizes[up_in_lymphoid]
    weights[rows[~up_in_lymphoid], PROGRAMS.index("myeloid")] = sizes[~up_in_lymphoid]
    for offset in range(n_classes):  # subtype signatures
        count = int(rng.integers(40, 121))
        rows = rng.choice(ordinary_rows, size=count, replace=False)
        weights[rows, n_programs + offset] = random_effects(count, 0.7)
    weights[:, n_programs + n_classes :] = rng.normal(
        0.0, FACTOR_LOADING_SD, size=(n_genes, N_FACTORS)
    )
    idio_sd = rng.uniform(0.1, 0.35, size=n_genes)
    return _GeneModel(
        index=index,
        weights=weights.astype(np.float32),
        idio_sd=idio_sd.astype(np.float32),
        marker_rows=marker_rows,
    )


@lru_cache(maxsize=1)
def _class_names() -> tuple[str, ...]:
    return tuple(sorted(load_mile_samples()["mile_class"].unique()))


@dataclass
class _SampleModel:
    """Per-sample parameters for the selected samples (drawn for all 2,096, then subset,
    so that a sample keeps its parameters whatever the subset)."""

    tissue: list[str]
    design: np.ndarray  # float32 (n_samples, n_programs + n_classes + N_FACTORS)
    marker_multiplier: np.ndarray  # float32 (n_samples, n_markers): dropout
    marker_addition: np.ndarray  # float32 (n_samples, n_markers): aberrant expression
    centre: np.ndarray  # int (n_samples,)
    shift: np.ndarray  # float32 (n_samples,)
    scale: np.ndarray  # float32 (n_samples,)
    quality: np.ndarray  # float32 (n_samples,): multiplies the probe noise
    ambiguous: np.ndarray  # bool (n_samples,): ALL/AML sample with a mixed-lineage profile
    lab: np.ndarray  # int (n_samples,): lab index (all 0 with one lab)
    lab_name: list[str]  # "L1".. ("" with one lab)
    lab_noise: np.ndarray  # float32 (n_samples,): the lab's noise multiplier (1 with one lab)
    lab_log2_factor: np.ndarray  # float32 (n_samples,): log2 of the lab's intensity factor


def _sample_model(
    samples: pd.DataFrame, seed: int, genes: _GeneModel, cohort: _Cohort | None = None, lab_base: int = 0
) -> _SampleModel:
    cohort = cohort or _Cohort()
    everyone = load_mile_samples()
    n_all = len(everyone)
    classes = _class_names()
    class_column = {c: i for i, c in enumerate(classes)}
    n_programs = len(PROGRAMS)
    rng = _rng(seed, _STREAM_SAMPLE_PARAMETERS)

    # Draw every parameter for all samples in file order, whatever is selected.
    pb_share = np.array(
        [
            PERIPHERAL_BLOOD_SHARE.get(c, DEFAULT_PERIPHERAL_BLOOD_SHARE)
            for c in everyone["mile_class"]
        ]
    )
    from_blood = rng.random(n_all) < pb_share
    blast = np.clip(rng.beta(5.0, 1.6, size=n_all), 0.15, 1.0)
    blast[everyone["mile_class"].to_numpy() == NON_LEUKEMIA_CLASS] = 1.0
    jitter = rng.lognormal(0.0, 0.2, size=(n_all, n_programs))
    ambiguous = rng.random(n_all) < AMBIGUOUS_LINEAGE_SHARE
    ambiguity = rng.uniform(0.3, 0.7, size=n_all)  # above 0.5 the other lineage dominates
    factors = rng.normal(0.0, 1.0, size=(n_all, N_FACTORS))
    n_markers = len(genes.marker_rows)
    dropout = rng.random((n_all, n_markers)) < MARKER_DROPOUT_RATE
    multiplier = np.where(dropout, rng.uniform(0.0, 0.3, size=(n_all, n_markers)), 1.0)
    aberrant = rng.random((n_all, n_markers)) < MARKER_ABERRANT_RATE
    strongest = np.abs(genes.weights[genes.marker_rows, :n_programs]).max(axis=1)
    addition = np.where(aberrant, rng.uniform(0.3, 0.7, size=(n_all, n_markers)) * strongest, 0.0)
    centre = rng.integers(0, N_CENTRES, size=n_all)
    shift = rng.normal(0.0, 0.12, size=n_all)
    scale = np.clip(rng.normal(1.0, 0.03, size=n_all), 0.9, 1.1)
    quality = rng.lognormal(0.0, 0.15, size=n_all)

    rows = samples["row"].to_numpy()
    lineages = everyone["lineage"].to_numpy()
    if cohort.ambiguous_fraction is not None:
        ambiguous = _exact_ambiguous(rows, lineages, seed, cohort.ambiguous_fraction)
    lab_of, lab_noise, lab_log2_factor = _lab_model(lineages, seed, cohort)

    normal = _profile_vector(NORMAL_MARROW)
    opposite = {
        LINEAGE_ALL: _profile_vector(_TYPICAL_AML),
        LINEAGE_AML: _profile_vector(_B_PRECURSOR_ALL),
    }
    blood_column = PROGRAMS.index("peripheral_blood")
    design = np.zeros((len(rows), n_programs + len(classes) + N_FACTORS))
    for out_row, row in enumerate(rows):
        mile_class, lineage = everyone.at[row, "mile_class"], everyone.at[row, "lineage"]
        leukemic = _class_profile(mile_class, lineage)
        if ambiguous[row] and lineage in opposite:
            leukemic = (1 - ambiguity[row]) * leukemic + ambiguity[row] * opposite[lineage]
        loading = blast[row] * jitter[row] * leukemic + (1 - blast[row]) * normal
        loading[blood_column] = 1.0 if from_blood[row] else 0.0
        design[out_row, :n_programs] = loading
        design[out_row, n_programs + class_column[mile_class]] = blast[row]
        design[out_row, n_programs + len(classes) :] = factors[row]
    if cohort.subtype_overlap > 0:
        _overlap_subtypes(design[:, n_programs:n_programs + len(classes)], rows, everyone, seed,
                          cohort.subtype_overlap)
    if cohort.signal != 1.0:
        # The biological signal: programs, subtypes and the markers' aberrant expression
        # (their dropout scales with the program part); factors and noise are kept.
        design[:, : n_programs + len(classes)] *= cohort.signal
        addition = addition * cohort.signal
    is_ambiguous = ambiguous[rows] & np.isin(lineages[rows], list(opposite))
    lab = lab_of[rows]
    return _SampleModel(
        tissue=[PERIPHERAL_BLOOD if from_blood[r] else BONE_MARROW for r in rows],
        design=design.astype(np.float32),
        marker_multiplier=multiplier[rows].astype(np.float32),
        marker_addition=addition[rows].astype(np.float32),
        centre=centre[rows],
        shift=shift[rows].astype(np.float32),
        scale=scale[rows].astype(np.float32),
        quality=quality[rows].astype(np.float32),
        ambiguous=is_ambiguous,
        lab=lab,
        lab_name=[f"L{lab_base + k + 1}" if cohort.has_labs else "" for k in lab],
        lab_noise=lab_noise[lab].astype(np.float32),
        lab_log2_factor=lab_log2_factor[lab].astype(np.float32),
    )


def _overlap_subtypes(subtype_design: np.ndarray, rows: np.ndarray, everyone: pd.DataFrame, seed: int,
                      overlap: float) -> None:
    """Move a share w ~ U(0, overlap) of each ALL/AML sample's subtype weight (in place) to another
    class of its lineage, drawn for all 2,096 samples so that a subset keeps its draws."""
    classes = _class_names()
    rng = _rng(seed, _STREAM_SUBTYPE_OVERLAP)
    share = rng.uniform(0.0, overlap, size=len(everyone))
    pick = rng.random(len(everyone))
    lineage_of_class = everyone.drop_duplicates("mile_class").set_index("mile_class")["lineage"]
    for out_row, row in enumerate(rows):
        mile_class, lineage = everyone.at[row, "mile_class"], everyone.at[row, "lineage"]
        siblings = [c for c in classes if c != mile_class and lineage_of_class[c] == lineage]
        if lineage not in (LINEAGE_ALL, LINEAGE_AML) or not siblings:
            continue
        own = classes.index(mile_class)
        other = classes.index(siblings[int(pick[row] * len(siblings))])
        moved = share[row] * subtype_design[out_row, own]
        subtype_design[out_row, own] -= moved
        subtype_design[out_row, other] += moved


def _exact_ambiguous(
    rows: np.ndarray, lineages: np.ndarray, seed: int, fraction: float
) -> np.ndarray:
    """Flags over all samples: ``round(fraction * n)`` of the ``n`` selected ALL/AML ones.

    Every sample gets one random key (drawn for all 2,096); the selected ALL/AML samples
    with the smallest keys are the ambiguous ones, so a larger fraction or subset keeps
    the ones a smaller one picked where it can.
    """
    keys = _rng(seed, _STREAM_AMBIGUOUS_CHOICE).random(len(lineages))
    eligible = rows[np.isin(lineages[rows], [LINEAGE_ALL, LINEAGE_AML])]
    count = int(round(fraction * len(eligible)))
    chosen = eligible[np.argsort(keys[eligible], kind="stable")[:count]]
    flags = np.zeros(len(lineages), dtype=bool)
    flags[chosen] = True
    return flags


def _lab_model(
    lineages: np.ndarray, seed: int, cohort: _Cohort
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lab of every sample (all 2,096), and each lab's noise multiplier and log2 factor.

    One lab: lab 0, multiplier 1, factor 0 (nothing drawn). Otherwise lineage ``l`` draws
    its samples' labs from ``(1 - c) * sizes + c * skew[l]`` (one uniform per sample, so a
    sample keeps its lab in every subset of the same settings).
    """
    n_all, k = len(lineages), cohort.labs
    if not cohort.has_labs:
        return np.zeros(n_all, dtype=np.int64), np.ones(1), np.zeros(1)
    rng = _rng(seed, _STREAM_LAB_ASSIGNMENT, k)
    sizes = rng.dirichlet(np.full(k, LAB_SIZE_CONCENTRATION))
    groups = (LINEAGE_ALL, LINEAGE_AML, LINEAGE_OTHER)
    skew = {group: rng.dirichlet(np.full(k, LAB_SKEW_CONCENTRATION)) for group in groups}
    u = rng.random(n_all)
    lab = np.zeros(n_all, dtype=np.int64)
    c = cohort.lab_confounding
    for group in groups:
        members = lineages == group
        mix = (1.0 - c) * sizes + c * skew[group]
        edges = np.cumsum(mix / mix.sum())
        lab[members] = np.minimum(np.searchsorted(edges, u[members], side="right"), k - 1)
    params = _rng(seed, _STREAM_LAB_PARAMETERS, k)
    strength = cohort.batch_strength
    noise = np.clip(
        np.exp(params.normal(0.0, LAB_NOISE_LOG_SD * strength, size=k)), *LAB_NOISE_RANGE
    )
    log2_factor = params.normal(0.0, LAB_LOG2_FACTOR_SD * strength, size=k)
    return lab, noise, log2_factor


@lru_cache(maxsize=2)
def _lab_probe_shift(seed: int, labs: int) -> np.ndarray:
    """float32 (labs, 54,675): each lab's additive log2 shift of every probe of the
    universe, in units of LAB_SHIFT_SD (keyed by universe row: the same in every subset)."""
    rng = _rng(seed, _STREAM_LAB_PARAMETERS, MAX_LABS + labs)
    return rng.standard_normal((labs, GPL570_PROBE_COUNT), dtype=np.float32)


def _centre_offsets(series_seed: int) -> np.ndarray:
    """float32 (N_CENTRES, 54,675): the centres' per-probe offsets of a further series (its own
    centres; series 0 keeps those drawn with the probe parameters)."""
    rng = _rng(series_seed, _STREAM_CENTRE_OFFSETS)
    return rng.normal(0.0, 0.06, size=(N_CENTRES, GPL570_PROBE_COUNT)).astype(np.float32)


@lru_cache(maxsize=4)
def _probe_parameters(seed: int) -> dict[str, np.ndarray]:
    """Baseline, response, noise and centre offsets of every probe of the universe."""
    universe = _probe_universe()
    n = len(universe)
    rng = _rng(seed, _STREAM_PROBE_PARAMETERS)
    has_symbol = (universe["kind"] != "none").to_numpy()
    expressed = rng.random(n) < np.where(has_symbol, 0.6, 0.3)
    baseline = np.where(
        expressed,
        np.clip(rng.normal(7.6, 1.5, size=n), 4.5, 12.5),
        np.clip(rng.normal(4.0, 0.7, size=n), 2.2, 6.0),
    )
    response = np.where(expressed, rng.uniform(0.6, 1.2, size=n), rng.uniform(0.25, 0.65, size=n))
    noise_sd = rng.lognormal(np.log(0.16), 0.35, size=n) * np.where(expressed, 1.0, 1.5)
    # Probes of the strong lineage markers are off unless their lineage is present, and
    # respond fully when it is: that is what makes them markers.
    program_markers = {s for markers in PROGRAM_MARKERS.values() for s in markers}
    on_off = np.array(
        [
            bool(program_markers.intersection(g.split(MULTI_GENE_SEPARATOR)))
            for g in universe["gene"]
        ]
    )
    baseline = np.where(on_off, rng.normal(4.8, 0.6, size=n), baseline)
    response = np.where(on_off, rng.uniform(0.8, 1.2, size=n), response)
    centre_offset = rng.normal(0.0, 0.06, size=(N_CENTRES, n))
    return {
        "baseline": baseline.astype(np.float32),
        "response": response.astype(np.float32),
        "noise_sd": noise_sd.astype(np.float32),
        "centre_offset": centre_offset.astype(np.float32),
    }


_GENE_BLOCK = 2048
_PROBE_BLOCK = 2048


def _simulate_codes(
    probes: pd.DataFrame,
    seed: int,
    missing_fraction: float,
    genes: _GeneModel,
    sample_model: _SampleModel,
    cohort: _Cohort | None = None,
    series_seed: int | None = None,
) -> np.ndarray:
    """Values of the selected probes x samples, as int32 codes (value * 10**DECIMALS,
    MISSING_CODE for missing; on the linear scale the codes of :func:`_value_format`),
    probe-major: shape (n_probes, n_samples).

    Memory: one float32 matrix (reused in place for the codes) plus block temporaries.

    ``series_seed`` (a further series of a lake): the gene and probe parameters stay those of
    ``seed``; the sample-level noise, the centres' offsets, the lab shifts and the missing values
    are drawn from ``series_seed``.
    """
    own = seed if series_seed is None else series_seed
    n_probes, n_samples = len(probes), sample_model.design.shape[0]
    values = np.zeros((n_probes, n_samples), dtype=np.float32)

    # (probe, gene, weight) pairs: a multi-gene probe gets the mean of its genes' signals.
    params = _probe_parameters(seed)
    probe_rows = probes["row"].to_numpy()
    response = params["response"][probe_rows]
    pair_probe, pair_gene, pair_weight = [], [], []
    for out_row, (gene, probe_id) in enumerate(zip(probes["gene"], probes["probe_id"])):
        members = gene.split(MULTI_GENE_SEPARATOR) if gene else [probe_id]
        for member in members:
            pair_probe.append(out_row)
            pair_gene.append(genes.index[member])
            pair_weight.append(response[out_row] / len(members))
    pair_probe_arr = np.array(pair_probe, dtype=np.int64)
    pair_gene_arr = np.array(pair_gene, dtype=np.int64)
    pair_weight_arr = np.array(pair_weight, dtype=np.float32)
    order = np.lexsort((pair_probe_arr, pair_gene_arr))
    pair_probe_arr, pair_gene_arr, pair_weight_arr = (
        pair_probe_arr[order], pair_gene_arr[order], pair_weight_arr[order]
    )

    used_genes = np.unique(pair_gene_arr)
    marker_position = {row: i for i, row in enumerate(genes.marker_rows)}
    for block_number, start in enumerate(range(0, len(used_genes), _GENE_BLOCK)):
        block_genes = used_genes[start : start + _GENE_BLOCK]
        signal = _gene_signal(block_genes, genes, sample_model, marker_position, own, block_number)
        lo, hi = np.searchsorted(pair_gene_arr, [block_genes[0], block_genes[-1] + 1])
        local = np.searchsorted(block_genes, pair_gene_arr[lo:hi])
        contribution = signal[local] * pair_weight_arr[lo:hi, None]
        # Sum the pairs of each probe (a multi-gene probe can have several in one block).
        by_probe = np.argsort(pair_probe_arr[lo:hi], kind="stable")
        sorted_probes = pair_probe_arr[lo:hi][by_probe]
        starts = np.flatnonzero(np.r_[True, sorted_probes[1:] != sorted_probes[:-1]])
        values[sorted_probes[starts]] += np.add.reduceat(contribution[by_probe], starts, axis=0)

    codes = values.view(np.int32)  # the codes overwrite the values block by block
    baseline = params["baseline"][probe_rows]
    noise_sd = params["noise_sd"][probe_rows]
    centre_offset = (params["centre_offset"] if series_seed is None else _centre_offsets(own))[:, probe_rows]
    cohort = cohort or _Cohort()
    if cohort.has_labs:
        # The lab's per-probe shift plus its intensity factor (a constant in log2).
        lab_offset = _lab_probe_shift(own, cohort.labs)[:, probe_rows]
        lab_offset *= np.float32(LAB_SHIFT_SD * cohort.batch_strength)
    for block_number, start in enumerate(range(0, n_probes, _PROBE_BLOCK)):
        stop = min(start + _PROBE_BLOCK, n_probes)
        noise = _rng(own, _STREAM_PROBE_NOISE, block_number).standard_normal(
            (stop - start, n_samples), dtype=np.float32
        )
        noise *= noise_sd[start:stop, None]
        noise *= sample_model.quality[None, :]
        block = values[start:stop] + baseline[start:stop, None]
        block += centre_offset[sample_model.centre, start:stop].T
        if cohort.has_labs:
            noise *= sample_model.lab_noise[None, :]
            block += lab_offset[sample_model.lab, start:stop].T
            block += sample_model.lab_log2_factor[None, :]
        block += noise
        block -= np.float32(8.0)
        block *= sample_model.scale[None, :]
        block += np.float32(8.0) + sample_model.shift[None, :]
        if cohort.linear:
            codes[start:stop] = _linear_codes(block, sample_model, own, block_number)
            continue
        np.clip(block, LOWEST_VALUE, HIGHEST_VALUE, out=block)
        codes[start:stop] = np.rint(block.astype(np.float64) * _CODE_SCALE).astype(np.int32)

    n_missing = int(round(missing_fraction * codes.size))
    if n_missing:
        flat = _rng(own, _STREAM_MISSING).choice(codes.size, size=n_missing, replace=False)
        codes.reshape(-1)[flat] = _value_format(cohort.scale).missing_code
    return codes


def _linear_codes(
    block: np.ndarray, sample_model: _SampleModel, seed: int, block_number: int
) -> np.ndarray:
    """Codes of MAS5-style linear values for a block of unclipped log2 values:
    ``LINEAR_GAIN * 2**x`` plus the sample's additive background noise, one decimal."""
    linear = LINEAR_GAIN * np.exp2(block.astype(np.float64))
    background = _rng(seed, _STREAM_BACKGROUND_NOISE, block_number).standard_normal(
        block.shape
    )
    background *= LINEAR_BACKGROUND_SD * sample_model.lab_noise[None, :].astype(np.float64)
    linear += background
    np.clip(linear, LINEAR_LOWEST, LINEAR_HIGHEST, out=linear)
    return (np.rint(linear * _LINEAR_CODE_SCALE) - _LINEAR_LOWEST_UNITS).astype(np.int32)


def _gene_signal(
    block_genes: np.ndarray,
    genes: _GeneModel,
    sample_model: _SampleModel,
    marker_position: dict[int, int],
    seed: int,
    block_number: int,
) -> np.ndarray:
    """Gene-level signal S (len(block_genes), n_samples) for one block of genes.

    Computed with element-wise float32 operations rather than a BLAS product, whose
    rounding may change with the CPU and thread count: the files must not.
    """
    weights = genes.weights[block_genes]
    design = sample_model.design
    n_programs = len(PROGRAMS)
    n_sparse = design.shape[1] - N_FACTORS
    signal = np.zeros((len(block_genes), design.shape[0]), dtype=np.float32)
    for column in range(n_sparse):  # programs and subtypes: few genes each
        rows = np.flatnonzero(weights[:, column])
        if len(rows):
            signal[rows] += weights[rows, column, None] * design[None, :, column]
    for column in range(n_sparse, design.shape[1]):  # factors: every gene
        signal += weights[:, column, None] * design[None, :, column]

    # Marker genes: per-sample dropout and out-of-lineage expression of the program part.
    for local_row in np.flatnonzero(np.isin(block_genes, genes.marker_rows)):
        position = marker_position[int(block_genes[local_row])]
        program_part = np.zeros(design.shape[0], dtype=np.float32)
        for column in range(n_programs):
            program_part += weights[local_row, column] * design[:, column]
        signal[local_row] += (sample_model.marker_multiplier[:, position] - 1) * program_part
        signal[local_row] += sample_model.marker_addition[:, position]

    noise = _rng(seed, _STREAM_GENE_NOISE, block_number).standard_normal(
        signal.shape, dtype=np.float32
    )
    noise *= genes.idio_sd[block_genes, None]
    signal += noise
    return signal


# --------------------------------------------------------------------------------------
# Writing: byte tables instead of per-value string formatting
# --------------------------------------------------------------------------------------
#
# Values are integer codes in 0..160000 (plus MISSING_CODE), so every possible cell text
# ("7.1234", "null") is precomputed once into an 8-byte slot. A block of cells is then one
# gather of 8-byte words, and a boolean mask drops the padding bytes: a few milliseconds
# per SOFT sample instead of seconds of Python formatting.


@lru_cache(maxsize=2)
def _cell_table(prefix: bytes, suffix: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(words, lengths): the text of every code, framed by prefix/suffix, in 8-byte slots."""
    texts = [
        prefix + f"{code // _CODE_SCALE}.{code % _CODE_SCALE:0{DECIMALS}d}".encode() + suffix
        for code in range(_HIGHEST_CODE + 1)
    ]
    texts.append(prefix + b"null" + suffix)  # MISSING_CODE
    if max(map(len, texts)) > 8:
        raise AssertionError("cell text does not fit in 8 bytes")
    slots = np.array(texts, dtype="S8")
    lengths = np.array([len(t) for t in texts], dtype=np.uint8)
    return slots.view(np.uint64), lengths


@lru_cache(maxsize=2)
def _linear_cell_table(prefix: bytes, suffix: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`_cell_table` for the linear scale: code ``c`` is the value
    ``(c + _LINEAR_LOWEST_UNITS) / 10`` written with one decimal ("-12.3", "4567.8").

    Built with array operations (the table has ~666,000 codes).
    """
    units = np.arange(_LINEAR_HIGHEST_CODE + 1, dtype=np.int64) + _LINEAR_LOWEST_UNITS
    negative = (units < 0).astype(np.int64)
    whole, tenth = np.divmod(np.abs(units), _LINEAR_CODE_SCALE)
    n_digits = 1 + sum((whole >= 10**k).astype(np.int64) for k in range(1, 6))
    width = len(prefix) + 1 + 6 + 2 + len(suffix)
    text = np.zeros((len(units) + 1, max(width, 8)), dtype=np.uint8)
    rows = np.arange(len(units))
    for offset, byte in enumerate(prefix):
        text[:, offset] = byte
    at = len(prefix) + negative  # column of the first digit
    text[rows[negative == 1], len(prefix)] = ord("-")
    for k in range(6):  # k-th digit from the left, where the number has one
        has = k < n_digits
        digit = whole[has] // 10 ** (n_digits[has] - 1 - k) % 10
        text[rows[has], at[has] + k] = ord("0") + digit
    at = at + n_digits
    text[rows, at] = ord(".")
    text[rows, at + 1] = ord("0") + tenth
    at = at + 2
    for offset, byte in enumerate(suffix):
        text[rows, at + offset] = byte
    lengths = np.empty(len(units) + 1, dtype=np.int64)
    lengths[:-1] = at + len(suffix)
    missing = prefix + b"null" + suffix  # the missing code
    text[-1, : len(missing)] = np.frombuffer(missing, dtype=np.uint8)
    lengths[-1] = len(missing)
    if lengths.max() > 8:
        raise AssertionError("cell text does not fit in 8 bytes")
    words = np.ascontiguousarray(text[:, :8]).view(np.uint64).reshape(-1)
    return words, lengths.astype(np.uint8)


@dataclass(frozen=True)
class _ValueFormat:
    """How the codes of one scale are written."""

    scale: str
    missing_code: int
    value_description: str  # the SOFT "#VALUE = ..." line

    def cells(self, prefix: bytes, suffix: bytes) -> tuple[np.ndarray, np.ndarray]:
        if self.scale == "linear":
            return _linear_cell_table(prefix, suffix)
        return _cell_table(prefix, suffix)


def _value_format(scale: str) -> _ValueFormat:
    if scale == "linear":
        return _ValueFormat(
            "linear", _LINEAR_HIGHEST_CODE + 1,
            "MAS5-style signal, linear scale, background noise included (synthetic)",
        )
    return _ValueFormat("log2", MISSING_CODE, "log2 expression (synthetic)")


#: ``!Sample_data_processing`` text of the linear scale (the log2 scale writes none).
LINEAR_DATA_PROCESSING = (
    "MAS5-style signal (linear scale, not log-transformed; additive background noise "
    "makes some low values negative). Synthetic."
)


def _lab_description(lab: str, labs: int) -> str:
    if int(lab[1:]) > labs:   # a lab of a further series (series_index > 0): L{k*labs+1}..
        return f"Hybridised at laboratory {lab}, one of this series' {labs} (synthetic batch effect)"
    return f"Hybridised at laboratory {lab} of {labs} (synthetic batch effect)"


def _padded(texts: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Byte matrix (len(texts), width) of zero-padded texts, and the mask of real bytes."""
    width = max(map(len, texts))
    matrix = np.array(texts, dtype=f"S{width}").view(np.uint8).reshape(len(texts), width)
    mask = np.arange(width) < np.array([len(t) for t in texts])[:, None]
    return matrix, mask


def _join_cells(
    lead: np.ndarray, lead_mask: np.ndarray, codes: np.ndarray, words: np.ndarray,
    lengths: np.ndarray, tail: bytes = b"",
) -> bytes:
    """Rows of text: ``lead[i]`` then the cell text of each code of ``codes[i]``, then tail."""
    n_rows, n_cells = codes.shape
    lead_width = lead.shape[1]
    width = lead_width + 8 * n_cells + len(tail)
    buffer = np.empty((n_rows, width), dtype=np.uint8)
    keep = np.empty((n_rows, width), dtype=bool)
    buffer[:, :lead_width] = lead
    keep[:, :lead_width] = lead_mask
    cells = slice(lead_width, lead_width + 8 * n_cells)
    buffer[:, cells] = words[codes].view(np.uint8).reshape(n_rows, 8 * n_cells)
    keep[:, cells] = (
        np.arange(8, dtype=np.uint8) < lengths[codes][:, :, None]
    ).reshape(n_rows, 8 * n_cells)
    if tail:
        buffer[:, lead_width + 8 * n_cells :] = np.frombuffer(tail, dtype=np.uint8)
        keep[:, lead_width + 8 * n_cells :] = True
    return buffer[keep].tobytes()


@dataclass
class _SeriesText:
    """Metadata shared by the SOFT and matrix writers."""

    accession: str
    samples: pd.DataFrame
    probes: pd.DataFrame
    note: str
    cohort: _Cohort = field(default_factory=_Cohort)

    def __post_init__(self) -> None:
        for text in list(self.samples["title"]) + [self.note, self.accession]:
            if '"' in text or "\n" in text or "\t" in text:
                raise ValueError(f"metadata text cannot be written to GEO files: {text!r}")


def _soft_chunks(series: _SeriesText, codes: np.ndarray) -> Iterator[bytes]:
    """The family SOFT file, in chunks (one per sample after the platform)."""
    accession, samples, probes = series.accession, series.samples, series.probes
    n_probes = len(probes)
    tissue = list(samples["tissue"])
    lines = [
        "^DATABASE = GeoMiame",
        "!Database_name = Gene Expression Omnibus (GEO)",
        "!Database_institute = NCBI NLM NIH",
        "!Database_web_link = http://www.ncbi.nlm.nih.gov/geo",
        "!Database_email = geo@ncbi.nlm.nih.gov",
        f"^SERIES = {accession}",
        f"!Series_title = {SERIES_TITLE}",
        f"!Series_geo_accession = {accession}",
        f"!Series_summary = {series.note}",
        "!Series_type = Expression profiling by array",
        *(f"!Series_sample_id = {gsm}" for gsm in samples["gsm"]),
        f"!Series_platform_id = {PLATFORM_ID}",
        f"^PLATFORM = {PLATFORM_ID}",
        f"!Platform_title = {PLATFORM_TITLE}",
        f"!Platform_geo_accession = {PLATFORM_ID}",
        "!Platform_technology = in situ oligonucleotide",
        "!Platform_distribution = commercial",
        "!Platform_organism = Homo sapiens",
        "!Platform_manufacturer = Affymetrix",
        f"!Platform_data_row_count = {n_probes}",
        "#ID = Affymetrix Probe Set ID",
        "#Gene Symbol = A gene symbol, when one is available (from UniGene).",
        "#ENTREZ_GENE_ID = Entrez Gene identifier (left empty in this synthetic series)",
        "!platform_table_begin",
        "ID\tGene Symbol\tENTREZ_GENE_ID",
        *(f"{probe_id}\t{gene}\t" for probe_id, gene in zip(probes["probe_id"], probes["gene"])),
        "!platform_table_end",
    ]
    yield ("\n".join(lines) + "\n").encode()

    cohort = series.cohort
    value_format = _value_format(cohort.scale)
    words, lengths = value_format.cells(b"", b"\n")
    lead, lead_mask = _padded([f"{p}\t".encode() for p in probes["probe_id"]])
    slab = max(1, (16 << 20) // (4 * n_probes))  # samples per transposed slab (~16 MB)
    for first in range(0, len(samples), slab):
        # Codes are probe-major; a transposed slab gives each sample a contiguous column.
        columns = np.ascontiguousarray(codes[:, first : first + slab].T)
        for offset, column in enumerate(columns):
            j = first + offset
            gsm, mile_class = samples.at[j, "gsm"], samples.at[j, "mile_class"]
            head = [
                f"^SAMPLE = {gsm}",
                f"!Sample_title = {samples.at[j, 'title']}",
                f"!Sample_geo_accession = {gsm}",
                "!Sample_type = RNA",
                "!Sample_channel_count = 1",
                f"!Sample_source_name_ch1 = {tissue[j]}",
                "!Sample_organism_ch1 = Homo sapiens",
                f"!Sample_characteristics_ch1 = {TISSUE_KEY}: {tissue[j]}",
                f"!Sample_characteristics_ch1 = {LEUKEMIA_CLASS_KEY}: {mile_class}",
                *(
                    [f"!Sample_characteristics_ch1 = {LAB_KEY}: {samples.at[j, 'lab']}"]
                    if cohort.has_labs else []
                ),
                "!Sample_molecule_ch1 = total RNA",
                *(
                    [f"!Sample_description = {_lab_description(samples.at[j, 'lab'], cohort.labs)}"]
                    if cohort.has_labs else []
                ),
                *([f"!Sample_data_processing = {LINEAR_DATA_PROCESSING}"] if cohort.linear else []),
                f"!Sample_platform_id = {PLATFORM_ID}",
                f"!Sample_series_id = {accession}",
                f"!Sample_data_row_count = {n_probes}",
                "#ID_REF = ",
                f"#VALUE = {value_format.value_description}",
                "!sample_table_begin",
                "ID_REF\tVALUE",
            ]
            table = _join_cells(lead, lead_mask, column[:, None], words, lengths)
            yield ("\n".join(head) + "\n").encode() + table + b"!sample_table_end\n"


def _matrix_chunks(series: _SeriesText, codes: np.ndarray) -> Iterator[bytes]:
    """The series matrix file, in chunks (blocks of probe rows)."""
    samples, probes, cohort = series.samples, series.probes, series.cohort
    n_samples = len(samples)
    tissue = list(samples["tissue"])

    def row(key: str, cells: Sequence[str]) -> str:
        return key + "".join(f'\t"{cell}"' for cell in cells)

    def same(text: str) -> list[str]:
        return [text] * n_samples

    lines = [
        row("!Series_title", [SERIES_TITLE]),
        row("!Series_geo_accession", [series.accession]),
        row("!Series_summary", [series.note]),
        row("!Series_type", ["Expression profiling by array"]),
        # GEO writes the sample ids as one space-separated cell, with a trailing space.
        row("!Series_sample_id", ["".join(f"{gsm} " for gsm in samples["gsm"])]),
        row("!Series_platform_id", [PLATFORM_ID]),
        row("!Series_platform_taxid", ["9606"]),
        row("!Series_sample_taxid", ["9606"]),
        "",
        row("!Sample_title", list(samples["title"])),
        row("!Sample_geo_accession", list(samples["gsm"])),
        row("!Sample_type", same("RNA")),
        row("!Sample_channel_count", same("1")),
        row("!Sample_source_name_ch1", tissue),
        row("!Sample_organism_ch1", same("Homo sapiens")),
        row("!Sample_characteristics_ch1", [f"{TISSUE_KEY}: {t}" for t in tissue]),
        row(
            "!Sample_characteristics_ch1",
            [f"{LEUKEMIA_CLASS_KEY}: {c}" for c in samples["mile_class"]],
        ),
        *(
            [row("!Sample_characteristics_ch1", [f"{LAB_KEY}: {lab}" for lab in samples["lab"]])]
            if cohort.has_labs else []
        ),
        row("!Sample_molecule_ch1", same("total RNA")),
        *(
            [row("!Sample_description",
                 [_lab_description(lab, cohort.labs) for lab in samples["lab"]])]
            if cohort.has_labs else []
        ),
        *([row("!Sample_data_processing", same(LINEAR_DATA_PROCESSING))] if cohort.linear else []),
        row("!Sample_platform_id", same(PLATFORM_ID)),
        row("!Sample_data_row_count", same(str(len(probes)))),
        "!series_matrix_table_begin",
        row('"ID_REF"', list(samples["gsm"])),
    ]
    yield ("\n".join(lines) + "\n").encode()

    words, lengths = _value_format(cohort.scale).cells(b"\t", b"")
    lead, lead_mask = _padded([f'"{p}"'.encode() for p in probes["probe_id"]])
    rows_per_chunk = max(1, (16 << 20) // (8 * n_samples))
    for start in range(0, len(probes), rows_per_chunk):
        stop = start + rows_per_chunk
        yield _join_cells(
            lead[start:stop], lead_mask[start:stop], codes[start:stop], words, lengths, b"\n"
        )
    yield b"!series_matrix_table_end\n"


def _annotation_csv_bytes(probes: pd.DataFrame) -> bytes:
    # Same layout as GPL570_annot.csv; probes without a symbol get an empty gene.
    lines = ["probe_id,gene"]
    for probe_id, gene in zip(probes["probe_id"], probes["gene"]):
        lines.append(f"{probe_id},{_csv_field(gene)}")
    return ("\n".join(lines) + "\n").encode()


def _csv_field(text: str) -> str:
    if any(ch in text for ch in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


# gzip output is compressed pigz-style: the text is cut into blocks that are deflated in
# parallel threads (zlib releases the GIL), each primed with the last 32 KiB of the text
# before it and ended with a sync flush, so that the pieces join into one ordinary
# single-member gzip stream. The cut points depend only on the text, so the bytes are the
# same whatever the number of threads.
_DEFLATE_BLOCK_BYTES = 8 << 20
_DEFLATE_WINDOW_BYTES = 32 << 10
_DEFLATE_END_OF_STREAM = b"\x03\x00"  # an empty final fixed-Huffman block


def _write_gzip(
    path: Path, chunks: Iterator[bytes], compress_level: int, compressors: ThreadPoolExecutor
) -> None:
    """Write ``chunks`` to ``path`` as a gzip file with no time stamp (reproducible)."""
    max_pending = 2 * _compression_threads()  # bounds the text held in memory

    def write(raw) -> None:
        raw.write(_gzip_header(path.name, compress_level))
        crc, size, window = 0, 0, b""
        pending: deque = deque()
        for block in _blocks_of(chunks, _DEFLATE_BLOCK_BYTES):
            crc = zlib.crc32(block, crc)
            size += len(block)
            pending.append(compressors.submit(_deflate_block, block, window, compress_level))
            window = block[-_DEFLATE_WINDOW_BYTES:]
            while len(pending) > max_pending:
                raw.write(pending.popleft().result())
        while pending:
            raw.write(pending.popleft().result())
        raw.write(_DEFLATE_END_OF_STREAM)
        raw.write(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))

    _write_atomically(path, write)


def _gzip_header(name: str, compress_level: int) -> bytes:
    # The header Python's gzip module writes with mtime=0: method deflate, flag FNAME,
    # extra flags 2 (best) / 4 (fastest), OS 255 (unknown), then the name without ".gz".
    stored_name = name[: -len(".gz")] if name.endswith(".gz") else name
    extra_flags = 2 if compress_level == 9 else 4 if compress_level == 1 else 0
    return (
        b"\x1f\x8b\x08\x08"
        + struct.pack("<I", 0)
        + bytes([extra_flags, 255])
        + stored_name.encode("latin-1")
        + b"\x00"
    )


def _deflate_block(block: bytes, window: bytes, compress_level: int) -> bytes:
    options = {"zdict": window} if window else {}
    deflater = zlib.compressobj(compress_level, zlib.DEFLATED, -zlib.MAX_WBITS, **options)
    return deflater.compress(block) + deflater.flush(zlib.Z_SYNC_FLUSH)


def _blocks_of(chunks: Iterator[bytes], block_bytes: int) -> Iterator[bytes]:
    """Regroup chunks into blocks of at least ``block_bytes`` (the last may be shorter)."""
    gathered: list[bytes] = []
    gathered_bytes = 0
    for chunk in chunks:
        gathered.append(chunk)
        gathered_bytes += len(chunk)
        if gathered_bytes >= block_bytes:
            yield b"".join(gathered)
            gathered, gathered_bytes = [], 0
    if gathered:
        yield b"".join(gathered)


def _write_atomically(path: Path, write) -> None:
    """Write through a temporary file renamed at the end: no half-written file is left
    under the final name if generation fails."""
    temporary = path.with_name(path.name + ".partial")
    try:
        with open(temporary, "wb") as raw:
            write(raw)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
