"""Every bad input gets a ValueError naming the problem, before training starts."""
import math

import numpy as np
import pytest
import torch

from attribshield import RobustAttributionClassifier
from attribshield._params import Integral, Options, Real, check_param
from attribshield.testing import TinyMLP, make_images


class Boom(TinyMLP):
    """A module whose forward fails: proves that validation happens before any training."""

    def forward(self, x):  # pragma: no cover - must never run
        raise AssertionError("training started before input validation")


def clf(**kw):
    return RobustAttributionClassifier(Boom, max_epochs=1, verbose=0, **kw)


X, y = make_images(n=12)


@pytest.mark.parametrize(
    "Xbad, ybad, match",
    [
        (X[:, 0], y, "4 dimensions"),
        (X[None], y, "4 dimensions"),
        (np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X), y, "non-finite"),
        (np.where(np.arange(X.size).reshape(X.shape) == 5, np.inf, X), y, "non-finite"),
        (X * 2.0, y, r"\[0, 1\]"),
        (X - 0.5, y, r"\[0, 1\]"),
        (X[:0], y[:0], "empty"),
        (X, y[:-1], "different lengths"),
        (X, y + 0.5, "integer"),
        (X, np.array(["a"] * len(y)), "integer"),
        (X, -y - 1, "negative"),
        ((X * 255).astype(np.int32), y, "uint8"),
        (X.astype(bool), y, "dtype"),
        (X, np.stack([y, y], 1), "1-dimensional"),
    ],
    ids=["3d", "5d", "nan", "inf", "above-1", "below-0", "empty", "lengths", "float-labels",
         "string-labels", "negative-labels", "int32-pixels", "bool", "2d-labels"],
)
def test_fit_rejects_bad_input(Xbad, ybad, match):
    with pytest.raises(ValueError, match=match):
        clf().fit(Xbad, ybad)


def test_fit_requires_y():
    with pytest.raises(ValueError, match="requires y to be passed"):
        clf().fit(X, None)


@pytest.mark.parametrize("kw, match", [
    ({"refine_every": 0}, "refine_every"),
    ({"refine_fraction": 0.0}, "refine_fraction"),
    ({"clean_weight": 1.5}, "clean_weight"),
    ({"mask_weight": -1.0}, "mask_weight"),
    ({"autocast": "fp8"}, "autocast"),
])
def test_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        clf(**kw).fit(X, y)


def test_predict_rejects_bad_input():
    fitted = RobustAttributionClassifier(TinyMLP, max_epochs=1, verbose=0).fit(X, y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fitted.predict(X + 1)
    with pytest.raises(ValueError, match="4 dimensions"):
        fitted.predict_proba(X[0])
    with pytest.raises(ValueError, match="not seen in fit"):
        fitted.score(X, np.full(len(X), 7))


def test_value_range_none_accepts_unbounded_values():
    fitted = RobustAttributionClassifier(TinyMLP, max_epochs=1, verbose=0, value_range=None).fit(X * 4 - 2, y)
    assert fitted.predict(X * 4 - 2).shape == (len(X),)
    with pytest.raises(ValueError, match="non-finite"):
        fitted.predict(np.full_like(X, np.nan))


def test_module_output_must_match_classes():
    with pytest.raises(ValueError, match="module__num_classes=3"):
        RobustAttributionClassifier(TinyMLP, module__num_classes=5, max_epochs=1, verbose=0).fit(X, y)


def test_partial_fit_with_other_feature_count_raises():
    fitted = RobustAttributionClassifier(TinyMLP, max_epochs=1, verbose=0).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        fitted.partial_fit(np.zeros((4, 1, 4, 4), np.float32), y[:4])


def test_sparse_input_is_rejected():
    from scipy import sparse

    with pytest.raises(ValueError, match="Sparse data"):
        clf = RobustAttributionClassifier(TinyMLP, input_shape=(1, 8, 8), verbose=0)
        clf.fit(sparse.csr_matrix(X.reshape(12, -1)), y)


# ----------------------------------------------------------------- the _params helper
@pytest.mark.parametrize("interval, text", [
    (Real(0, None), "a finite number in [0, inf)"),
    (Real(0, None, closed="neither"), "a finite number in (0, inf)"),
    (Real(None, 1), "a finite number in (-inf, 1]"),
    (Real(0, math.inf), "a finite number in [0, inf)"),
    (Integral(1, None), "an integer in [1, inf)"),
    (Real(0, 1), "a finite number in [0, 1]"),
    (Real(0, 1, closed="right"), "a finite number in (0, 1]"),
    (Real(0, 0.5, closed="left"), "a finite number in [0, 0.5)"),
    (Integral(), "an integer"),
])
def test_interval_prints_an_unbounded_side_open(interval, text):
    assert str(interval) == text


@pytest.mark.parametrize("value", [np.array(["a", "b"]), np.array("a"), np.array([1, 2]), torch.tensor([1, 2]),
                                   torch.tensor(1)])
def test_options_reject_arrays_and_tensors_without_a_truth_value_error(value):
    assert Options("a", 1)(value) is False
    with pytest.raises(ValueError, match=r"^f: mode must be one of 'a', 1, got "):
        check_param("f", "mode", value, [Options("a", 1)])


def test_options_accept_only_listed_values_of_the_same_type():
    opts = Options("a", 1)
    assert opts("a") and opts(1)
    assert not opts(True) and not opts(1.0) and not opts("b") and not opts(None)
