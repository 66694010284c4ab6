"""Names of the folds that prediction and result rows carry.

Outer cross-validation folds are '0'..'k-1'; 'test' is the final fit scored on the held-out
set; 'ood' the excluded samples scored by the final models; 'cv_pooled' statistics over all
out-of-fold rows at once. Tasks that are fitted but never stored have their own names: nested
folds 'k/j' (for calibrators and the stacking meta-learner) and tuning tasks 'tune:k:c:j'.
"""

from __future__ import annotations

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
