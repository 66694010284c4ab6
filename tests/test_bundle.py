"""Model bundles: round trip, integrity checks, and refusal of unsafe or inconsistent content."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from leukspark.bundle import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    _file_record,
    _manifest_checksum,
    load_bundle,
    save_bundle,
)
from leukspark.errors import BundleError, ModelError, PredictionError
from leukspark.models import fit_and_predict, get_model

MODEL_NAMES = ["logistic_regression", "linear_svm", "random_forest", "xgboost", "dnn", "ktsp"]
FAST_PARAMS = {
    "logistic_regression": {"C": 0.05},
    "linear_svm": {},
    "random_forest": {"n_estimators": 30},
    "xgboost": {"n_estimators": 30, "max_genes": 100},
    "dnn": {"hidden_layers": [32, 8], "max_epochs": 10},
    "ktsp": {"prefilter_genes": 60, "max_k": 9},
}
N_GENES = 500
GENES = [f"GENE{index:04d}" for index in range(N_GENES)]


@pytest.fixture(scope="module")
def data():
    """Raw (unscaled, with NaN) expression: 200 training rows and 60 rows to score."""
    rng = np.random.default_rng(4)
    y = (rng.random(260) < 0.45).astype(np.int8)
    X = rng.normal(loc=6.0, scale=2.0, size=(260, N_GENES)).astype(np.float32)
    X[:, :20] += (3.0 * y[:, None]).astype(np.float32)
    X[rng.random(X.shape) < 0.02] = np.nan
    return X[:200], y[:200], X[200:]


@pytest.fixture(scope="module")
def saved_bundles(tmp_path_factory, data):
    """A pristine bundle per model, with the probabilities of the in-memory model."""
    X_train, y_train, X_score = data
    root = tmp_path_factory.mktemp("bundles")
    bundles = {}
    for name in MODEL_NAMES:
        result = fit_and_predict(name, FAST_PARAMS[name], X_train, y_train, X_score, seed=3)
        directory = save_bundle(
            root / name,
            model_name=name,
            spec=get_model(name),
            model=result.model,
            preprocessor=result.preprocessor,
            gene_order=GENES,
            params=FAST_PARAMS[name],
            run_id=f"run-{name}",
            extra={"cv_accuracy": 0.99},
        )
        bundles[name] = (directory, result.probabilities)
    return bundles


@pytest.fixture(params=MODEL_NAMES)
def bundle_copy(request, saved_bundles, tmp_path):
    """A private copy of one model's bundle that a test may damage."""
    source, _ = saved_bundles[request.param]
    return shutil.copytree(source, tmp_path / request.param)


def rewrite_manifest(directory, change):
    """Edit the manifest and re-seal it, as a careless tool (or an attacker) could."""
    path = directory / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest.pop("manifest_sha256")
    change(manifest)
    manifest["manifest_sha256"] = _manifest_checksum(manifest)
    path.write_text(json.dumps(manifest))


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_round_trip_gives_identical_probabilities(name, saved_bundles, data):
    directory, in_memory = saved_bundles[name]
    bundle = load_bundle(directory)
    np.testing.assert_array_equal(bundle.predict_proba(data[2]), in_memory)
    assert bundle.model_name == name and bundle.run_id == f"run-{name}"
    assert bundle.gene_order == GENES
    assert bundle.label_mapping == {"ALL": 0, "AML": 1}
    assert bundle.params == get_model(name).resolve_params(FAST_PARAMS[name])


def test_manifest_records_everything_needed(saved_bundles):
    directory, _ = saved_bundles["xgboost"]
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["model_name"] == "xgboost" and manifest["scaler"] == "standard"
    assert manifest["gene_order_file"] == "genes.txt" and manifest["n_genes"] == N_GENES
    assert manifest["extra"] == {"cv_accuracy": 0.99}
    assert manifest["leukspark_version"] and manifest["created_utc"]
    listed = set(manifest["files"])
    on_disk = {path.name for path in directory.iterdir()} - {MANIFEST_FILE}
    assert listed == on_disk == {"preprocessor.npz", "genes.txt", *manifest["model_files"]}
    for name, record in manifest["files"].items():
        assert record == _file_record(directory / name)
    assert (directory / "genes.txt").read_text().splitlines() == GENES


def test_a_loaded_preprocessor_has_the_saved_settings(data, tmp_path):
    """A bundle keeps the preprocessor's settings, so an unfitted copy of the loaded one fits like the original."""
    X_train, y_train, X_score = data
    result = fit_and_predict("logistic_regression", {}, X_train, y_train, X_score, seed=0, scaler="minmax",
                             normalize="rank", selection="variance", selection_k=40)
    directory = save_bundle(tmp_path / "bundle", model_name="logistic_regression", spec=get_model("logistic_regression"),
                            model=result.model, preprocessor=result.preprocessor, gene_order=GENES, params={},
                            run_id="run-settings")
    loaded = load_bundle(directory).preprocessor
    assert loaded.settings() == result.preprocessor.settings() == {
        "scaler": "minmax", "normalize": "rank", "selection": "variance", "selection_k": 40, "impute": True}
    refitted = loaded.unfitted_copy().fit(X_train, y_train)
    np.testing.assert_array_equal(refitted.transform(X_score), result.preprocessor.transform(X_score))


def test_model_files_use_safe_formats(saved_bundles):
    model_files = {
        name: json.loads((saved_bundles[name][0] / MANIFEST_FILE).read_text())["model_files"] for name in MODEL_NAMES
    }
    assert model_files == {
        "logistic_regression": ["linear_model.npz"],
        "linear_svm": ["linear_model.npz"],
        "random_forest": ["random_forest.npz"],
        "xgboost": ["xgboost_model.json", "xgboost_genes.npz"],
        "dnn": ["dnn_state_dict.pt"],
        "ktsp": ["ktsp.npz"],
    }
    for name in ("logistic_regression", "random_forest", "ktsp"):
        with np.load(saved_bundles[name][0] / model_files[name][0], allow_pickle=False) as archive:
            assert all(archive[key].dtype != object for key in archive.files)
    json.loads((saved_bundles["xgboost"][0] / "xgboost_model.json").read_text())


def test_scoring_checks_the_gene_count(saved_bundles):
    bundle = load_bundle(saved_bundles["logistic_regression"][0])
    with pytest.raises(PredictionError, match="expected 500"):
        bundle.predict_proba(np.zeros((2, 499)))


# --------------------------------------------------------------------------- integrity


def test_tampering_one_byte_of_any_file_is_detected(bundle_copy):
    for path in sorted(bundle_copy.iterdir()):
        original = path.read_bytes()
        tampered = bytearray(original)
        tampered[len(tampered) // 2] ^= 0x01
        path.write_bytes(bytes(tampered))
        with pytest.raises(BundleError, match=path.name):
            load_bundle(bundle_copy)
        path.write_bytes(original)
    load_bundle(bundle_copy)  # restored: loads again


def test_an_edited_manifest_value_is_detected(bundle_copy):
    path = bundle_copy / MANIFEST_FILE
    text = path.read_text()
    path.write_text(text.replace(f'"run-{bundle_copy.name}"', f'"run-{bundle_copy.name}X"'))
    with pytest.raises(BundleError, match="manifest.json"):
        load_bundle(bundle_copy)


def test_an_extra_file_is_rejected(bundle_copy):
    (bundle_copy / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match="notes.txt"):
        load_bundle(bundle_copy)


def test_an_extra_directory_is_rejected(bundle_copy):
    (bundle_copy / "cache").mkdir()
    (bundle_copy / "cache" / "x.bin").write_bytes(b"\0")
    with pytest.raises(BundleError, match="cache"):
        load_bundle(bundle_copy)


def test_a_removed_file_is_rejected(bundle_copy):
    for path in sorted(bundle_copy.iterdir()):
        original = path.read_bytes()
        path.unlink()
        with pytest.raises(BundleError, match=path.name):
            load_bundle(bundle_copy)
        path.write_bytes(original)


def test_unknown_format_version_is_rejected(saved_bundles, tmp_path):
    directory = shutil.copytree(saved_bundles["logistic_regression"][0], tmp_path / "bundle")
    rewrite_manifest(directory, lambda manifest: manifest.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(BundleError, match="unknown format version 2"):
        load_bundle(directory)


def test_path_traversal_in_the_manifest_is_rejected(saved_bundles, tmp_path):
    directory = shutil.copytree(saved_bundles["logistic_regression"][0], tmp_path / "bundle")
    rewrite_manifest(directory, lambda manifest: manifest["files"].update({"../genes.txt": {"sha256": "0", "size": 1}}))
    with pytest.raises(BundleError, match=r"\.\./genes\.txt"):
        load_bundle(directory)


def test_a_pickled_payload_is_refused_even_with_valid_checksums(saved_bundles, tmp_path):
    """Checksums can be recomputed by whoever swaps a file; the loader itself must not unpickle."""
    directory = shutil.copytree(saved_bundles["random_forest"][0], tmp_path / "bundle")
    model_file = directory / "random_forest.npz"
    np.savez(model_file, left=np.array([object()], dtype=object))
    rewrite_manifest(directory, lambda manifest: manifest["files"].update({model_file.name: _file_record(model_file)}))
    with pytest.raises(BundleError, match="random_forest.npz"):
        load_bundle(directory)


def test_missing_directory_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "absent")


# --------------------------------------------------------------------------- saving


@pytest.fixture(scope="module")
def small_fit(data):
    X_train, y_train, X_score = data
    return fit_and_predict("logistic_regression", {}, X_train, y_train, X_score, seed=0)


def save_small(directory, small_fit, **overrides):
    arguments = dict(
        model_name="logistic_regression",
        spec=get_model("logistic_regression"),
        model=small_fit.model,
        preprocessor=small_fit.preprocessor,
        gene_order=GENES,
        params={},
        run_id="r1",
    )
    arguments.update(overrides)
    return save_bundle(directory, **arguments)


def test_save_refuses_a_non_empty_directory(small_fit, tmp_path):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "old.txt").write_text("x")
    with pytest.raises(BundleError, match="non-empty"):
        save_small(tmp_path / "bundle", small_fit)


def test_save_into_an_existing_empty_directory(small_fit, tmp_path):
    (tmp_path / "bundle").mkdir()
    load_bundle(save_small(tmp_path / "bundle", small_fit))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"gene_order": GENES[:-1]}, "499 genes"),
        ({"gene_order": GENES[:-1] + ["bad\x1cname"]}, "single-line"),
        ({"gene_order": GENES[:-1] + [" padded"]}, "surrounding spaces"),
        ({"gene_order": ["DUP"] * N_GENES}, "'DUP' more than once"),
        ({"gene_order": GENES[:-1] + ["bad\nname"]}, "single-line"),
        ({"label_mapping": {"ALL": 1, "AML": 0}}, "AML is class 1"),
        ({"model_name": "dnn"}, "does not match"),
        ({"extra": {"weights": np.zeros(2)}}, "not plain JSON"),
    ],
)
def test_save_rejects_inconsistent_input_and_leaves_nothing(overrides, message, small_fit, tmp_path):
    with pytest.raises(BundleError, match=message):
        save_small(tmp_path / "bundle", small_fit, **overrides)
    assert list(tmp_path.iterdir()) == []  # no bundle, no staging leftovers


def test_numpy_scalars_in_extra_are_stored_as_plain_json(small_fit, tmp_path):
    extra = {"folds": np.int64(5), "auc": np.float32(0.5)}
    bundle = load_bundle(save_small(tmp_path / "bundle", small_fit, extra=extra))
    assert bundle.manifest["extra"] == {"folds": 5, "auc": 0.5}


def test_save_rejects_unknown_params(small_fit, tmp_path):
    with pytest.raises(ModelError, match="'depth'"):
        save_small(tmp_path / "bundle", small_fit, params={"depth": 3})


# --------------------------------------------------------------------------- hostile bundles (issue 24)


def reseal_file(directory, name):
    """Record a replaced file's size and checksum, as whoever swapped it could."""
    rewrite_manifest(directory, lambda manifest: manifest["files"].update({name: _file_record(directory / name)}))


def test_a_bundle_file_linked_to_a_file_outside_is_refused(saved_bundles, tmp_path):
    directory = shutil.copytree(saved_bundles["logistic_regression"][0], tmp_path / "bundle")
    outside = tmp_path / "outside" / "genes.txt"
    outside.parent.mkdir()
    shutil.move(directory / "genes.txt", outside)  # same content, so every checksum still matches
    (directory / "genes.txt").symlink_to(outside)
    with pytest.raises(BundleError, match="genes.txt: a symbolic link"):
        load_bundle(directory)


def test_a_deeply_nested_manifest_is_a_bundle_error(saved_bundles, tmp_path):
    directory = shutil.copytree(saved_bundles["logistic_regression"][0], tmp_path / "bundle")
    (directory / MANIFEST_FILE).write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(BundleError, match="nests deeper"):
        load_bundle(directory)


def test_a_sealed_manifest_nested_beyond_the_bound_is_refused(saved_bundles, tmp_path):
    directory = shutil.copytree(saved_bundles["logistic_regression"][0], tmp_path / "bundle")
    nested: list = []
    for _ in range(200):
        nested = [nested]
    rewrite_manifest(directory, lambda manifest: manifest["extra"].update(note=nested))
    with pytest.raises(BundleError, match="nests deeper than 32 levels"):
        load_bundle(directory)


@pytest.mark.parametrize("name", ["preprocessor.npz", "linear_model.npz"])
def test_a_truncated_archive_is_a_bundle_error_naming_it(saved_bundles, tmp_path, name):
    directory = shutil.copytree(saved_bundles["logistic_regression"][0], tmp_path / "bundle")
    data = (directory / name).read_bytes()
    (directory / name).write_bytes(data[: len(data) // 2])
    reseal_file(directory, name)
    with pytest.raises(BundleError, match=name.replace(".", r"\.")):
        load_bundle(directory)


@pytest.mark.parametrize("change, words", [
    (lambda m: m.update(extra="text"), "'extra'"),
    (lambda m: m.pop("extra"), "'extra'"),
    (lambda m: m["extra"].update(abstain_band="ab"), "extra.abstain_band"),
    (lambda m: m["extra"].update(abstain_band=[0.7, 0.2]), "extra.abstain_band"),
    (lambda m: m["extra"].update(features=[1, 2]), "extra.features"),
    (lambda m: m["extra"].update(features={"log_floor": "twenty"}), "extra.features.log_floor"),
    (lambda m: m["extra"].update(training_inputs=5), "extra.training_inputs"),
    (lambda m: m["extra"].update(training_inputs={"platforms": "GPL570"}), "extra.training_inputs.platforms"),
    (lambda m: m["extra"].update(training_inputs={"input_check": {"shift": [1]}}), "input_check"),
    (lambda m: m.update(input_reference_file=["genes.txt"]), "input_reference_file"),
    (lambda m: m.update(normalize=5), "normalize"),
    (lambda m: m.update(impute="no"), "impute"),
    (lambda m: m.update(selection_k="ten"), "selection_k"),
    (lambda m: m.update(n_genes=True), "n_genes"),
    (lambda m: m.update(n_genes=10**12), "n_genes"),
])
def test_malformed_manifest_values_are_bundle_errors(saved_bundles, tmp_path, change, words):
    directory = shutil.copytree(saved_bundles["logistic_regression"][0], tmp_path / "bundle")
    rewrite_manifest(directory, change)
    with pytest.raises(BundleError) as error:
        bundle = load_bundle(directory)
        # What scoring reads of the manifest, had the loader let it through:
        bundle.abstain_band, bundle.feature_settings.get("transform"), bundle.training_inputs.get("platforms")
    assert words in str(error.value)


def npy_bytes(shape, payload: bytes, dtype="<f8") -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + payload


def test_an_archive_declaring_a_huge_array_is_refused_before_allocating_it(saved_bundles, tmp_path, monkeypatch):
    import zipfile

    directory = shutil.copytree(saved_bundles["logistic_regression"][0], tmp_path / "bundle")
    path = directory / "preprocessor.npz"
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    with zipfile.ZipFile(path, "w") as out:
        for key, array in arrays.items():
            if key == "center":  # 8 TiB declared, 16 bytes given
                out.writestr("center.npy", npy_bytes((2**40,), b"\0" * 16))
            else:
                np.lib.format.write_array(out.open(f"{key}.npy", "w"), array)
    reseal_file(directory, "preprocessor.npz")
    allocated = []
    real_read_array = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array",
                        lambda fp, *a, **k: allocated.append(fp) or real_read_array(fp, *a, **k))
    with pytest.raises(BundleError, match=r"preprocessor\.npz: .*center\.npy.*1099511627776"):
        load_bundle(directory)
    assert not any("center" in str(getattr(fp, "name", "")) for fp in allocated)


def test_an_archive_array_longer_than_the_gene_count_is_refused(saved_bundles, tmp_path):
    directory = shutil.copytree(saved_bundles["logistic_regression"][0], tmp_path / "bundle")
    from leukspark.input_check import NOVELTY_COMPONENTS

    # An input reference may hold the novelty model's components (NOVELTY_COMPONENTS rows per gene), no more.
    bound = N_GENES * NOVELTY_COMPONENTS
    path = directory / "input_reference.npz"
    np.savez(path, gene_mean=np.zeros(bound + 1), gene_std=np.ones(bound + 1))
    rewrite_manifest(directory, lambda manifest: (manifest.update(input_reference_file="input_reference.npz"),
                                                  manifest["files"].update({path.name: _file_record(path)})))
    with pytest.raises(BundleError, match=rf"input_reference\.npz: .*more than the {bound} entries"):
        load_bundle(directory)


def test_a_compressed_archive_member_is_refused(saved_bundles, tmp_path):
    directory = shutil.copytree(saved_bundles["logistic_regression"][0], tmp_path / "bundle")
    path = directory / "preprocessor.npz"
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    np.savez_compressed(path, **arrays)
    reseal_file(directory, "preprocessor.npz")
    with pytest.raises(BundleError, match=r"preprocessor\.npz: .*compressed"):
        load_bundle(directory)


def test_a_file_over_the_size_bound_is_refused_before_it_is_hashed(saved_bundles, tmp_path, monkeypatch):
    import leukspark.bundle as bundle_module

    directory = shutil.copytree(saved_bundles["logistic_regression"][0], tmp_path / "bundle")
    monkeypatch.setattr(bundle_module, "MAX_FILE_BYTES", 256)
    hashed = []
    monkeypatch.setattr(bundle_module, "_file_record", lambda path: hashed.append(path.name) or {})
    with pytest.raises(BundleError, match="more than the 256 a bundle file may have"):
        load_bundle(directory)
    assert hashed == []


def test_a_stored_bundle_must_be_the_run_and_model_of_its_folder(saved_bundles, tmp_path):
    source = saved_bundles["logistic_regression"][0]      # saved as run "run-logistic_regression"
    own = shutil.copytree(source, tmp_path / "models" / "run-logistic_regression" / "logistic_regression")
    assert load_bundle(own, as_stored=True).run_id == "run-logistic_regression"
    for run, model in (("run-9", "logistic_regression"), ("run-logistic_regression", "linear_svm")):
        moved = shutil.copytree(source, tmp_path / "models" / run / model)
        with pytest.raises(BundleError, match="manifest names run run-logistic_regression and model "
                                              "logistic_regression, not the run and model of the folder"):
            load_bundle(moved, as_stored=True)


def test_a_deeply_nested_booster_json_is_refused_before_xgboost_parses_it(saved_bundles, tmp_path):
    directory = shutil.copytree(saved_bundles["xgboost"][0], tmp_path / "bundle")
    booster = directory / "xgboost_model.json"
    booster.write_text("[" * 100 + "]" * 100)   # deeper than any booster; XGBoost's parser recurses
    reseal_file(directory, booster.name)
    with pytest.raises(BundleError, match=r"xgboost_model\.json: nests deeper than 64 levels"):
        load_bundle(directory)
