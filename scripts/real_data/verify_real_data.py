#!/usr/bin/env python3
"""One-off check of tests/data/real/ against the sources, with pandas (an independent parser).

    python3 scripts/real_data/verify_real_data.py $SRC $BUILD tests/data/real

Re-reads every shipped file and compares it with the source files (all cells, plus a
printed sample of 300 random cells per cohort), counts classes, prints value quantiles
and the sha256 of every shipped file. Exits non-zero on any mismatch.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd

RNG = np.random.default_rng(20240601)
FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("  ok    " if ok else "  FAIL  ") + what)
    if not ok:
        FAILURES.append(what)


def read_gct(path: Path) -> pd.DataFrame:
    with pd.io.common.get_handle(path, "r", compression="infer") as h:
        first, dims = h.handle.readline().strip(), h.handle.readline().split()
        frame = pd.read_csv(h.handle, sep="\t", index_col=0, dtype={"Name": str})
    assert first == "#1.2", first
    desc = frame.pop("Description")
    assert frame.shape == (int(dims[0]), int(dims[1])), (frame.shape, dims)
    frame.attrs["description"] = desc
    return frame


def quantiles(frame: pd.DataFrame) -> str:
    v = frame.to_numpy(dtype=float).ravel()
    q = np.quantile(v, [0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1])
    return ("min/1/5/25/50/75/95/99%/max = " + " / ".join(f"{x:.4g}" for x in q)
            + f"; negatives {100 * (v < 0).mean():.1f}%")


def sample_cells(a: pd.DataFrame, b: pd.DataFrame, n: int = 300) -> float:
    rows = RNG.integers(0, a.shape[0], n)
    cols = RNG.integers(0, a.shape[1], n)
    return float(np.max(np.abs(a.to_numpy(float)[rows, cols] - b.to_numpy(float)[rows, cols])))


def golub(src: Path, build: Path, out: Path) -> None:
    actual = pd.read_csv(src / "golub_actual.csv", dtype={"patient": str}).dropna(how="all").set_index("patient")["cancer"]
    for part, es in (("train", "Train"), ("independent", "Test")):
        print(f"golub_{part}")
        gct = read_gct(out / f"golub_{part}.gct.gz")
        raw = pd.read_csv(src / f"golub_data_set_ALL_AML_{part}.csv", dtype={"Gene Accession Number": str})
        raw = raw.set_index("Gene Accession Number")
        desc = raw.pop("Gene Description")
        raw = raw[[c for c in raw.columns if not str(c).startswith("call") and not str(c).startswith("Unnamed")]]
        check(gct.index.equals(raw.index) and list(gct.columns) == list(raw.columns), "probes and samples in source order")
        check(np.array_equal(gct.to_numpy(float), raw.to_numpy(float)), f"all {gct.size} cells equal the source CSV")
        check(sample_cells(gct, raw) == 0.0, "300 random cells equal the source CSV")
        check((gct.attrs["description"] == desc.str.strip()).all(), "Description = source 'Gene Description'")
        es_x = pd.read_csv(build / f"golubEsets_{es}_exprs.csv", index_col=0)
        check(np.array_equal(gct.to_numpy(float), es_x.reindex(index=gct.index, columns=gct.columns).to_numpy(float)),
              "all cells equal Bioconductor golubEsets exprs()")
        labels = pd.read_csv(out / f"golub_{part}_labels.csv", dtype=str, keep_default_na=False)
        check(list(labels["sample"]) == list(gct.columns), "labels CSV in GCT column order")
        check((labels.set_index("sample")["label"] == actual.reindex(labels["sample"])).all(), "labels = actual.csv")
        cls = (out / f"golub_{part}.cls").read_text().split("\n")
        check(cls[2].split() == list(labels["label"]), ".cls = labels CSV")
        print("  classes", labels["label"].value_counts().to_dict(), "subtypes", labels["subtype"].value_counts().to_dict())
        print("  shape", gct.shape, "|", quantiles(gct))
    ph = pd.read_csv(out / "golub_pheno.csv", dtype=str, keep_default_na=False)
    check(len(ph) == 72 and (ph.set_index("sample")["ALL.AML"] == actual.reindex(ph["sample"])).all(), "golub_pheno.csv ALL.AML = actual.csv (72)")


def chiaretti(build: Path, out: Path) -> None:
    print("chiaretti_all")
    gct = read_gct(out / "chiaretti_all.gct.gz")
    gct.columns = gct.columns.astype(str)
    full = pd.read_csv(build / "chiaretti_all_fullprec.csv", index_col=0)
    full.columns = [str(c) for c in full.columns]
    check(gct.index.equals(full.index) and list(gct.columns) == list(full.columns), "probes and samples equal exprs(ALL) dimnames")
    diff = np.abs(gct.to_numpy(float) - full.to_numpy(float))
    check(diff.max() <= 5e-6 + 1e-12, f"all cells within 5e-6 of full precision (max {diff.max():.2e})")
    check(sample_cells(gct, full) <= 5e-6 + 1e-12, "300 random cells within 5e-6")
    labels = pd.read_csv(out / "chiaretti_all_labels.csv", dtype=str)
    check(list(labels["sample"]) == list(gct.columns), "labels CSV in GCT column order")
    check(set(labels["label"]) == {"ALL"}, "all labels ALL")
    ph = pd.read_csv(out / "chiaretti_all_pheno.csv.gz", dtype=str)
    check(list(ph["sample"]) == list(gct.columns) and ph.shape[1] == 22, "pheno: 128 samples x (sample + 21 pData columns)")
    print("  BT", labels["subtype"].value_counts().sort_index().to_dict())
    print("  lineage", labels["subtype"].str[0].value_counts().to_dict(), "| mol.biol", ph["mol.biol"].value_counts().to_dict())
    print("  shape", gct.shape, "|", quantiles(gct))


def gsea(src: Path, out: Path) -> None:
    print("gsea_leukemia_hgu95av2")
    gct = read_gct(out / "gsea_leukemia_hgu95av2.gct.gz")
    raw = pd.read_csv(src / "Leukemia_hgu95av2.gct", sep="\t", skiprows=2, index_col=0, dtype={"NAME": str})
    raw.pop("Description")
    check(gct.index.equals(raw.index) and list(gct.columns) == list(raw.columns), "probes and samples in source order")
    check(np.array_equal(gct.to_numpy(float), raw.to_numpy(float)), f"all {gct.size} cells equal the source GCT")
    check(sample_cells(gct, raw) == 0.0, "300 random cells equal the source GCT")
    labels = pd.read_csv(out / "gsea_leukemia_hgu95av2_labels.csv", dtype=str)
    src_cls = (src / "Leukemia.cls").read_text().split("\n")[2].split()
    check(list(labels["label"]) == src_cls and list(labels["sample"]) == list(gct.columns), "labels = source .cls, in column order")
    print("  classes", labels["label"].value_counts().to_dict())
    print("  shape", gct.shape, "|", quantiles(gct))


def annotation(src: Path, out: Path) -> None:
    print("hgu95av2_annotation")
    ann = pd.read_csv(out / "GPL8300_hgu95av2_annotation.csv.gz", dtype=str, keep_default_na=False)
    chip = pd.read_csv(src / "Human_AFFY_HG_U95_MSigDB_7_0_final.chip", sep="\t", dtype=str, keep_default_na=False)
    expect = chip.drop_duplicates(["Probe Set ID", "Gene Symbol"]).groupby("Probe Set ID", sort=False)["Gene Symbol"].agg(" /// ".join)
    got = ann.set_index("probe_id")["gene"]
    check(got.index.is_unique and len(got) == 12625, "12,625 unique probe ids")
    check((got == expect.reindex(got.index).fillna("")).all(), "every row equals the chip file's symbols for that probe")
    for probe, gene in (("36958_at", "ZYX"), ("36802_at", "CD33"), ("33284_at", "MPO"), ("1000_at", "MAPK3")):
        check(got.get(probe) == gene, f"{probe} -> {gene}")
    print(f"  mapped {(got != '').sum()}, multi-gene {got.str.contains(' /// ').sum()}, empty {(got == '').sum()}")


def main() -> None:
    src, build, out = (Path(a) for a in sys.argv[1:4])
    golub(src, build, out)
    chiaretti(build, out)
    gsea(src, out)
    annotation(src, out)
    print("sha256")
    for path in sorted(out.iterdir()):
        if path.name != "PROVENANCE.md":
            print(f"  {hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}  ({path.stat().st_size} bytes)")
    if FAILURES:
        sys.exit(f"{len(FAILURES)} check(s) failed")
    print("all checks passed")


if __name__ == "__main__":
    main()
