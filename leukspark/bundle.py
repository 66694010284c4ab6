"""Model bundles: a trained model, its preprocessor and gene order in one verified directory.

Layout::

    manifest.json        format version, model name, params, label mapping, versions,
                         and the sha256 + size of every other file
    preprocessor.npz     imputation means and scaling (np.savez; read with allow_pickle=False)
    genes.txt            the gene order of the model's input columns, one per line
    <model files>        written by the model's ModelSpec.save, in a safe format

Loading verifies every checksum and refuses missing or unlisted files, so a bundle is
either exactly what was saved or a BundleError naming the file at fault. Nothing in a
bundle can execute code when loaded. The checksums detect corruption and accidental
edits; they are not a signature against someone who rewrites the manifest as well.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

import leukspark
from leukspark.errors import BundleError, LeukSparkError
from leukspark.models import get_model
from leukspark.models.base import ModelSpec, Preprocessor

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PREPROCESSOR_FILE = "preprocessor.npz"
GENES_FILE = "genes.txt"
INPUT_REFERENCE_FILE = "input_reference.npz"
CALIBRATION_FILE = "calibration.npz"
RESERVED_FILES = (MANIFEST_FILE, PREPROCESSOR_FILE, GENES_FILE, INPUT_REFERENCE_FILE, CALIBRATION_FILE)
DEFAULT_LABEL_MAPPING = MappingProxyType({"ALL": 0, "AML": 1})
_MANIFEST_SELF_CHECKSUM = "manifest_sha256"
_RECORDED_LIBRARIES = ("numpy", "scikit-learn", "xgboost", "torch")


class Bundle:
    """A loaded, verified bundle; ``predict_proba`` scores raw gene-ordered matrices."""

    def __init__(
        self,
        *,
        directory: Path,
        manifest: dict[str, Any],
        spec: ModelSpec,
        model: Any,
        preprocessor: Preprocessor,
        gene_order: list[str],
        input_reference: dict[str, np.ndarray] | None = None,
        calibrator: Any = None,
    ):
        self.directory = directory
        self.calibrator = calibrator
        self.input_reference = input_reference
        self.manifest = manifest
        self.spec = spec
        self.model = model
        self.preprocessor = preprocessor
        self.gene_order = gene_order
        self.model_name: str = manifest["model_name"]
        self.run_id: str = manifest["run_id"]
        self.params: dict[str, Any] = manifest["params"]
        self.label_mapping: dict[str, int] = manifest["label_mapping"]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(AML) for each row of a raw matrix whose columns follow ``gene_order``.

        NaN entries are imputed with the training means by the bundled preprocessor. A bundle
        with a calibrator (``training.calibration``) returns calibrated probabilities.
        """
        probabilities = self.spec.predict_proba(self.model, self.preprocessor.transform(X))
        return probabilities if self.calibrator is None else self.calibrator.apply(probabilities)

    def class_calls(self, X: np.ndarray):
        """A multi-class bundle's calls (leukspark.subtypes.hierarchical_calls: lineage, subtype and their
        probabilities, with the parent fallback at the thresholds chosen in training); None for ALL/AML."""
        from leukspark.models.multiclass import CLASSES_KEY
        from leukspark.subtypes import hierarchical_calls

        extra = self.manifest["extra"]
        if CLASSES_KEY not in extra:
            return None
        probabilities = self.spec.predict_class_proba(self.model, self.preprocessor.transform(X))
        return hierarchical_calls(probabilities, extra[CLASSES_KEY], extra["lineage_of"],
                                  extra.get("class_thresholds"), extra.get("lineage_thresholds"))

    @property
    def abstain_band(self) -> tuple[float, float] | None:
        """[lo, hi]: probabilities inside it are not called (prediction 'unclassified'); None: always call."""
        band = self.manifest["extra"].get("abstain_band")
        return None if band is None else (float(band[0]), float(band[1]))

    def explain(self, X: np.ndarray, top: int = 5) -> list[list[dict]] | None:
        """Per row, the genes contributing most to the log-odds of a linear model: weight x the
        standardized value the model sees (positive pushes toward AML); None for other models."""
        weights = self.spec.feature_weights(self.model)
        if weights is None:
            return None
        values = self.preprocessor.transform(X).astype(np.float64)
        genes = np.asarray(self.gene_order, dtype=object)
        if self.preprocessor.selected_genes is not None:
            genes = genes[self.preprocessor.selected_genes]
        contributions = values * np.asarray(weights, dtype=np.float64)
        out = []
        for row in contributions:
            order = np.argsort(-np.abs(row), kind="stable")[:top]
            out.append([{"gene": str(genes[i]), "contribution": round(float(row[i]), 6)} for i in order])
        return out

    @property
    def used_genes(self) -> np.ndarray:
        """Mask of the genes the model reads (only these count as missing in a sample)."""
        return self.preprocessor.input_mask(self.spec.used_features(self.model))

    @property
    def feature_settings(self) -> dict[str, Any]:
        """How probes became genes at training: transform, floor, aggregate, multi_gene, ..."""
        return self.manifest["extra"].get("features", {})

    @property
    def training_inputs(self) -> dict[str, Any]:
        """Platforms and value scales of the training samples, and the input-check ranges."""
        return self.manifest["extra"].get("training_inputs", {})

    def __repr__(self) -> str:
        return f"Bundle(model_name={self.model_name!r}, run_id={self.run_id!r}, genes={len(self.gene_order)})"


# --------------------------------------------------------------------------- saving


def save_bundle(
    directory: Path,
    *,
    model_name: str,
    spec: ModelSpec,
    model: Any,
    preprocessor: Preprocessor,
    gene_order: list[str],
    params: Mapping[str, Any],
    label_mapping: Mapping[str, int] = DEFAULT_LABEL_MAPPING,
    run_id: str,
    extra: Mapping[str, Any] | None = None,
    input_reference: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write a bundle to ``directory`` (which must not exist or be empty); return its path.

    The bundle is assembled in a temporary sibling directory and renamed into place, so
    an interrupted save never leaves a half-written bundle behind. ``params`` are stored
    merged with the model's defaults, so the manifest records every setting used.
    """
    directory = Path(directory)
    if model_name != spec.name:
        raise BundleError(f"model_name {model_name!r} does not match the spec's name {spec.name!r}")
    _check_label_mapping(label_mapping)
    genes = _checked_gene_order(gene_order, preprocessor, spec.n_features(model))
    _prepare_target(directory)

    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        staging.chmod(0o755)  # mkdtemp's 0o700 would hide the bundle from other users
        model_files = _write_parts(staging, spec, model, preprocessor, genes, input_reference)
        manifest = {
            "format_version": FORMAT_VERSION,
            "model_name": model_name,
            "run_id": str(run_id),
            "params": spec.resolve_params(params),
            "scaler": preprocessor.scaler,
            "normalize": preprocessor.normalizer.method,
            "selection": preprocessor.selection,
            "gene_order_file": GENES_FILE,
            "n_genes": len(genes),
            "preprocessor_file": PREPROCESSOR_FILE,
            "input_reference_file": INPUT_REFERENCE_FILE if input_reference is not None else None,
            "model_files": model_files,
            "label_mapping": dict(label_mapping),
            "positive_class": leukspark.POSITIVE_CLASS,
            **_provenance(),
            "extra": dict(extra or {}),
            "files": {name: _file_record(staging / name) for name in sorted(_files_in(staging))},
        }
        _write_manifest(staging, spec, manifest, model_files)

        if directory.exists():
            directory.rmdir()  # empty, checked above
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _prepare_target(directory: Path) -> None:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BundleError(f"{directory}: refusing to overwrite an existing non-empty path")
    directory.parent.mkdir(parents=True, exist_ok=True)


def _provenance() -> dict:
    """What made the bundle: versions of leukspark and its libraries, and when."""
    return {"leukspark_version": leukspark.__version__, "library_versions": _library_versions(),
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _write_parts(staging: Path, spec: ModelSpec, model: Any, preprocessor: Preprocessor, genes: list[str],
                 input_reference: Mapping[str, np.ndarray] | None) -> list[str]:
    """The preprocessor, gene order, input reference and model files; returns the model's file names."""
    with open(staging / PREPROCESSOR_FILE, "wb") as handle:
        np.savez(handle, **preprocessor.to_arrays())
    (staging / GENES_FILE).write_text("".join(f"{gene}\n" for gene in genes), encoding="utf-8")
    if input_reference is not None:
        with open(staging / INPUT_REFERENCE_FILE, "wb") as handle:
            np.savez(handle, **{key: np.asarray(value, dtype=np.float64) for key, value in input_reference.items()})
    model_files = list(spec.save(model, staging))
    clashes = sorted(set(model_files) & set(RESERVED_FILES))
    if clashes:
        raise BundleError(f"model {spec.name!r} wrote reserved file name(s) {', '.join(clashes)}")
    return model_files


def _write_manifest(staging: Path, spec: ModelSpec, manifest: dict, model_files: list[str]) -> None:
    """Check that every file is accounted for, then write the manifest with its own checksum."""
    unlisted_model_files = sorted(set(manifest["files"]) - set(model_files) - set(RESERVED_FILES))
    if unlisted_model_files:
        raise BundleError(f"model {spec.name!r} wrote file(s) it did not report: {', '.join(unlisted_model_files)}")
    try:
        # Round trip first, so the checksum covers exactly what load_bundle will parse.
        manifest = json.loads(json.dumps(manifest, allow_nan=False, default=_numpy_scalar_to_python))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{MANIFEST_FILE}: params or extra are not plain JSON values: {exc}") from exc
    manifest[_MANIFEST_SELF_CHECKSUM] = _manifest_checksum(manifest)
    text = json.dumps(manifest, indent=2, sort_keys=True)
    (staging / MANIFEST_FILE).write_text(text + "\n", encoding="utf-8")


def _check_label_mapping(label_mapping: Mapping[str, int]) -> None:
    # Every model outputs P(label 1); a bundle claiming otherwise would mislabel predictions.
    if dict(label_mapping) != dict(DEFAULT_LABEL_MAPPING):
        raise BundleError(
            f"label_mapping must be {dict(DEFAULT_LABEL_MAPPING)} (AML is class 1), got {dict(label_mapping)}"
        )


def _checked_gene_order(gene_order: list[str], preprocessor: Preprocessor, n_model_features: int) -> list[str]:
    genes = [str(gene) for gene in gene_order]
    if not (len(genes) == preprocessor.n_features and preprocessor.n_outputs == n_model_features):
        raise BundleError(
            f"gene_order has {len(genes)} genes but the preprocessor expects {preprocessor.n_features} "
            f"(and hands {preprocessor.n_outputs} to the model) and the model {n_model_features}"
        )
    # genes.txt is one name per line: a name must survive that round trip unchanged.
    bad = [gene for gene in genes if gene.splitlines() != [gene] or gene != gene.strip()]
    if bad:
        raise BundleError(f"gene names must be non-empty single-line text without surrounding spaces: {bad[0]!r}")
    duplicates = [gene for gene, count in Counter(genes).items() if count > 1]
    if duplicates:
        raise BundleError(f"gene_order lists {duplicates[0]!r} more than once ({len(duplicates)} duplicated names)")
    return genes


def _numpy_scalar_to_python(value: Any) -> Any:
    # np.int64 and friends (e.g. from pandas) are not JSON types; numpy arrays stay rejected.
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for library in _RECORDED_LIBRARIES:
        try:
            versions[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            versions[library] = None
    return versions


# --------------------------------------------------------------------------- loading


def load_bundle(directory: Path) -> Bundle:
    """Load and verify a bundle; any missing, extra or altered file is a BundleError naming it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"{directory}: bundle directory not found")
    manifest = _read_manifest(directory)
    _verify_files(directory, manifest["files"])
    named_files = {manifest["gene_order_file"], manifest["preprocessor_file"], *manifest["model_files"]}
    _require(named_files <= set(manifest["files"]), "manifest names a file it does not checksum")

    genes_path = directory / manifest["gene_order_file"]
    try:
        gene_order = genes_path.read_text(encoding="utf-8").splitlines()  # names are checked line-safe on save
    except UnicodeDecodeError as exc:
        raise BundleError(f"{genes_path.name}: not UTF-8 text: {exc}") from exc
    if len(gene_order) != manifest["n_genes"]:
        raise BundleError(f"{genes_path.name}: {len(gene_order)} genes, manifest says {manifest['n_genes']}")

    preprocessor_path = directory / manifest["preprocessor_file"]
    try:
        with np.load(preprocessor_path, allow_pickle=False) as archive:
            preprocessor = Preprocessor.from_arrays({key: archive[key] for key in archive.files}, manifest["scaler"],
                                                    manifest.get("normalize", "none"),
                                                    manifest.get("selection", "none"))
    except (LeukSparkError, OSError, ValueError, EOFError) as exc:
        raise BundleError(f"{preprocessor_path.name}: {exc}") from exc
    if preprocessor.n_features != len(gene_order):
        raise BundleError(f"{preprocessor_path.name}: {preprocessor.n_features} columns for {len(gene_order)} genes")

    model_files = ", ".join(manifest["model_files"])
    try:
        from leukspark.models.multiclass import view_for

        spec = view_for(get_model(manifest["model_name"]), manifest["extra"])   # a multi-class fit: P(AML) summed
        model = spec.load(directory)
        n_model_features = spec.n_features(model)
    except LeukSparkError as exc:
        raise BundleError(f"{model_files}: {exc}") from exc
    if n_model_features != preprocessor.n_outputs:
        raise BundleError(f"{model_files}: model expects {n_model_features} genes, the preprocessor gives "
                          f"{preprocessor.n_outputs} (of the bundle's {len(gene_order)})")
    return Bundle(
        directory=directory,
        manifest=manifest,
        spec=spec,
        model=model,
        preprocessor=preprocessor,
        gene_order=gene_order,
        input_reference=_read_input_reference(directory, manifest, len(gene_order)),
        calibrator=_read_calibrator(directory, manifest),
    )


def _read_optional_arrays(directory: Path, manifest: Mapping[str, Any], file_key: str, build):
    """`build(arrays)` of the optional .npz the manifest names under `file_key`, or None."""
    name = manifest.get(file_key)
    if not name:
        return None
    _require(name in manifest["files"], "manifest names a file it does not checksum")
    try:
        with np.load(directory / name, allow_pickle=False) as archive:
            return build({key: archive[key] for key in archive.files})
    except (LeukSparkError, KeyError, OSError, ValueError, EOFError) as exc:
        raise BundleError(f"{name}: {exc}") from exc


def _read_calibrator(directory: Path, manifest: Mapping[str, Any]):
    from leukspark.calibration import Calibrator

    return _read_optional_arrays(directory, manifest, "calibration_file", Calibrator.from_arrays)


def attach_postprocessing(directory: Path, *, calibrator: Any = None, abstain_band: Any = None,
                          extra: Mapping[str, Any] | None = None) -> Path:
    """Add what is fitted after the model (on the run's out-of-fold probabilities) to a saved bundle:
    the calibrator (``calibration.npz``, plain arrays), the abstention band and further `extra` keys.

    The bundle is verified first; the new manifest (files and checksum) replaces the old one in one
    rename, so a reader sees either the old bundle or the new one.
    """
    directory = Path(directory)
    load_bundle(directory)  # refuses a tampered bundle before anything is added to it
    manifest = _read_manifest(directory)
    if calibrator is not None:
        with open(directory / CALIBRATION_FILE, "wb") as handle:
            np.savez(handle, **calibrator.to_arrays())
        manifest["calibration_file"] = CALIBRATION_FILE
        manifest["files"][CALIBRATION_FILE] = _file_record(directory / CALIBRATION_FILE)
    manifest["extra"] = {**manifest["extra"], **dict(extra or {}),
                         "calibration": calibrator.method if calibrator is not None else "none",
                         "abstain_band": None if abstain_band is None else [float(v) for v in abstain_band]}
    try:
        manifest = json.loads(json.dumps(manifest, allow_nan=False, default=_numpy_scalar_to_python))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{MANIFEST_FILE}: extra is not plain JSON values: {exc}") from exc
    manifest[_MANIFEST_SELF_CHECKSUM] = _manifest_checksum(manifest)
    staging = directory.parent / f".{directory.name}.manifest.tmp"
    staging.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(staging, directory / MANIFEST_FILE)
    return directory


def _read_input_reference(directory: Path, manifest: Mapping[str, Any], n_genes: int) -> dict | None:
    from leukspark.input_check import ARRAY_KEYS

    def build(arrays):
        arrays = {key: np.asarray(arrays[key], dtype=np.float64) for key in ARRAY_KEYS}
        if any(array.shape != (n_genes,) for array in arrays.values()):
            raise ValueError(f"arrays do not have one entry per gene ({n_genes})")
        return arrays

    return _read_optional_arrays(directory, manifest, "input_reference_file", build)


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{MANIFEST_FILE}: missing from bundle {directory}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{MANIFEST_FILE}: not valid JSON: {exc}") from exc
    _require(isinstance(manifest, dict), "not a JSON object")
    # The version is checked before anything else so a newer format gets a clear message.
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{MANIFEST_FILE}: unknown format version {manifest.get('format_version')!r} "
            f"(this leukspark reads version {FORMAT_VERSION})"
        )
    recorded = manifest.pop(_MANIFEST_SELF_CHECKSUM, None)
    try:
        intact = recorded == _manifest_checksum(manifest)
    except ValueError:  # NaN or infinity: never written by save_bundle
        intact = False
    if not intact:
        raise BundleError(f"{MANIFEST_FILE}: content does not match its own checksum (edited or corrupted)")
    expected_types = {
        "model_name": str, "run_id": str, "params": dict, "scaler": str, "gene_order_file": str,
        "n_genes": int, "preprocessor_file": str, "model_files": list, "label_mapping": dict, "files": dict,
    }  # fmt: skip
    for key, expected in expected_types.items():
        _require(isinstance(manifest.get(key), expected), f"key {key!r} is missing or not a {expected.__name__}")
    _require(all(isinstance(name, str) for name in manifest["model_files"]), "model_files must be file names")
    for name, record in manifest["files"].items():
        _require(_is_plain_file_name(name) and name != MANIFEST_FILE, f"file name {name!r} is not allowed")
        _require(
            isinstance(record, dict) and isinstance(record.get("sha256"), str) and isinstance(record.get("size"), int),
            f"file record of {name!r} is malformed",
        )
    _require(dict(manifest["label_mapping"]) == dict(DEFAULT_LABEL_MAPPING), "unsupported label mapping")
    return manifest


def _verify_files(directory: Path, records: Mapping[str, Mapping[str, Any]]) -> None:
    present = _files_in(directory) - {MANIFEST_FILE}
    unlisted = sorted(present - set(records))
    if unlisted:
        raise BundleError(f"{', '.join(unlisted)}: not listed in {MANIFEST_FILE} (unexpected file in the bundle)")
    missing = sorted(set(records) - present)
    if missing:
        raise BundleError(f"{', '.join(missing)}: listed in {MANIFEST_FILE} but missing from the bundle")
    for name in sorted(records):
        actual = _file_record(directory / name)
        if actual != {"sha256": records[name]["sha256"], "size": records[name]["size"]}:
            raise BundleError(f"{name}: size or sha256 does not match {MANIFEST_FILE} (tampered or corrupted)")


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise BundleError(f"{MANIFEST_FILE}: {problem}")


def _is_plain_file_name(name: Any) -> bool:
    # Only names directly inside the bundle: no separators, no "..", nothing hidden.
    return isinstance(name, str) and name == Path(name).name and not name.startswith(".") and "\\" not in name


# --------------------------------------------------------------------------- shared helpers


def _files_in(directory: Path) -> set[str]:
    """Every entry under ``directory`` as a relative path (subdirectories count as entries)."""
    return {path.relative_to(directory).as_posix() for path in directory.rglob("*")}


def _file_record(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"{path.name}: not a regular file")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest(), "size": path.stat().st_size}


def _manifest_checksum(manifest: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the manifest without its own checksum."""
    content = {key: value for key, value in manifest.items() if key != _MANIFEST_SELF_CHECKSUM}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()
