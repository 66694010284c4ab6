"""Gene-pair scores for k top-scoring pairs (Tan et al. 2005): one blocked, compiled kernel, run in one
process (:func:`numpy_pair_scores`) or as Spark tasks over blocks of gene pairs (:func:`spark_pair_scores`).

Everything here reads only the order of genes within each sample: the input is turned into
within-sample ranks first, so any strictly increasing transform of a sample (log2 or linear,
another scanner gain) gives the same ranks and the same scores.

Scores, for genes i and j over the training rows where both are measured:

* ``delta[i, j] = (E[sign(x_i - x_j) | AML] - E[sign(x_i - x_j) | ALL]) / 2``. Without ties this is
  exactly Tan et al.'s ``P(x_i > x_j | AML) - P(x_i > x_j | ALL)``; with ties (integer-valued or
  floored arrays) it stays antisymmetric, ``delta[j, i] = -delta[i, j]``, which Tan's form is not.
* ``gamma[i, j] = d_i - d_j`` with ``d`` = mean within-sample rank in AML minus that in ALL: Tan
  et al.'s rank-difference score, used only to break ties in ``delta``. The class means are over
  each gene's measured rows (not over the rows where both genes are measured): with nothing
  missing they are the same, and it costs O(genes) instead of another pass over the pairs.

The module sits outside ``leukspark.models`` so that a Spark task importing it does not import
every model's library (torch, xgboost) through the registry.

Cost: ``O(genes^2 x samples)`` comparisons, hence the per-gene prefilter (:func:`prefilter_genes`)
and blocks of genes ``i`` against all later genes ``j`` whose memory is bounded
(``max_block_elements``). The kernel (:func:`score_block`) walks tiles of genes that stay in a
core's cache; at full GSE13159 shape (1,033 samples, every one of 21,000 genes) the search runs in
the training fan-out's time (benchmarks/results/ktsp.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numba
import numpy as np

from leukspark.errors import ModelError

#: A gene measured in fewer than this share of one class's training rows is not a candidate:
#: its pair probabilities would rest on a handful of samples.
MIN_MEASURED_SHARE = 0.5
#: Scores of one block (block rows x genes, float64) held at once: 8 M elements, 64 MB.
MAX_BLOCK_ELEMENTS = 1 << 23
#: Rows of one block at most: more rows make the tasks fewer, not the kernel faster.
BLOCK_ROWS = 256
#: Genes j compared with one gene i before the kernel moves to the next i: their ranks (64 x samples
#: float32, 150 KB for 570 samples of a class) stay in one core's L2 cache while the block's rows pass.
#: A kernel that compared a block of genes with all genes for all samples at once (one samples x block
#: x genes numpy tensor) streamed the whole rank matrix from memory for every block: memory-bound, so
#: two Spark tasks ran no faster than one process (benchmarks/results/ktsp.md).
TILE_GENES = 64


@dataclass(frozen=True)
class PairScores:
    """Scores of every pair of candidate genes; index ``a`` means input column ``candidates[a]``."""

    candidates: np.ndarray  # int64 input columns searched, ascending
    delta: np.ndarray       # (m, m) float64, antisymmetric, 0 on the diagonal
    gamma: np.ndarray       # (m, m) float64, antisymmetric tie-break score


def within_sample_ranks(matrix: np.ndarray) -> np.ndarray:
    """Each row's average ranks among its measured values, as (rank - 0.5) / measured in (0, 1).

    float32: distinct ranks differ by at least 0.5 / measured (> 1e-6 for up to 500,000 genes),
    far above float32 spacing below 1, so the order and the ties of every row survive. NaN stays NaN.
    """
    from scipy.stats import rankdata  # here: Spark tasks import this module and need only numpy

    values = np.asarray(matrix, dtype=np.float64)
    ranks = rankdata(values, axis=1, nan_policy="omit")
    measured = np.maximum(np.isfinite(values).sum(axis=1, keepdims=True), 1)
    return ((ranks - 0.5) / measured).astype(np.float32)


def prefilter_genes(ranks: np.ndarray, labels: np.ndarray, count: int | None) -> np.ndarray:
    """The ``count`` candidate columns (ascending): half with the largest Welch t of within-sample
    rank (AML above ALL), half with the smallest (ALL above AML), as switchBox's Wilcoxon filter
    takes both directions, so that an AML-up gene can pair with an ALL-up gene.

    Genes measured in fewer than MIN_MEASURED_SHARE of either class's rows are never candidates.
    ``None`` or a count at least the number of eligible genes keeps every eligible gene.
    """
    labels = np.asarray(labels)
    aml, all_ = ranks[labels == 1], ranks[labels == 0]
    measured_aml, measured_all = np.isfinite(aml).sum(axis=0), np.isfinite(all_).sum(axis=0)
    eligible = np.flatnonzero((measured_aml >= MIN_MEASURED_SHARE * len(aml))
                              & (measured_all >= MIN_MEASURED_SHARE * len(all_))
                              & (measured_aml > 0) & (measured_all > 0))
    if eligible.size < 2:
        raise ModelError("fewer than two genes are measured in most training samples of both classes")
    if count is None or count >= eligible.size:
        return eligible.astype(np.int64)
    t_statistic = _welch_t(aml[:, eligible], all_[:, eligible])
    order = np.argsort(-t_statistic, kind="stable")  # ties keep column order: deterministic
    up = count // 2 + count % 2
    chosen = np.concatenate([order[:up], order[order.size - (count - up):]])
    return np.sort(eligible[chosen]).astype(np.int64)


def _welch_t(aml: np.ndarray, all_: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        n_aml, n_all = np.isfinite(aml).sum(axis=0), np.isfinite(all_).sum(axis=0)
        difference = np.nanmean(aml, axis=0, dtype=np.float64) - np.nanmean(all_, axis=0, dtype=np.float64)
        variance = (np.nanvar(aml, axis=0, dtype=np.float64, ddof=1) / n_aml
                    + np.nanvar(all_, axis=0, dtype=np.float64, ddof=1) / n_all)
    # A gene constant in both classes (variance 0) ranks as t = 0, not as a division by zero.
    return np.divide(difference, np.sqrt(variance), out=np.zeros_like(difference), where=variance > 0)


def rank_difference(ranks: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per gene: mean within-sample rank in AML minus that in ALL (over its measured rows)."""
    labels = np.asarray(labels)
    with np.errstate(invalid="ignore"):
        difference = (np.nanmean(ranks[labels == 1], axis=0, dtype=np.float64)
                      - np.nanmean(ranks[labels == 0], axis=0, dtype=np.float64))
    return np.nan_to_num(difference, nan=0.0)


def block_bounds(n_samples: int, n_genes: int, max_block_elements: int = MAX_BLOCK_ELEMENTS) -> list[tuple[int, int]]:
    """[start, stop) gene blocks; block ``i`` is scored against genes ``start..n_genes``.

    A block holds at most ``max_block_elements`` scores (rows x genes) and at most BLOCK_ROWS rows.
    ``n_samples`` does not bound it: the kernel holds no samples x genes tensor (:func:`score_block`).
    """
    rows = max(1, min(BLOCK_ROWS, max_block_elements // max(1, n_genes)))
    return [(start, min(start + rows, n_genes)) for start in range(0, n_genes, rows)]


@dataclass(frozen=True)
class RankedRows:
    """The kernel's input: within-sample ranks of the candidate genes, gene-major and split by class
    (one gene's ranks over one class's rows are contiguous, as the kernel reads them), NaN where missing."""

    aml: np.ndarray   # (genes, AML rows) float32
    all_: np.ndarray  # (genes, ALL rows) float32
    complete: bool    # no NaN: the kernel need not count the rows where both genes are measured


def ranked_rows(ranks: np.ndarray, labels: np.ndarray) -> RankedRows:
    """Transpose ``ranks`` (samples x candidate genes) into the kernel's gene-major form, by class."""
    labels = np.asarray(labels)
    aml = np.ascontiguousarray(ranks[labels == 1].T, dtype=np.float32)
    all_ = np.ascontiguousarray(ranks[labels == 0].T, dtype=np.float32)
    return RankedRows(aml, all_, not (np.isnan(aml).any() or np.isnan(all_).any()))


def score_block(rows: RankedRows, start: int, stop: int) -> np.ndarray:
    """``delta`` of pairs (i, j), i in [start, stop), j in [start, genes): shape (stop - start, genes - start).

    Entries with j <= i are 0 (each unordered pair is scored once, in the row of its smaller
    gene). A missing gene compares as neither greater nor smaller and the pair's class
    frequencies are taken over the rows where both genes are measured.
    """
    frequencies = []
    for genes in (rows.aml, rows.all_):
        n_genes, n_rows = genes.shape
        sums = np.zeros((stop - start, n_genes - start), dtype=np.int32)
        if rows.complete:
            _sign_sums(genes, start, stop, TILE_GENES, sums, None)
            both = np.float64(n_rows)
        else:
            counts = np.zeros_like(sums)
            _sign_sums(genes, start, stop, TILE_GENES, sums, counts)
            both = counts.astype(np.float64)
        total = sums.astype(np.float64)
        frequencies.append(np.divide(total, both, out=np.zeros_like(total), where=np.asarray(both) > 0))
    return (frequencies[0] - frequencies[1]) / 2.0


# The kernel is compiled (numba), not numpy: it needs no temporary tensor, so it runs from cache at
# about 10 G comparisons per second per core; the numpy tensor kernel it replaced managed ~0.7 and was
# memory-bound (see TILE_GENES); the whole search at full shape runs 8.8x faster in one process. One thread (no `parallel`): the Spark tasks are the parallelism.
# Not cached on disk: a cluster runs this module from a zip, where numba has nowhere to cache.
@numba.njit(nogil=True)
def _sign_sums(genes, start, stop, tile, sums, counts):
    """sums[i - start, j - start] = sum over rows of sign(genes[i] - genes[j]) for j > i, tile by tile;
    with ``counts`` (not None) also the rows where both are measured. Numba compiles the two forms
    apart and drops the ``counts is None`` branches from each, so the complete data's loop stays bare."""
    n_genes, n_rows = genes.shape
    for column in range(start, n_genes, tile):
        end = min(column + tile, n_genes)
        for i in range(start, stop):
            left = genes[i]
            for j in range(max(column, i + 1), end):
                right = genes[j]
                total = 0
                both = 0
                for s in range(n_rows):  # NaN compares as neither: a sign of 0
                    total += (left[s] > right[s]) - (left[s] < right[s])
                    if counts is not None:
                        both += (left[s] == left[s]) & (right[s] == right[s])  # x == x: not NaN
                sums[i - start, j - start] = total
                if counts is not None:
                    counts[i - start, j - start] = both


def _assemble(n_genes: int, blocks: Iterator[tuple[int, int, np.ndarray]]) -> np.ndarray:
    delta = np.zeros((n_genes, n_genes))
    for start, stop, values in blocks:
        delta[start:stop, start:] = values  # j <= i is 0 in a block (score_block): the upper triangle only
    return delta - delta.T  # the lower triangle from antisymmetry


def _prepared(matrix: np.ndarray, labels: np.ndarray, prefilter: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(np.int8)
    ranks = within_sample_ranks(matrix)
    candidates = prefilter_genes(ranks, labels, prefilter)
    return labels, ranks, candidates


def numpy_pair_scores(matrix: np.ndarray, labels: np.ndarray, *, prefilter: int | None = None,
                      max_block_elements: int = MAX_BLOCK_ELEMENTS) -> PairScores:
    """Scores of every pair of prefiltered genes of ``matrix`` (samples x genes), in this process."""
    labels, ranks, candidates = _prepared(matrix, labels, prefilter)
    return scores_from_ranks(ranks, labels, candidates, max_block_elements)


def scores_from_ranks(ranks: np.ndarray, labels: np.ndarray, candidates: np.ndarray,
                      max_block_elements: int = MAX_BLOCK_ELEMENTS) -> PairScores:
    """:func:`numpy_pair_scores` from within-sample ranks and chosen candidate columns."""
    subset = ranks[:, candidates]
    rows = ranked_rows(subset, labels)
    bounds = block_bounds(*subset.shape, max_block_elements)
    delta = _assemble(subset.shape[1], ((a, b, score_block(rows, a, b)) for a, b in bounds))
    return PairScores(candidates, delta, _gamma(subset, labels))


def _gamma(subset: np.ndarray, labels: np.ndarray) -> np.ndarray:
    difference = rank_difference(subset, labels)
    return difference[:, None] - difference[None, :]


def spark_pair_scores(spark, matrix: np.ndarray, labels: np.ndarray, *, prefilter: int | None = None,
                      max_block_elements: int = MAX_BLOCK_ELEMENTS, partitions: int | None = None) -> PairScores:
    """:func:`numpy_pair_scores` as Spark tasks over blocks of gene pairs (ranks and prefilter on
    the driver; see :func:`spark_scores_from_ranks`)."""
    labels, ranks, candidates = _prepared(matrix, labels, prefilter)
    return spark_scores_from_ranks(spark, ranks, labels, candidates, max_block_elements, partitions)


def task_groups(bounds: list[tuple[int, int]], n_genes: int, n_tasks: int) -> list[list[int]]:
    """Block ids in ``n_tasks`` groups of about equal work, one Spark task each.

    A block's work is its rows x the genes from its start on, so the first blocks of the triangle
    hold the most; the blocks go, largest first, to the group with the least work so far (LPT).
    Few large tasks, not one per block: each Python task costs ~0.1 s of set-up (measured), as much
    as the kernel spends on a block of 256 rows at 8,000 genes.
    """
    n_tasks = max(1, min(n_tasks, len(bounds)))
    work = [(stop - start) * (n_genes - start) for start, stop in bounds]
    groups: list[list[int]] = [[] for _ in range(n_tasks)]
    loads = [0] * n_tasks
    for block_id in sorted(range(len(bounds)), key=lambda b: -work[b]):
        lightest = loads.index(min(loads))
        groups[lightest].append(block_id)
        loads[lightest] += work[block_id]
    return groups


def spark_scores_from_ranks(spark, ranks: np.ndarray, labels: np.ndarray, candidates: np.ndarray,
                            max_block_elements: int = MAX_BLOCK_ELEMENTS, partitions: int | None = None) -> PairScores:
    """:func:`scores_from_ranks` as Spark tasks: the candidates' ranks are broadcast once, block ids
    are parallelized, each task scores its blocks with :func:`score_block`, and the driver assembles
    the same matrix (the same kernel on the same blocks: bit-identical)."""
    subset = ranks[:, candidates]
    bounds = block_bounds(*subset.shape, max_block_elements)
    context = spark.sparkContext
    shared = context.broadcast(ranked_rows(subset, labels))
    groups = task_groups(bounds, subset.shape[1], partitions or 2 * context.defaultParallelism)

    def score_partition(block_groups):
        rows = shared.value
        for group in block_groups:
            for block_id in group:
                start, stop = bounds[block_id]
                yield start, stop, score_block(rows, start, stop)

    try:
        # collect, not toLocalIterator: the latter runs one job per partition, one after another.
        blocks = context.parallelize(groups, len(groups)).mapPartitions(score_partition).collect()
        delta = _assemble(subset.shape[1], iter(blocks))
    finally:
        shared.unpersist()
    return PairScores(candidates, delta, _gamma(subset, labels))


@dataclass(frozen=True)
class TopEntries:
    """The best ``keep`` pairs (i, j > i) of every row of some blocks, in candidate indices: all the
    greedy choice of at most keep // 2 + 1 disjoint pairs can need (:func:`block_top_entries`)."""

    i: np.ndarray      # int64
    j: np.ndarray      # int64
    delta: np.ndarray  # float64, signed delta[i, j]
    gamma: np.ndarray  # float64, signed gamma[i, j]

    @staticmethod
    def concatenate(parts: list["TopEntries"]) -> "TopEntries":
        kinds = {"i": np.int64, "j": np.int64, "delta": np.float64, "gamma": np.float64}
        return TopEntries(*(np.concatenate([getattr(p, f) for p in parts]).astype(kind, copy=False) if parts
                            else np.zeros(0, dtype=kind) for f, kind in kinds.items()))


def block_top_entries(rows: RankedRows, difference: np.ndarray, start: int, stop: int, keep: int) -> TopEntries:
    """Score block [start, stop) (:func:`score_block`) and keep, per row i, its ``keep`` best pairs
    (i, j > i) in the greedy's order: |delta| descending, then |gamma| descending, then j ascending;
    pairs with delta = 0 never count.

    Why ``keep = 2 x max_pairs`` is enough: the t-th greedy pair (i, j) is the first available pair
    in that order over all rows; every pair before it in row i's own order is unavailable, so it
    touches one of the 2 (t - 1) genes already used: (i, j) is among row i's first 2t - 1 pairs.
    """
    delta = score_block(rows, start, stop)
    parts = []
    for offset, row in enumerate(range(start, stop)):
        values = delta[offset, row + 1 - start:]
        j = np.flatnonzero(values != 0)
        if j.size == 0:
            continue
        magnitude = np.abs(values[j])
        if j.size > keep:  # the keep-th largest |delta| and everything tied with it, then the full order
            cut = np.partition(magnitude, j.size - keep)[j.size - keep]
            j, magnitude = j[magnitude >= cut], magnitude[magnitude >= cut]
        columns = j + row + 1
        gamma = difference[row] - difference[columns]
        order = np.lexsort((columns, -np.abs(gamma), -magnitude))[:keep]
        parts.append(TopEntries(np.full(order.size, row, dtype=np.int64), columns[order].astype(np.int64),
                                values[j[order]], gamma[order]))
    return TopEntries.concatenate(parts)


def greedy_disjoint_pairs(entries: TopEntries, candidates: np.ndarray, max_pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`top_disjoint_pairs` from the kept entries of every row: the same pairs, in the same order."""
    order = np.lexsort((entries.j, entries.i, -np.abs(entries.gamma), -np.abs(entries.delta)))
    used: set[int] = set()
    chosen = []
    for index in order:
        i, j = int(entries.i[index]), int(entries.j[index])
        if i in used or j in used:
            continue
        chosen.append(index)
        used.update((i, j))
        if len(chosen) == max_pairs:
            break
    if not chosen:
        raise ModelError("no gene pair orders the two classes differently on the training rows")
    chosen = np.array(chosen)
    local = np.stack([entries.i[chosen], entries.j[chosen]], axis=1)
    oriented = np.where(entries.delta[chosen][:, None] > 0, local, local[:, ::-1])
    return candidates[oriented], np.abs(entries.delta[chosen]), np.abs(entries.gamma[chosen])


def numpy_top_pairs(ranks: np.ndarray, labels: np.ndarray, candidates: np.ndarray, max_pairs: int,
                    max_block_elements: int = MAX_BLOCK_ELEMENTS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The greedy k-TSP pairs in one process, block by block, holding only each row's best pairs
    (memory O(candidates x max_pairs), not candidates^2)."""
    subset = ranks[:, candidates]
    rows = ranked_rows(subset, labels)
    difference = rank_difference(subset, labels)
    keep = 2 * max_pairs
    parts = [block_top_entries(rows, difference, a, b, keep) for a, b in block_bounds(*subset.shape, max_block_elements)]
    return greedy_disjoint_pairs(TopEntries.concatenate(parts), candidates, max_pairs)


def spark_top_pairs(spark, ranks: np.ndarray, labels: np.ndarray, candidates: np.ndarray, max_pairs: int,
                    max_block_elements: int = MAX_BLOCK_ELEMENTS, partitions: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`numpy_top_pairs` as Spark tasks over blocks of gene pairs: each task returns only its
    rows' best 2 x max_pairs pairs, so the driver receives O(candidates x max_pairs) numbers, not the
    candidates^2 / 2 scores, and the search needs no prefilter to fit on it."""
    subset = ranks[:, candidates]
    bounds = block_bounds(*subset.shape, max_block_elements)
    context = spark.sparkContext
    shared = context.broadcast((ranked_rows(subset, labels), rank_difference(subset, labels)))
    groups = task_groups(bounds, subset.shape[1], partitions or 2 * context.defaultParallelism)
    keep = 2 * max_pairs

    def top_of_partition(block_groups):
        rows, difference = shared.value
        for group in block_groups:
            yield TopEntries.concatenate([block_top_entries(rows, difference, *bounds[b], keep) for b in group])

    try:
        parts = context.parallelize(groups, len(groups)).mapPartitions(top_of_partition).collect()
    finally:
        shared.unpersist()
    return greedy_disjoint_pairs(TopEntries.concatenate(parts), candidates, max_pairs)


def top_disjoint_pairs(scores: PairScores, max_pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy k-TSP choice: repeatedly the pair with the largest |delta| (ties: largest |gamma|,
    then the lowest (i, j)) among genes not yet used, until ``max_pairs`` or no informative pair.

    Returns (pairs (k, 2) as input columns oriented so that x[i] > x[j] votes AML,
    |delta| (k,), |gamma| (k,)). A pair with delta = 0 carries no information and is never taken.
    """
    m = scores.delta.shape[0]
    primary = np.abs(scores.delta)
    primary[np.tril_indices(m)] = -1.0  # each unordered pair once, and never a gene with itself
    secondary = np.abs(scores.gamma)
    chosen: list[tuple[int, int]] = []
    while len(chosen) < max_pairs:
        best = primary.max(initial=-1.0)
        if best <= 0:
            break
        rows, columns = np.nonzero(primary == best)  # row-major: lowest (i, j) first
        pick = int(np.argmax(secondary[rows, columns]))  # first of the largest
        i, j = int(rows[pick]), int(columns[pick])
        chosen.append((i, j))
        primary[[i, j], :] = -1.0
        primary[:, [i, j]] = -1.0
    if not chosen:
        raise ModelError("no gene pair orders the two classes differently on the training rows")
    local = np.array(chosen, dtype=np.int64)
    signs = np.sign(scores.delta[local[:, 0], local[:, 1]])
    oriented = np.where(signs[:, None] > 0, local, local[:, ::-1])
    return (scores.candidates[oriented],
            np.abs(scores.delta[local[:, 0], local[:, 1]]),
            np.abs(scores.gamma[local[:, 0], local[:, 1]]))


def pair_votes(matrix: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(samples, k) int8: +1 where x[i] > x[j] (an AML vote), -1 where smaller, 0 for a tie or a
    missing gene (the pair abstains)."""
    left, right = matrix[:, pairs[:, 0]], matrix[:, pairs[:, 1]]
    return (left > right).view(np.int8) - (left < right).view(np.int8)
