"""A regularised multilayer perceptron (PyTorch, CPU), saved as a ``state_dict``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from leukspark import checks
from leukspark.errors import ModelError
from leukspark.models.base import ModelSpec, inner_split_center

def _torch():
    # Imported on first use so that importing the registry (done by every Spark Python
    # worker, whichever model its task trains) does not pay ~1 s and ~300 MB for torch.
    import torch

    return torch


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch on one thread (one core per Spark task; also fixes the float summation order)."""
    torch = _torch()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_network(n_inputs: int, hidden_layers: Sequence[int], dropout: float, input_dropout: float):
    """``Dropout(input) -> [Linear -> ReLU -> Dropout] per hidden layer -> Linear(1)`` (a logit).

    The layer pattern is fixed (a Dropout is present even at p = 0) so that the
    architecture can be read back from the ``state_dict`` shapes alone.
    """
    nn = _torch().nn
    layers: list = [nn.Dropout(input_dropout)]
    width = n_inputs
    for units in hidden_layers:
        layers += [nn.Linear(width, int(units)), nn.ReLU(), nn.Dropout(dropout)]
        width = int(units)
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def _layer_sizes(state_dict: dict) -> list[int]:
    """Input width followed by each Linear layer's output width, from the weight shapes."""
    if not isinstance(state_dict, dict):
        raise ModelError(f"dnn weights file holds a {type(state_dict).__name__}, not a state_dict")
    try:
        weight_keys = sorted(
            (key for key in state_dict if key.endswith(".weight")), key=lambda key: int(key.split(".")[0])
        )
    except ValueError as exc:
        raise ModelError(f"dnn state_dict has an unexpected key: {exc}") from exc
    if not weight_keys:
        raise ModelError("dnn state_dict holds no layer weights")
    shapes = [tuple(state_dict[key].shape) for key in weight_keys]
    if any(len(shape) != 2 for shape in shapes) or shapes[-1][0] != 1:
        raise ModelError("dnn state_dict is not an MLP with a single output")
    return [shapes[0][1]] + [shape[0] for shape in shapes]


class DnnSpec(ModelSpec):
    """MLP with dropout, weight decay (AdamW) and early stopping on an inner validation split.

    ``validation_fraction`` of the training rows (stratified by class, chosen by the seed)
    never update the weights; training stops when their loss has not improved for
    ``patience`` epochs, and the weights of the best epoch are kept. Input dropout
    regularises the ~20,000-wide first layer, which holds almost all parameters. Both
    parts are re-centered on the inner training rows (see ``inner_split_center``) so the
    validation loss behaves like the loss on unseen samples.
    """

    name = "dnn"
    cost = 5.0
    default_params = {
        "hidden_layers": [256, 64],
        "dropout": 0.5,
        "input_dropout": 0.2,
        "learning_rate": 3e-4,
        "weight_decay": 1e-2,
        "batch_size": 64,
        "max_epochs": 60,
        "patience": 8,
        "min_delta": 1e-3,
        "validation_fraction": 0.15,
    }
    param_checks = {
        "hidden_layers": checks.list_of(checks.integer(1)),
        "dropout": checks.number(0, 1, high_open=True),
        "input_dropout": checks.number(0, 1, high_open=True),
        "learning_rate": checks.positive(),
        "weight_decay": checks.number(0),
        "batch_size": checks.integer(1),
        "max_epochs": checks.integer(1),
        "patience": checks.integer(1),
        "min_delta": checks.number(0),
        "validation_fraction": checks.number(0, 1, low_open=True, high_open=True),
    }
    tuning_grid = {"hidden_layers": [[256, 64], [512, 128], [128]], "dropout": [0.3, 0.5]}
    FILE_NAME = "dnn_state_dict.pt"
    _SCORING_BATCH = 4096  # rows per forward pass when scoring; bounds activation memory

    def _fit(self, X: np.ndarray, y: np.ndarray, params: dict[str, Any], seed: int):
        torch = _torch()
        hidden_layers = [int(units) for units in params["hidden_layers"]]
        if not hidden_layers or min(hidden_layers) < 1:
            raise ModelError(f"dnn: hidden_layers must be positive widths, got {params['hidden_layers']!r}")
        X_fit, X_val, y_fit, y_val = train_test_split(
            X, y, test_size=params["validation_fraction"], stratify=y, random_state=seed
        )
        center = inner_split_center(X_fit)
        X_fit, X_val = X_fit - center, X_val - center
        with _single_thread():
            torch.manual_seed(seed)  # weight init and dropout masks
            shuffler = torch.Generator().manual_seed(seed)
            network = build_network(X.shape[1], hidden_layers, params["dropout"], params["input_dropout"])
            # The fused kernel halves the epoch time on CPU: the optimizer step over the
            # ~5M first-layer weights otherwise costs as much as the forward/backward pass.
            optimizer = torch.optim.AdamW(
                network.parameters(), lr=params["learning_rate"], weight_decay=params["weight_decay"], fused=True
            )
            loss_function = torch.nn.BCEWithLogitsLoss()
            features, targets = torch.from_numpy(X_fit), torch.from_numpy(y_fit.astype(np.float32))
            val_features, val_targets = torch.from_numpy(X_val), torch.from_numpy(y_val.astype(np.float32))

            best_loss, best_state, epochs_without_improvement = float("inf"), None, 0
            for _ in range(int(params["max_epochs"])):
                network.train()
                for batch in torch.randperm(len(targets), generator=shuffler).split(int(params["batch_size"])):
                    optimizer.zero_grad()
                    loss_function(network(features[batch]).squeeze(1), targets[batch]).backward()
                    optimizer.step()
                network.eval()
                with torch.no_grad():
                    val_loss = loss_function(network(val_features).squeeze(1), val_targets).item()
                if val_loss < best_loss:  # keep the best weights, however small the gain...
                    best_state = {key: value.clone() for key, value in network.state_dict().items()}
                # ...but only a gain of min_delta counts as progress, so a slow creep
                # along a plateau does not keep training (and the fit's time) going.
                made_progress = val_loss < best_loss - params["min_delta"]
                best_loss = min(best_loss, val_loss)
                epochs_without_improvement = 0 if made_progress else epochs_without_improvement + 1
                if epochs_without_improvement >= params["patience"]:
                    break
            if best_state is None:
                raise ModelError("dnn: validation loss was never finite; lower learning_rate")
            network.load_state_dict(best_state)
            first_layer = network[1]
            with torch.no_grad():  # W(x - c) + b = Wx + (b - Wc): the network takes uncentered input
                first_layer.bias -= first_layer.weight @ torch.from_numpy(center)
        return network.eval()

    def _predict_proba(self, model, X: np.ndarray) -> np.ndarray:
        torch = _torch()
        batches = (X[start : start + self._SCORING_BATCH] for start in range(0, X.shape[0], self._SCORING_BATCH))
        with _single_thread(), torch.no_grad():
            logits = [model(torch.tensor(batch)).squeeze(1) for batch in batches]
            return torch.sigmoid(torch.cat(logits)).double().numpy()

    def n_features(self, model) -> int:
        return int(model[1].in_features)

    def save(self, model, directory: Path) -> list[str]:
        """Write the weights only; the architecture is implied by the weight shapes."""
        _torch().save(model.state_dict(), Path(directory) / self.FILE_NAME)
        return [self.FILE_NAME]

    def load(self, directory: Path):
        """Rebuild the network from a ``state_dict`` read with ``weights_only=True``."""
        torch = _torch()
        path = Path(directory) / self.FILE_NAME
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises a variety of types for corrupt archives
            raise ModelError(f"{path.name}: cannot read the network weights: {exc}") from exc
        sizes = _layer_sizes(state_dict)
        # Dropout rates do not matter at inference, so 0 is as good as the trained value.
        network = build_network(sizes[0], sizes[1:-1], dropout=0.0, input_dropout=0.0)
        try:
            network.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{path.name}: weights do not fit the network layout: {exc}") from exc
        return network.eval()


# Found by the registry (leukspark.models): this line is what makes the model available.
MODEL = DnnSpec()
