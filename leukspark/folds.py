"""Names of the folds that prediction and result rows carry.

Outer cross-validation folds are '0'..'k-1'; 'test' is the final fit scored on the held-out
set; 'ood' the excluded samples scored by the final models; 'cv_pooled' statistics over all
out-of-fold rows at once. Tasks that are fitted but never stored have their own names: nested
folds 'k/j' (for calibrators and the stacking meta-learner) and tuning tasks 'tune:k:c:j'.
"""

from __future__ import annotations

import numpy as np

TEST_FOLD = "test"
OOD_FOLD = "ood"
POOLED_FOLD = "cv_pooled"


def is_cv_fold(fold) -> bool:
    """An outer cross-validation fold ('0'..'k-1'); not test, nested ('k/j'), ood or a summary."""
    return str(fold).isdigit()


def nested_fold(outer: int, held_out: int) -> str:
    """The task that fits on the training folds other than `outer` and `held_out` and predicts
    `held_out`: out-of-fold probabilities for fitting what is fitted on top of models (the stacking
    meta-learner, a calibrator) for outer fold `outer` without its labels."""
    return f"{outer}/{held_out}"


def task_costs(tasks) -> np.ndarray:
    """Estimated relative cost of each task: the model's `cost`, a final fit (all training rows)
    x1.25, a nested or tuning fit (fewer rows) x0.75."""
    from .models import get_model

    size = np.select([tasks["fold"] == TEST_FOLD, tasks["fold"].str.contains("/|:", regex=True)], [1.25, 0.75], 1.0)
    return tasks["model"].map(lambda name: get_model(name).cost).to_numpy(dtype=float) * size
