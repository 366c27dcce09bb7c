"""scikit-learn's estimator checks on a tiny configuration.

The tiny configuration reads 2-D tabular data as ``(N, 1, 1, F)`` images (``input_shape``)
and disables the [0, 1] range check (``value_range=None``), because the checks feed
unbounded tabular data; everything else is the estimator as users get it.
"""
import warnings

from sklearn.utils.estimator_checks import parametrize_with_checks

from attribshield import RobustAttributionClassifier
from attribshield.testing import TinyMLP

EXPECTED_FAILED_CHECKS = {
    "check_no_attributes_set_in_init": (
        "skorch's NeuralNet.__init__ sets history_, initialized_ and virtual_params_; "
        "attribshield's own __init__ stores only parameters"
    ),
    "check_classifiers_classes": (
        "labels must be integers by design (string labels raise ValueError); integer labels "
        "need not be contiguous and are encoded internally"
    ),
}


def tiny():
    return RobustAttributionClassifier(TinyMLP, input_shape=(1, 1, -1), value_range=None, max_epochs=5,
                                       lr=0.1, verbose=0, random_state=0)


@parametrize_with_checks([tiny()], expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)
