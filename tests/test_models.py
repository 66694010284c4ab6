"""Models, the registry, the preprocessor and the leakage guard of fit_and_predict."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from leukspark.errors import ModelError, PredictionError
from leukspark.metrics import binary_metrics
from leukspark.models import REGISTRY, FitResult, fit_and_predict, get_model, register
from leukspark.models.base import Preprocessor, top_features_by_t_statistic
from leukspark.models.dnn import DnnSpec
from leukspark.models.linear_svm import fit_platt_sigmoid
from leukspark.models.random_forest import TreeEnsemble

MODEL_NAMES = ["logistic_regression", "linear_svm", "random_forest", "xgboost", "dnn", "ktsp"]
# Small but faithful settings so the whole module runs in seconds.
FAST_PARAMS = {
    "logistic_regression": {},
    "linear_svm": {},
    "random_forest": {"n_estimators": 60},
    "xgboost": {"n_estimators": 60, "max_genes": 200},
    "dnn": {"hidden_layers": [64, 16]},
    "ktsp": {"prefilter_genes": 100},
}
N_INFORMATIVE = 25


def make_problem(n_samples=300, n_genes=500, shift=1.5, seed=0, missing_fraction=0.0):
    """Two gaussian classes; AML (1) is shifted up on the first N_INFORMATIVE genes."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n_samples) < 0.45).astype(np.int8)
    X = rng.normal(loc=5.0, scale=2.0, size=(n_samples, n_genes)).astype(np.float32)
    X[:, :N_INFORMATIVE] += (y[:, None] * shift * 2.0).astype(np.float32)
    if missing_fraction:
        X[rng.random(X.shape) < missing_fraction] = np.nan
    return X, y


@pytest.fixture(scope="module")
def problem():
    X, y = make_problem(missing_fraction=0.01)
    return X[:200], y[:200], X[200:], y[200:]


@pytest.fixture(scope="module")
def fitted(problem):
    """One fit per model, shared by the tests that only inspect it."""
    X_train, y_train, X_eval, _ = problem
    return {name: fit_and_predict(name, FAST_PARAMS[name], X_train, y_train, X_eval, seed=7) for name in MODEL_NAMES}


# --------------------------------------------------------------------------- registry


def test_registry_holds_exactly_the_six_models():
    assert sorted(REGISTRY) == sorted(MODEL_NAMES)
    for name, spec in REGISTRY.items():
        assert spec.name == name
        assert get_model(name) is spec


def test_unknown_model_name_is_a_model_error_listing_known_names():
    with pytest.raises(ModelError, match="'random_tree'") as error:
        get_model("random_tree")
    assert all(name in str(error.value) for name in MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_unknown_param_is_a_model_error_naming_it(name, problem):
    X_train, y_train, X_eval, _ = problem
    with pytest.raises(ModelError, match="'learning_speed'"):
        fit_and_predict(name, {"learning_speed": 3}, X_train, y_train, X_eval, seed=0)


def test_params_override_defaults_without_mutating_them():
    spec = get_model("random_forest")
    resolved = spec.resolve_params({"n_estimators": 5})
    assert resolved["n_estimators"] == 5 and spec.default_params["n_estimators"] == 300
    resolved["max_depth"] = 3
    assert spec.default_params["max_depth"] is None


def test_invalid_param_value_is_a_model_error(problem):
    X_train, y_train, X_eval, _ = problem
    with pytest.raises(ModelError, match="logistic_regression"):
        fit_and_predict("logistic_regression", {"C": -1.0}, X_train, y_train, X_eval, seed=0)


def test_every_parameter_of_every_model_declares_its_check():
    for name, spec in REGISTRY.items():
        assert set(spec.param_checks) == set(spec.default_params), name
        assert spec.param_problem(spec.default_params) is None, name


@pytest.mark.parametrize("name, params, key", [
    ("logistic_regression", {"C": "abc"}, "C"),
    ("linear_svm", {"calibration_folds": 1}, "calibration_folds"),
    ("random_forest", {"max_features": 1.5}, "max_features"),
    ("random_forest", {"n_jobs": 0}, "n_jobs"),
    ("xgboost", {"learning_rate": 0}, "learning_rate"),
    ("dnn", {"dropout": 1.5}, "dropout"),
    ("dnn", {"hidden_layers": [64, 0]}, "hidden_layers"),
    ("dnn", {"max_epochs": True}, "max_epochs"),
])
def test_a_parameter_of_wrong_type_or_range_fails_before_fitting(name, params, key):
    with pytest.raises(ModelError, match=f"model '{name}': parameter '{key}' must be"):
        get_model(name).resolve_params(params)


def test_registering_a_clashing_name_fails():
    class Impostor(DnnSpec):
        name = "logistic_regression"

    with pytest.raises(ModelError, match="already registered"):
        register(Impostor())
    assert type(REGISTRY["logistic_regression"]).__name__ == "LogisticRegressionSpec"


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.zeros(200), "single class"),
        (np.full(200, 2), "0 \\(ALL\\) or 1 \\(AML\\)"),
        (np.zeros(7), "one entry per sample"),
    ],
)
def test_bad_labels_are_rejected(labels, message, problem):
    X_train = Preprocessor().fit_transform(problem[0])
    with pytest.raises(ModelError, match=message):
        get_model("logistic_regression").fit(X_train, labels, {}, seed=0)


def test_unpreprocessed_nan_is_rejected_at_fit(problem):
    X_train, y_train, _, _ = problem
    with pytest.raises(ModelError, match="NaN"):
        get_model("logistic_regression").fit(X_train, y_train, {}, seed=0)


# --------------------------------------------------------------------------- every model


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_learns_a_separable_problem(name, fitted, problem):
    result = fitted[name]
    y_eval = problem[3]
    assert isinstance(result, FitResult)
    assert result.probabilities.shape == y_eval.shape and result.probabilities.dtype == np.float64
    assert np.all((result.probabilities >= 0) & (result.probabilities <= 1))
    assert binary_metrics(y_eval, result.probabilities)["accuracy"] >= 0.9
    assert result.fit_seconds > 0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_same_seed_and_data_give_identical_probabilities(name, fitted, problem):
    X_train, y_train, X_eval, _ = problem
    again = fit_and_predict(name, FAST_PARAMS[name], X_train, y_train, X_eval, seed=7)
    np.testing.assert_array_equal(again.probabilities, fitted[name].probabilities)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_eval_rows_do_not_influence_the_fit(name, fitted, problem):
    """Leakage guard: wildly different X_eval leaves preprocessor and model unchanged."""
    X_train, y_train, X_eval, _ = problem
    other_eval = X_eval * 100.0 + 42.0
    other_eval[::3, ::5] = np.nan
    result = fit_and_predict(name, FAST_PARAMS[name], X_train, y_train, other_eval, seed=7)
    reference = fitted[name]
    for key, array in reference.preprocessor.to_arrays().items():
        np.testing.assert_array_equal(result.preprocessor.to_arrays()[key], array, err_msg=key)
    spec = get_model(name)
    unchanged_copy = reference.preprocessor.transform(X_eval.copy())
    np.testing.assert_array_equal(
        spec.predict_proba(result.model, unchanged_copy), spec.predict_proba(reference.model, unchanged_copy)
    )


def test_fit_and_predict_does_not_modify_its_inputs(problem):
    X_train, y_train, X_eval, _ = problem
    copies = [X_train.copy(), y_train.copy(), X_eval.copy()]
    fit_and_predict("logistic_regression", {}, X_train, y_train, X_eval, seed=0)
    for original, copy in zip((X_train, y_train, X_eval), copies):
        np.testing.assert_array_equal(original, copy)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_feature_weights_only_for_linear_models(name, fitted):
    weights = get_model(name).feature_weights(fitted[name].model)
    if name in ("logistic_regression", "linear_svm"):
        assert weights.shape == (500,)
        # AML is shifted up on the informative genes: they carry the largest positive weights.
        strongest = np.argsort(-weights)[:N_INFORMATIVE]
        assert np.mean(strongest < N_INFORMATIVE) >= 0.8
    else:
        assert weights is None


def test_scoring_with_the_wrong_gene_count_is_a_prediction_error(fitted):
    spec = get_model("logistic_regression")
    with pytest.raises(PredictionError, match="499 gene columns, expected 500"):
        spec.predict_proba(fitted["logistic_regression"].model, np.zeros((3, 499), dtype=np.float32))


# --------------------------------------------------------------------------- model details


def test_logistic_regression_matches_sklearn(problem):
    X_train = Preprocessor().fit_transform(problem[0])
    spec = get_model("logistic_regression")
    model = spec.fit(X_train, problem[1], {}, seed=0)
    reference = LogisticRegression(C=0.1, max_iter=2000, random_state=0).fit(X_train, problem[1])
    np.testing.assert_allclose(spec.predict_proba(model, X_train), reference.predict_proba(X_train)[:, 1], rtol=1e-5)
    np.testing.assert_allclose(spec.feature_weights(model), reference.coef_[0])


def test_random_forest_node_arrays_score_like_sklearn(problem):
    X_train = Preprocessor().fit_transform(problem[0])
    forest = RandomForestClassifier(n_estimators=20, random_state=0, n_jobs=1).fit(X_train, problem[1])
    ensemble = TreeEnsemble.from_sklearn(forest)
    np.testing.assert_allclose(ensemble.predict_proba(X_train), forest.predict_proba(X_train)[:, 1], atol=1e-12)


def test_platt_sigmoid_recovers_known_parameters():
    rng = np.random.default_rng(3)
    scores = rng.normal(scale=2.0, size=20000)
    labels = (rng.random(scores.size) < 1 / (1 + np.exp(-(1.5 * scores - 0.7)))).astype(int)
    slope, offset = fit_platt_sigmoid(scores, labels)
    assert slope == pytest.approx(1.5, abs=0.08) and offset == pytest.approx(-0.7, abs=0.08)


def test_linear_svm_calibration_is_not_shifted_with_many_more_genes_than_samples():
    """Platt scaling on held-out folds that shared the standardization mean shifts the
    0.5 threshold when genes >> samples; inner re-centering must prevent it."""
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.4).astype(np.int8)
    X = rng.normal(size=(300, 4000)).astype(np.float32)
    X[:, :100] += (y[:, None] * 0.6).astype(np.float32)
    result = fit_and_predict("linear_svm", {}, X[:200], y[:200], X[200:], seed=0)
    metrics = binary_metrics(y[200:], result.probabilities)
    assert metrics["roc_auc"] >= 0.95
    assert metrics["accuracy"] >= 0.85


def test_dnn_architecture_comes_back_from_the_weights(fitted, tmp_path):
    spec = get_model("dnn")
    model = fitted["dnn"].model
    spec.save(model, tmp_path)
    loaded = spec.load(tmp_path)
    widths = [layer.out_features for layer in loaded if hasattr(layer, "out_features")]
    assert widths == [64, 16, 1] and spec.n_features(loaded) == 500


def test_t_statistic_filter_keeps_informative_genes(problem):
    X_train = Preprocessor().fit_transform(problem[0])
    kept = top_features_by_t_statistic(X_train, problem[1], N_INFORMATIVE)
    assert np.all(np.diff(kept) > 0) and np.mean(kept < N_INFORMATIVE) >= 0.9
    assert top_features_by_t_statistic(X_train, problem[1], None).size == 500


# --------------------------------------------------------------------------- preprocessor


@pytest.fixture()
def training_with_gaps():
    rng = np.random.default_rng(11)
    X = rng.normal(loc=3.0, scale=[0.5, 1.0, 2.0, 4.0, 1.0, 3.0], size=(40, 6))
    X[rng.random(X.shape) < 0.2] = np.nan
    X[:, 4] = np.nan  # never observed in training
    X[:, 5] = 2.5  # constant
    X[0, 5] = np.nan
    return X


def test_nan_is_imputed_with_training_means(training_with_gaps):
    preprocessor = Preprocessor("none").fit(training_with_gaps)
    expected_means = np.nanmean(training_with_gaps[:, :4], axis=0)
    np.testing.assert_allclose(preprocessor.impute_values[:4], expected_means, rtol=1e-12)
    row = np.full((1, 6), np.nan)
    np.testing.assert_allclose(preprocessor.transform(row)[0, :4], expected_means.astype(np.float32))


def test_standard_scaling_equals_sklearn_on_imputed_training_data(training_with_gaps):
    columns = [0, 1, 2, 3, 5]  # column 4 is never observed: no sklearn counterpart
    observed = training_with_gaps[:, columns]
    imputed = np.where(np.isnan(observed), np.nanmean(observed, axis=0), observed)
    reference = StandardScaler().fit(imputed)
    preprocessor = Preprocessor("standard").fit(training_with_gaps)
    np.testing.assert_allclose(preprocessor.center[columns], reference.mean_, rtol=1e-12)
    np.testing.assert_allclose(preprocessor.scale[columns], reference.scale_, rtol=1e-12)
    new_rows = np.random.default_rng(5).normal(size=(7, 6))
    np.testing.assert_allclose(
        preprocessor.transform(new_rows)[:, columns], reference.transform(new_rows[:, columns]), rtol=1e-5, atol=1e-6
    )


def test_minmax_scaling_equals_sklearn(training_with_gaps):
    observed = training_with_gaps[:, :4]
    imputed = np.where(np.isnan(observed), np.nanmean(observed, axis=0), observed)
    preprocessor = Preprocessor("minmax").fit(observed)
    np.testing.assert_allclose(
        preprocessor.transform(observed), MinMaxScaler().fit_transform(imputed), rtol=1e-5, atol=1e-6
    )


def test_all_nan_and_constant_columns_become_zero(training_with_gaps):
    preprocessor = Preprocessor().fit(training_with_gaps)
    transformed = preprocessor.transform(training_with_gaps)
    assert transformed.dtype == np.float32 and np.isfinite(transformed).all()
    assert np.all(transformed[:, 4] == 0) and np.all(transformed[:, 5] == 0)
    assert preprocessor.scale[4] == 1.0 and preprocessor.scale[5] == 1.0
    # A never-observed gene stays at 0 even when a scored sample has a value for it.
    assert preprocessor.transform(np.full((1, 6), 100.0))[0, 4] == 0.0


def test_preprocessor_round_trips_through_arrays(training_with_gaps):
    preprocessor = Preprocessor("minmax").fit(training_with_gaps)
    rebuilt = Preprocessor.from_arrays(preprocessor.to_arrays(), "minmax")
    np.testing.assert_array_equal(rebuilt.transform(training_with_gaps), preprocessor.transform(training_with_gaps))


def test_an_unfitted_copy_has_the_settings_and_none_of_the_fit(training_with_gaps):
    labels = np.array([0, 1] * 20)
    original = Preprocessor("minmax", "rank", "variance", 3, impute=False)
    original.fit(training_with_gaps, labels)
    copy = original.unfitted_copy()
    assert copy.settings() == original.settings() == {
        "scaler": "minmax", "normalize": "rank", "selection": "variance", "selection_k": 3, "impute": False}
    with pytest.raises(ModelError, match="not fitted"):
        copy.transform(training_with_gaps)
    refitted = copy.fit(training_with_gaps[:30], labels[:30])
    np.testing.assert_array_equal(refitted.transform(training_with_gaps),
                                  Preprocessor(**original.settings()).fit(training_with_gaps[:30], labels[:30])
                                  .transform(training_with_gaps))
    assert original.n_features == 6  # the original keeps its own fit


@pytest.mark.parametrize("multiclass", [False, True], ids=["binary", "multiclass"])
def test_a_fit_uses_the_preprocessing_its_model_declares(multiclass, monkeypatch):
    """A model's own preprocessing (ModelSpec.preprocessing, e.g. k-TSP's unscaled values) overrides the
    run's settings for ALL/AML and multi-class fits alike."""
    from leukspark.models import fit_and_predict_multiclass

    spec = get_model("logistic_regression")
    monkeypatch.setattr(type(spec), "preprocessing", {"scaler": "minmax", "normalize": "rank"})
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(30, 8)), np.arange(30) % (3 if multiclass else 2)
    fit = fit_and_predict_multiclass if multiclass else fit_and_predict
    result = fit("logistic_regression", {}, X, y, X[:4], seed=0, scaler="standard", normalize="none")
    assert result.preprocessor.settings()["scaler"] == "minmax"
    assert result.preprocessor.settings()["normalize"] == "rank"
    assert result.probabilities.shape == ((4, 3) if multiclass else (4,))


def test_preprocessor_does_not_modify_its_input(training_with_gaps):
    original = training_with_gaps.copy()
    Preprocessor().fit(training_with_gaps).transform(training_with_gaps)
    np.testing.assert_array_equal(training_with_gaps, original)


def test_preprocessor_errors():
    with pytest.raises(ModelError, match="unknown scaler 'robust'"):
        Preprocessor("robust")
    with pytest.raises(ModelError, match="not fitted"):
        Preprocessor().transform(np.zeros((2, 3)))
    fitted = Preprocessor().fit(np.arange(12.0).reshape(4, 3))
    with pytest.raises(PredictionError, match="2 gene columns, expected 3"):
        fitted.transform(np.zeros((2, 2)))
    with pytest.raises(ModelError, match="infinite"):
        Preprocessor().fit(np.array([[1.0, np.inf], [2.0, 3.0]]))
    with pytest.raises(ModelError, match="lack center"):
        Preprocessor.from_arrays({"impute_values": np.zeros(3)}, "standard")


NEW_MODEL_MODULE = '''
"""A model added as one file: nearest shrunken centroid (scikit-learn)."""
import numpy as np
from sklearn.neighbors import NearestCentroid

from leukspark import checks
from leukspark.models.base import ModelSpec


class CentroidSpec(ModelSpec):
    name = "test_centroid"
    cost = 9.0
    default_params = {"shrink_threshold": 0.5}
    param_checks = {"shrink_threshold": checks.positive()}

    def _fit(self, X, y, params, seed):
        return NearestCentroid(shrink_threshold=params["shrink_threshold"]).fit(X, y)

    def _predict_proba(self, model, X):
        distances = np.stack([np.linalg.norm(X - c, axis=1) for c in model.centroids_], axis=1)
        return 1.0 / (1.0 + np.exp(distances[:, 1] - distances[:, 0]))

    def n_features(self, model):
        return model.centroids_.shape[1]

    def save(self, model, directory):
        raise NotImplementedError

    def load(self, directory):
        raise NotImplementedError


MODEL = CentroidSpec()
'''


def test_adding_a_model_is_adding_one_module(tmp_path, monkeypatch):
    import sys

    import leukspark.models as registry
    from leukspark.config import load_config
    from leukspark.stages.train import plan_tasks

    (tmp_path / "test_centroid.py").write_text(NEW_MODEL_MODULE)
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(tmp_path)])
    try:
        registry._register_package_models()
        assert type(get_model("test_centroid")).__name__ == "CentroidSpec"
        # its defaults come from its module (the YAML holds overrides only), its cost orders the fan-out
        assert load_config()["training"]["params"]["test_centroid"] == {"shrink_threshold": 0.5}
        assert load_config(overrides={"training.params": {"test_centroid": {"shrink_threshold": 2.0}}})[
            "training"]["params"]["test_centroid"] == {"shrink_threshold": 2.0}
        tasks = plan_tasks(["logistic_regression", "test_centroid"], 2, {})
        assert tasks["model"].iloc[0] == "test_centroid"
        X, y = np.random.default_rng(0).normal(size=(40, 5)), np.repeat([0, 1], 20)
        X[y == 1] += 2.0
        result = fit_and_predict("test_centroid", {}, X[::2], y[::2], X[1::2], seed=0)
        assert binary_metrics(y[1::2], result.probabilities)["accuracy"] >= 0.9
    finally:
        REGISTRY.pop("test_centroid", None)
        sys.modules.pop("leukspark.models.test_centroid", None)
