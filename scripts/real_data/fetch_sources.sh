#!/usr/bin/env bash
# One-off helper: collect the exact upstream source files used to build
# tests/data/real/ into $SRC (default /tmp/leukspark_real_src).
#
# Each GitHub source is read with `git show COMMIT:PATH` from a local clone /
# bare mirror of the repository.  Point GIT_<name> at a git dir, or set MIRROR
# to a folder holding <owner>+<name>/repo (as laid out by the snapshot tool).
# The Chiaretti cohort comes from the Debian package r-bioc-all (no git).
# The sha256 of every extracted file is checked against PROVENANCE.md values.
set -euo pipefail
SRC=${SRC:-/tmp/leukspark_real_src}
MIRROR=${MIRROR:-/work/.mirror}
mkdir -p "$SRC"

gitdir() {  # owner+name -> git dir
  local d="$MIRROR/$1/repo"
  if [ -d "$d/.git" ]; then echo "$d/.git"; else echo "$d"; fi
}

get() {  # owner+name commit path outname sha256
  local g; g=$(gitdir "$1")
  git --git-dir="$g" show "$2:$3" > "$SRC/$4"
  echo "$5  $SRC/$4" | sha256sum -c --quiet -
  echo "ok  $4  <- $1@$2:$3"
}

# Golub 1999, Kaggle-style CSVs (primary copy)
T=tkhan11+Gene-Expression-Classification; TC=e6a1d8be4d763c9e4d9d71348abfaabd61a32131
get $T $TC data_set_ALL_AML_train.csv golub_data_set_ALL_AML_train.csv 7c8b432b4af99e68f923c53e289c73f1834986b05d80c2c43502053d8fca9f2c
get $T $TC data_set_ALL_AML_independent.csv golub_data_set_ALL_AML_independent.csv 38bd56674360e5765840c579622fc0be2650780c0d6ef46f8601074e96677bd3
get $T $TC actual.csv golub_actual.csv af291eced4116e257af0b73043e83b55d9b42f0d815440a4c5bc72424d2f44e1

# Golub 1999, Bioconductor golubEsets (cross-check + T/B-cell and other covariates)
B=bioc+golubEsets; BC=cc2a249fbbb9d92d5965887eea1d7359f353fbb5
get $B $BC data/Golub_Train.rda Golub_Train.rda 1edafc84e44960189623503c14917b2e426a882ba82f2b8e6549138340c4b7cc
get $B $BC data/Golub_Test.rda Golub_Test.rda 0c3a78139fdf1aa184fb8e1d5d53d8fd7a7dfbcca2759fe93ee862149afeac9e

# GSEA R package example data (HG-U95Av2 ALL/AML, 48 samples) + MSigDB HG_U95 chip
G=GSEA-MSigDB+GSEA_R; GC=b49beee596ec188deaf62cb3d40d1c7c006af347
get $G $GC inst/extdata/Leukemia_hgu95av2.gct Leukemia_hgu95av2.gct 0c333ad63e5c503b0921c14d263387ea6c53bb6e6954053e3739793d41b4fd52
get $G $GC inst/extdata/Leukemia.cls Leukemia.cls 87831b330868d7461e9ecd203cdab9bb7daeff382b3c8f90583064549168cd58
get $G $GC inst/extdata/Human_AFFY_HG_U95_MSigDB_7_0_final.chip Human_AFFY_HG_U95_MSigDB_7_0_final.chip b9176375e48a01722f898fcb973980568479288f33a38245bc54f3b189a0dfb0

# Chiaretti 2004: Debian r-bioc-all 1.40.0-1 (+ r-bioc-biobase to load it)
if ! Rscript -e 'suppressMessages(library(Biobase)); data(ALL, package="ALL")' >/dev/null 2>&1; then
  echo "install first:  apt-get install -y --no-install-recommends r-bioc-all r-bioc-biobase" >&2
  exit 1
fi
echo "ed394602065429adb06d2701924c91ee565921bfb4b0e85f80192767fcad51ae  /usr/lib/R/site-library/ALL/data/ALL.rda" | sha256sum -c --quiet -
echo "ok  ALL.rda (r-bioc-all $(dpkg-query -W -f='${Version}' r-bioc-all))"
