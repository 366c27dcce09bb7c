"""Tests of the data loaders: digits (embedded), CIFAR-10 (real copy), CIFAR-100 (written here)."""
from __future__ import annotations

import numpy as np
import pytest

from attribshield.data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    load_cifar10,
    load_cifar100,
    load_digits,
)
from attribshield.testing import write_cifar100

# ---------------------------------------------------------------------------------------------
# digits


def test_load_digits_shapes_dtypes_range():
    X, y = load_digits()
    assert X.shape == (1797, 1, 8, 8) and X.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    # grey levels are 0..16 in the raw data: X * 16 must be integral
    np.testing.assert_array_equal(X * 16, np.round(X * 16))


def test_load_digits_bunch_matches_arrays():
    X, y = load_digits()
    b = load_digits(return_X_y=False)
    np.testing.assert_array_equal(b.data, X)
    np.testing.assert_array_equal(b.target, y)
    assert b.classes == tuple("0123456789")


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (real copy, re-packed: verify=False)


@pytest.fixture(scope="module")
def cifar10_test(cifar10_root):
    return load_cifar10(cifar10_root, train=False, verify=False)


def test_cifar10_test_split(cifar10_test):
    X, y = cifar10_test
    assert X.shape == (10000, 3, 32, 32) and X.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.int64
    assert X.min() >= 0.0 and X.max() <= 1.0 and X.max() > 0.99
    np.testing.assert_array_equal(np.bincount(y, minlength=10), np.full(10, 1000))


def test_cifar10_uint8_and_bunch(cifar10_root, cifar10_test):
    X, _ = cifar10_test
    b = load_cifar10(cifar10_root, train=False, verify=False, dtype="uint8", return_X_y=False)
    assert b.data.dtype == np.uint8 and b.data.shape == (10000, 3, 32, 32)
    np.testing.assert_allclose(b.data[:50].astype(np.float32) / 255, X[:50], atol=1e-7)
    assert b.classes == CIFAR10_CLASSES


def test_cifar10_train_channel_means(cifar10_root):
    X, y = load_cifar10(cifar10_root, train=True, verify=False, dtype="uint8")
    assert X.shape == (50000, 3, 32, 32)
    np.testing.assert_array_equal(np.bincount(y, minlength=10), np.full(10, 5000))
    means = X.mean(axis=(0, 2, 3)) / 255.0
    np.testing.assert_allclose(means, CIFAR10_MEAN, atol=2e-4)


def test_cifar10_verify_rejects_repacked_copy(cifar10_root):
    with pytest.raises(ValueError, match="verify=False"):
        load_cifar10(cifar10_root, train=False, verify=True)


def test_cifar10_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_cifar10(tmp_path, train=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(root=None), "root"),
        (dict(dtype="float64"), "dtype"),
        (dict(train="yes"), "train"),
        (dict(verify=None), "verify"),
    ],
)
def test_cifar10_bad_arguments(tmp_path, kwargs, match):
    args = dict(root=tmp_path, train=False, verify=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        load_cifar10(**args)


# ---------------------------------------------------------------------------------------------
# CIFAR-100 (small files in torchvision's layout, written here)


def _write_cifar100(root, n_train=12, n_test=5, seed=0):
    return write_cifar100(root, n_train=n_train, n_test=n_test, seed=seed)


@pytest.mark.parametrize("train, split", [(True, "train"), (False, "test")])
def test_cifar100_fine_labels(tmp_path, train, split):
    content = _write_cifar100(tmp_path)[split]
    X, y = load_cifar100(tmp_path, train=train, verify=False)
    n = len(content["fine_labels"])
    assert X.shape == (n, 3, 32, 32) and X.dtype == np.float32
    assert 0.0 <= X.min() and X.max() <= 1.0
    np.testing.assert_array_equal(np.round(X * 255).astype(np.uint8).reshape(n, -1), content["data"])
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, content["fine_labels"])


def test_cifar100_coarse_labels_and_names(tmp_path):
    content = _write_cifar100(tmp_path)
    b = load_cifar100(tmp_path, train=False, verify=False, label_type="coarse", return_X_y=False)
    np.testing.assert_array_equal(b.target, content["test"]["coarse_labels"])
    assert b.classes == tuple(f"coarse{i}" for i in range(20))
    fine = load_cifar100(tmp_path, train=True, verify=False, dtype="uint8", return_X_y=False)
    assert fine.classes[:2] == ("fine0", "fine1") and len(fine.classes) == 100
    assert fine.data.dtype == np.uint8


def test_cifar100_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_cifar100(tmp_path, verify=False)
    _write_cifar100(tmp_path)
    with pytest.raises(ValueError, match="md5"):
        load_cifar100(tmp_path, verify=True)
    with pytest.raises(ValueError, match="label_type"):
        load_cifar100(tmp_path, verify=False, label_type="medium")
