#!/usr/bin/env Rscript
# One-off: turn the R-format sources into plain text for build_real_data.py.
#   Rscript dump_r_sources.R SRC BUILD
# SRC   holds Golub_Train.rda / Golub_Test.rda (Bioconductor golubEsets, see fetch_sources.sh)
# BUILD receives:
#   golubEsets_<set>_pdata.csv   phenoData of Golub_Train / Golub_Test, as stored
#   golubEsets_<set>_exprs.csv   exprs() of the same (only used to cross-check the CSV copies)
#   chiaretti_all.gct            exprs(ALL) from Debian r-bioc-all, probes x 128 samples, "%.5f"
#   chiaretti_all_pheno.csv      pData(ALL), all 21 columns, as stored
# Needs Debian packages r-bioc-all and r-bioc-biobase.
suppressMessages(library(Biobase))
args <- commandArgs(trailingOnly = TRUE)
src <- args[1]; build <- args[2]
dir.create(build, showWarnings = FALSE, recursive = TRUE)

for (set in c("Train", "Test")) {
  e <- new.env()
  load(file.path(src, paste0("Golub_", set, ".rda")), envir = e)
  o <- get(paste0("Golub_", set), envir = e)
  write.csv(pData(o), file.path(build, paste0("golubEsets_", set, "_pdata.csv")), row.names = FALSE)
  write.csv(exprs(o), file.path(build, paste0("golubEsets_", set, "_exprs.csv")))
}

data(ALL, package = "ALL")
x <- exprs(ALL)
stopifnot(identical(dim(x), c(12625L, 128L)), !anyNA(x), annotation(ALL) == "hgu95av2")
txt <- formatC(x, format = "f", digits = 5)
con <- file(file.path(build, "chiaretti_all.gct"), "w")
writeLines(c("#1.2", paste(nrow(x), ncol(x), sep = "\t"),
             paste(c("Name", "Description", colnames(x)), collapse = "\t")), con)
# Description = the probe id itself (the package carries no per-probe annotation)
writeLines(paste(rownames(x), rownames(x), apply(txt, 1, paste, collapse = "\t"), sep = "\t"), con)
close(con)
p <- pData(ALL)
write.csv(cbind(sample = sampleNames(ALL), p), file.path(build, "chiaretti_all_pheno.csv"), row.names = FALSE)
# full-precision copy, only for the verification script
write.csv(x, file.path(build, "chiaretti_all_fullprec.csv"))
cat("R dump done:", nrow(x), "x", ncol(x), "\n")
