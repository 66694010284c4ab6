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
import stat
import tempfile
import zipfile
from collections import Counter
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

import leukspark
from leukspark.checks import nesting_depth
from leukspark.errors import BundleError, LeukSparkError, describe_os_error
from leukspark.models import get_model
from leukspark.models.base import ModelSpec, Preprocessor
from leukspark.npz import read_npz

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PREPROCESSOR_FILE = "preprocessor.npz"
GENES_FILE = "genes.txt"
INPUT_REFERENCE_FILE = "input_reference.npz"
CALIBRATION_FILE = "calibration.npz"
RESERVED_FILES = (MANIFEST_FILE, PREPROCESSOR_FILE, GENES_FILE, INPUT_REFERENCE_FILE, CALIBRATION_FILE)
DEFAULT_LABEL_MAPPING = MappingProxyType({"ALL": 0, "AML": 1})
_MANIFEST_SELF_CHECKSUM = "manifest_sha256"
_PREPROCESSOR_SETTINGS = tuple(Preprocessor().settings())  # manifest keys: Preprocessor.settings() as saved
_RECORDED_LIBRARIES = ("numpy", "scikit-learn", "xgboost", "torch")
# What a loader reads at most, checked before a byte is hashed or parsed: a bundle of the full
# GPL570 gene set is a few MB; these bounds only stop a damaged or hostile bundle early.
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_FILE_BYTES = 2 * 2**30
MAX_MANIFEST_DEPTH = 32
MAX_GENES = 10**6
# Failures of the libraries that parse a bundle's files, turned into BundleError by load_bundle.
_PARSE_FAILURES = (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError,
                   MemoryError, EOFError, zipfile.BadZipFile)


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

        NaN entries are imputed with the training means by the bundled preprocessor (a model
        whose spec declares ``impute: False``, k-TSP, gets them as NaN and abstains on them). A bundle
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
        standardized value the model sees (positive pushes toward AML); a model with its own
        explanation (``ModelSpec.explain_rows``, under ``explanation_key``) gives that; None otherwise."""
        genes = np.asarray(self.gene_order, dtype=object)
        if self.preprocessor.selected_genes is not None:
            genes = genes[self.preprocessor.selected_genes]
        rows = self.spec.explain_rows(self.model, self.preprocessor.transform(X), genes)
        if rows is not None:  # the model's own explanation (k-TSP: its pairs and their votes)
            return rows
        weights = self.spec.feature_weights(self.model)
        if weights is None:
            return None
        values = self.preprocessor.transform(X).astype(np.float64)
        contributions = values * np.asarray(weights, dtype=np.float64)
        out = []
        for row in contributions:
            order = np.argsort(-np.abs(row), kind="stable")[:top]
            out.append([{"gene": str(genes[i]), "contribution": round(float(row[i]), 6)} for i in order])
        return out

    @property
    def explanation_key(self) -> str:
        """The record field of :meth:`explain`'s rows ("top_genes"; k-TSP: "pairs")."""
        return self.spec.explanation_key

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
            **preprocessor.settings(),  # scaler, normalize, selection, selection_k, impute
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


def load_bundle(directory: Path, *, as_stored: bool = False) -> Bundle:
    """Load and verify a bundle; any missing, extra, altered or malformed file is a BundleError naming it.

    Only regular files directly inside the bundle folder are read (no symbolic links), each no
    larger than its manifest record (checked before it is hashed), and arrays no larger than
    the manifest's gene count allows (checked before they are allocated). `as_stored`: the
    folder is a lake's models/<run>/<model>, and the manifest must name that run and model
    (scores are recorded under the folder's names).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"{directory}: bundle directory not found")
    try:
        bundle = _load_verified(directory)
    except BundleError:
        raise
    except LeukSparkError as exc:
        raise BundleError(f"{directory}: {exc}") from exc
    except OSError as exc:
        raise BundleError(f"{directory}: cannot be read: {describe_os_error(exc)}") from exc
    except _PARSE_FAILURES as exc:  # a library's parser meets something save_bundle never writes
        raise BundleError(f"{directory}: malformed bundle ({type(exc).__name__}: {exc})") from exc
    if as_stored and (bundle.run_id, bundle.model_name) != (directory.parent.name, directory.name):
        raise BundleError(f"{directory}: the bundle's manifest names run {bundle.run_id} and model "
                          f"{bundle.model_name}, not the run and model of the folder it is stored in")
    return bundle


def _load_verified(directory: Path) -> Bundle:
    root = directory.resolve()
    manifest = _read_manifest(root)
    _verify_files(root, manifest["files"])
    named_files = {manifest["gene_order_file"], manifest["preprocessor_file"], *manifest["model_files"]}
    _require(named_files <= set(manifest["files"]), "manifest names a file it does not checksum")

    genes_name = manifest["gene_order_file"]
    try:
        gene_order = _read_regular(root, genes_name).decode("utf-8").splitlines()  # names are checked line-safe on save
    except UnicodeDecodeError as exc:
        raise BundleError(f"{genes_name}: not UTF-8 text: {exc}") from exc
    if len(gene_order) != manifest["n_genes"]:
        raise BundleError(f"{genes_name}: {len(gene_order)} genes, manifest says {manifest['n_genes']}")

    preprocessor_name = manifest["preprocessor_file"]
    try:
        # One entry per gene at most (the quantile reference, means, scales, selected columns).
        arrays = read_npz(_checked_file(root, preprocessor_name), max_elements=len(gene_order))
        # Settings a bundle of an older leukspark lacks keep the constructor's defaults.
        settings = {key: manifest[key] for key in _PREPROCESSOR_SETTINGS if key in manifest}
        preprocessor = Preprocessor.from_arrays(arrays, **settings)
    except (LeukSparkError, OSError, ValueError, EOFError) as exc:
        raise BundleError(f"{preprocessor_name}: {exc}") from exc
    if preprocessor.n_features != len(gene_order):
        raise BundleError(f"{preprocessor_name}: {preprocessor.n_features} columns for {len(gene_order)} genes")

    model_files = ", ".join(manifest["model_files"])
    try:
        from leukspark.models.multiclass import view_for

        spec = view_for(get_model(manifest["model_name"]), manifest["extra"])   # a multi-class fit: P(AML) summed
        model = spec.load(root)
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
        input_reference=_read_input_reference(root, manifest, len(gene_order)),
        calibrator=_read_calibrator(root, manifest),
    )


def _read_optional_arrays(directory: Path, manifest: Mapping[str, Any], file_key: str, build,
                          max_elements: int | None = None):
    """`build(arrays)` of the optional .npz the manifest names under `file_key`, or None."""
    name = manifest.get(file_key)
    if not name:
        return None
    _require(name in manifest["files"], "manifest names a file it does not checksum")
    try:
        return build(read_npz(_checked_file(directory, name), max_elements=max_elements))
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
    from leukspark.input_check import ARRAY_KEYS, NOVELTY_KEYS

    def build(arrays):
        reference = {key: np.asarray(arrays[key], dtype=np.float64) for key in ARRAY_KEYS}
        if any(array.shape != (n_genes,) for array in reference.values()):
            raise ValueError(f"arrays do not have one entry per gene ({n_genes})")
        # The novelty model (bundles from before it lack these keys and keep the older check).
        if all(key in arrays for key in NOVELTY_KEYS):
            novelty = {key: np.asarray(arrays[key], dtype=np.float64) for key in NOVELTY_KEYS}
            q, p = novelty["novelty_components"].shape if novelty["novelty_components"].ndim == 2 else (0, -1)
            if (novelty["novelty_center"].shape != (p,) or novelty["novelty_class_means"].shape[1:] != (q,)
                    or novelty["novelty_class_precisions"].shape[1:] != (q, q)
                    or not all(np.isfinite(a).all() for a in novelty.values())):
                raise ValueError("novelty arrays do not describe a novelty model")
            reference.update(novelty)
        return reference

    # The novelty model's components are NOVELTY_COMPONENTS rows of one entry per gene.
    from .input_check import NOVELTY_COMPONENTS

    return _read_optional_arrays(directory, manifest, "input_reference_file", build,
                                 max_elements=n_genes * max(1, NOVELTY_COMPONENTS))


def _read_manifest(directory: Path) -> dict[str, Any]:
    if not os.path.lexists(directory / MANIFEST_FILE):
        raise BundleError(f"{MANIFEST_FILE}: missing from bundle {directory}")
    text = _read_regular(directory, MANIFEST_FILE, limit=MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{MANIFEST_FILE}: not valid JSON: {exc}") from exc
    except RecursionError:
        raise BundleError(f"{MANIFEST_FILE}: nests deeper than {MAX_MANIFEST_DEPTH} levels") from None
    _require(isinstance(manifest, dict), "not a JSON object")
    _require(nesting_depth(manifest, MAX_MANIFEST_DEPTH) <= MAX_MANIFEST_DEPTH,
             f"nests deeper than {MAX_MANIFEST_DEPTH} levels")
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
        "extra": dict,
    }  # fmt: skip
    for key, expected in expected_types.items():
        _require(isinstance(manifest.get(key), expected), f"key {key!r} is missing or not a {expected.__name__}")
    _require(not isinstance(manifest["n_genes"], bool) and 0 < manifest["n_genes"] <= MAX_GENES,
             f"n_genes must be a count of genes (1..{MAX_GENES}); got {manifest['n_genes']!r}")
    optional_types = {"normalize": (str,), "selection": (str,), "selection_k": (int,), "impute": (bool,),
                      "input_reference_file": (str, type(None)),
                      "calibration_file": (str, type(None))}
    for key, allowed in optional_types.items():
        _require(isinstance(manifest.get(key), allowed) or key not in manifest,
                 f"key {key!r} must be {' or '.join('null' if t is type(None) else t.__name__ for t in allowed)}")
    _check_extra(manifest["extra"])
    _require(all(isinstance(name, str) for name in manifest["model_files"]), "model_files must be file names")
    for name, record in manifest["files"].items():
        _require(_is_plain_file_name(name) and name != MANIFEST_FILE, f"file name {name!r} is not allowed")
        _require(
            isinstance(record, dict) and isinstance(record.get("sha256"), str) and isinstance(record.get("size"), int),
            f"file record of {name!r} is malformed",
        )
    _require(dict(manifest["label_mapping"]) == dict(DEFAULT_LABEL_MAPPING), "unsupported label mapping")
    return manifest


def _check_extra(extra: Mapping[str, Any]) -> None:
    """The parts of `extra` that scoring reads: of the types and ranges save_bundle writes."""
    features, inputs = extra.get("features", {}), extra.get("training_inputs", {})
    _require(isinstance(features, dict), "extra.features must be a mapping")
    _require(isinstance(inputs, dict), "extra.training_inputs must be a mapping")
    for key in ("transform", "aggregate", "multi_gene", "normalize"):
        _require(isinstance(features.get(key, ""), str), f"extra.features.{key} must be text")
    floor = features.get("log_floor", 20.0)
    _require(floor in ("auto", "none") or (_is_number(floor) and floor > 0),
             "extra.features.log_floor must be a positive number, auto or none")
    for key in ("model_scales", "platforms"):
        names = inputs.get(key)
        _require(names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names)),
                 f"extra.training_inputs.{key} must be a list of names")
    ranges = inputs.get("input_check")
    _require(ranges is None or (isinstance(ranges, dict) and all(_is_pair(ranges.get(k)) for k in ("shift", "spread"))),
             "extra.training_inputs.input_check must hold shift and spread as [lo, hi]")
    band = extra.get("abstain_band")
    _require(band is None or (_is_pair(band) and 0 <= band[0] <= band[1] <= 1),
             "extra.abstain_band must be null or [lo, hi] inside [0, 1]")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value) and value[0] <= value[1]


def _verify_files(directory: Path, records: Mapping[str, Mapping[str, Any]]) -> None:
    present = _files_in(directory) - {MANIFEST_FILE}
    unlisted = sorted(present - set(records))
    if unlisted:
        raise BundleError(f"{', '.join(unlisted)}: not listed in {MANIFEST_FILE} (unexpected file in the bundle)")
    missing = sorted(set(records) - present)
    if missing:
        raise BundleError(f"{', '.join(missing)}: listed in {MANIFEST_FILE} but missing from the bundle")
    for name in sorted(records):
        # Size first: a file that cannot match is not hashed (nor one over the bound at all).
        if _checked_file(directory, name).stat().st_size != records[name]["size"]:
            raise BundleError(f"{name}: size does not match {MANIFEST_FILE} (tampered or corrupted)")
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
    """Every entry directly in ``directory`` (a subdirectory or link counts as an entry; none is followed)."""
    with os.scandir(directory) as entries:
        return {entry.name for entry in entries}


def _checked_file(directory: Path, name: str, limit: int | None = None) -> Path:
    """``directory / name`` when it is a regular file of the bundle itself, not a link, within `limit` bytes."""
    path, limit = directory / name, MAX_FILE_BYTES if limit is None else limit
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise BundleError(f"{name}: cannot be read: {describe_os_error(exc)}") from None
    if stat.S_ISLNK(info.st_mode):
        raise BundleError(f"{name}: a symbolic link (to {os.readlink(path)}); a bundle holds only its own files")
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{name}: not a regular file")
    if path.resolve().parent != directory.resolve():
        raise BundleError(f"{name}: lies outside the bundle folder {directory}")
    if info.st_size > limit:
        raise BundleError(f"{name}: {info.st_size} bytes, more than the {limit} a bundle file may have")
    return path


def _read_regular(directory: Path, name: str, limit: int | None = None) -> bytes:
    """The bytes of a checked bundle file, opened without following a link swapped in since."""
    path, limit = _checked_file(directory, name, limit), MAX_FILE_BYTES if limit is None else limit
    with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{name}: more than the {limit} bytes a bundle file may have")
    return data


def _file_record(path: Path) -> dict[str, Any]:
    if path.is_symlink() or not path.is_file():
        raise BundleError(f"{path.name}: not a regular file")
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"sha256": digest.hexdigest(), "size": size}


def _manifest_checksum(manifest: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the manifest without its own checksum."""
    content = {key: value for key, value in manifest.items() if key != _MANIFEST_SELF_CHECKSUM}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()
