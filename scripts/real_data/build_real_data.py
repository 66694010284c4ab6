#!/usr/bin/env python3
"""One-off converter: real public leukemia cohorts -> tests/data/real/ (GCT / CSV / CLS, gzipped).

Not used at run time. Standard library only. Steps (see README.md beside this file):

    bash scripts/real_data/fetch_sources.sh                  # sources -> $SRC (sha256-checked)
    Rscript scripts/real_data/dump_r_sources.R $SRC $BUILD    # .rda / r-bioc-all -> text
    python3 scripts/real_data/build_real_data.py $SRC $BUILD tests/data/real
    python3 scripts/real_data/verify_real_data.py $SRC $BUILD tests/data/real   # needs pandas

Only the format changes: expression values are copied as the source's own text tokens
(Golub integers, GSEA one-decimal values); the Chiaretti RMA values are printed by R with
5 decimals (dump_r_sources.R). Gzip is written with mtime 0 so rebuilt files are byte-identical.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import sys
from pathlib import Path

NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def write_gz(path: Path, text: str) -> None:
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            gz.write(text.encode("utf-8"))


def write_plain(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="")


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def gct_text(names: list[str], descriptions: list[str], samples: list[str], values: list[list[str]]) -> str:
    assert len(names) == len(descriptions) == len(values) and len(set(names)) == len(names)
    assert len(set(samples)) == len(samples)
    lines = ["#1.2", f"{len(names)}\t{len(samples)}", "\t".join(["Name", "Description", *samples])]
    for name, desc, row in zip(names, descriptions, values):
        assert len(row) == len(samples), name
        for field in (name, desc, *row):
            assert "\t" not in field and "\n" not in field and "\r" not in field, (name, field)
        lines.append("\t".join([name, desc, *row]))
    return "\n".join(lines) + "\n"


def cls_text(labels: list[str], classes: list[str]) -> str:
    return f"{len(labels)} {len(classes)} 1\n# {' '.join(classes)}\n{' '.join(labels)}\n"


# ----------------------------------------------------------------------------- Golub 1999
def read_golub_csv(path: Path) -> tuple[list[str], list[str], list[str], list[list[str]]]:
    """Kaggle-style CSV: 'Gene Description','Gene Accession Number', then (sample, 'call') pairs."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header = [h.strip() for h in rows[0]]
    assert header[:2] == ["Gene Description", "Gene Accession Number"], header[:2]
    value_cols, samples = [], []
    for i in range(2, len(header), 2):
        if header[i] == "" and all(h == "" for h in header[i:]):
            break
        assert header[i + 1].startswith("call"), (i, header[i], header[i + 1])
        value_cols.append(i)
        samples.append(header[i])
    names, descs, values = [], [], []
    for row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue
        names.append(row[1].strip())
        descs.append(row[0].strip())
        cells = [row[i].strip() for i in value_cols]
        assert all(NUMBER.match(c) for c in cells), (row[1], cells)
        values.append(cells)
    return names, descs, samples, values


def read_csv_dicts(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def build_golub(src: Path, build: Path, out: Path) -> None:
    actual = {r["patient"].strip(): r["cancer"].strip() for r in read_csv_dicts(src / "golub_actual.csv") if r["patient"].strip()}
    assert len(actual) == 72 and set(actual.values()) == {"ALL", "AML"}
    pheno_rows = []
    for part, es_set in (("train", "Train"), ("independent", "Test")):
        names, descs, samples, values = read_golub_csv(src / f"golub_data_set_ALL_AML_{part}.csv")
        assert len(names) == 7129, len(names)
        pdata = {r["Samples"]: r for r in read_csv_dicts(build / f"golubEsets_{es_set}_pdata.csv")}
        assert set(pdata) == set(samples), (part, sorted(set(pdata) ^ set(samples)))
        labels = []
        for s in samples:
            label = actual[s]
            assert pdata[s]["ALL.AML"] == label, (s, label, pdata[s]["ALL.AML"])
            tb = pdata[s]["T.B.cell"]
            tb = "" if tb == "NA" else tb
            assert (label == "ALL") == (tb in ("B-cell", "T-cell")), (s, label, tb)
            labels.append((s, label, tb))
            pheno_rows.append([s, part, *(("" if pdata[s][k] == "NA" else pdata[s][k]) for k in PHENO_KEYS)])
        write_gz(out / f"golub_{part}.gct.gz", gct_text(names, descs, samples, values))
        write_plain(out / f"golub_{part}_labels.csv", csv_text(["sample", "label", "subtype"], [list(x) for x in labels]))
        write_plain(out / f"golub_{part}.cls", cls_text([x[1] for x in labels], ["ALL", "AML"]))
        counts = {c: sum(1 for x in labels if x[1] == c) for c in ("ALL", "AML")}
        print(f"golub_{part}: {len(names)} probes x {len(samples)} samples, {counts}")
    pheno_rows.sort(key=lambda r: int(r[0]))
    write_plain(out / "golub_pheno.csv", csv_text(["sample", "set", *PHENO_KEYS], pheno_rows))


PHENO_KEYS = ["ALL.AML", "BM.PB", "T.B.cell", "FAB", "Date", "Gender", "pctBlasts", "Treatment", "PS", "Source"]


# ----------------------------------------------------------------------------- Chiaretti 2004 (r-bioc-all)
def build_chiaretti(build: Path, out: Path) -> None:
    gct = (build / "chiaretti_all.gct").read_text(encoding="utf-8")
    lines = gct.rstrip("\n").split("\n")
    assert lines[0] == "#1.2" and lines[1] == "12625\t128" and len(lines) == 3 + 12625
    samples = lines[2].split("\t")[2:]
    write_gz(out / "chiaretti_all.gct.gz", gct)
    pheno = read_csv_dicts(build / "chiaretti_all_pheno.csv")
    assert [r["sample"] for r in pheno] == samples
    rows = []
    for r in pheno:
        bt = r["BT"]
        assert re.fullmatch(r"[BT]\d?", bt), bt
        rows.append([r["sample"], "ALL", bt])
    write_plain(out / "chiaretti_all_labels.csv", csv_text(["sample", "label", "subtype"], rows))
    with open(build / "chiaretti_all_pheno.csv", newline="", encoding="utf-8") as handle:
        records = list(csv.reader(handle))
    write_gz(out / "chiaretti_all_pheno.csv.gz", csv_text(records[0], [["" if c == "NA" else c for c in rec] for rec in records[1:]]))
    print(f"chiaretti_all: 12625 probes x {len(samples)} samples, B={sum(r[2][0] == 'B' for r in rows)} T={sum(r[2][0] == 'T' for r in rows)}")


# ----------------------------------------------------------------------------- GSEA Leukemia_hgu95av2 + HG_U95 chip
def build_gsea_leukemia(src: Path, out: Path) -> list[str]:
    lines = (src / "Leukemia_hgu95av2.gct").read_text(encoding="utf-8").split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    assert lines[0].strip() == "#1.2" and lines[1].split() == ["12564", "48"]
    header = lines[2].rstrip("\r").split("\t")
    assert header[0] == "NAME" and header[1] == "Description"
    samples = header[2:]
    names, descs, values = [], [], []
    for line in lines[3:]:
        cells = line.rstrip("\r").split("\t")
        assert len(cells) == 2 + len(samples), cells[0]
        assert all(NUMBER.match(c) for c in cells[2:]), cells[0]
        names.append(cells[0])
        descs.append(cells[1])
        values.append(cells[2:])
    assert len(names) == 12564
    write_gz(out / "gsea_leukemia_hgu95av2.gct.gz", gct_text(names, descs, samples, values))
    cls_lines = [l.strip() for l in (src / "Leukemia.cls").read_text(encoding="utf-8").splitlines() if l.strip()]
    classes = cls_lines[2].split()
    assert cls_lines[0].split() == ["48", "2", "1"] and cls_lines[1].split() == ["#", "ALL", "AML"] and len(classes) == 48
    for s, c in zip(samples, classes):
        assert s.split("_")[0] == c, (s, c)  # sample names ALL_n / AML_n agree with the .cls
    write_plain(out / "gsea_leukemia_hgu95av2_labels.csv", csv_text(["sample", "label"], [[s, c] for s, c in zip(samples, classes)]))
    write_plain(out / "gsea_leukemia_hgu95av2.cls", cls_text(classes, ["ALL", "AML"]))
    print(f"gsea_leukemia_hgu95av2: {len(names)} probes x {len(samples)} samples, "
          f"ALL={classes.count('ALL')} AML={classes.count('AML')}")
    return names


def build_hgu95av2_annotation(src: Path, build: Path, out: Path) -> None:
    """MSigDB v7.0 HG_U95 chip (one row per probe/gene pair) -> probe_id,gene ('A /// B'),
    restricted to the 12,625 HG-U95Av2 probe sets (the row ids of r-bioc-all's ALL)."""
    genes: dict[str, list[str]] = {}
    with open(src / "Human_AFFY_HG_U95_MSigDB_7_0_final.chip", newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        assert next(reader)[:2] == ["Probe Set ID", "Gene Symbol"]
        for row in reader:
            probe, symbol = row[0].strip(), row[1].strip()
            if symbol and symbol not in genes.setdefault(probe, []):
                genes[probe].append(symbol)
    probes = [line.split("\t", 1)[0] for line in (build / "chiaretti_all.gct").read_text(encoding="utf-8").split("\n")[3:] if line]
    assert len(probes) == 12625
    rows = [[p, " /// ".join(genes.get(p, []))] for p in probes]
    write_gz(out / "GPL8300_hgu95av2_annotation.csv.gz", csv_text(["probe_id", "gene"], rows))
    mapped = sum(1 for r in rows if r[1])
    multi = sum(1 for r in rows if " /// " in r[1])
    print(f"hgu95av2_annotation: {len(rows)} probes, {mapped} with a symbol ({multi} with several), {len(rows) - mapped} empty")


def main() -> None:
    src, build, out = (Path(a) for a in sys.argv[1:4])
    out.mkdir(parents=True, exist_ok=True)
    build_golub(src, build, out)
    build_chiaretti(build, out)
    build_gsea_leukemia(src, out)
    build_hgu95av2_annotation(src, build, out)


if __name__ == "__main__":
    main()
