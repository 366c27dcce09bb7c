"""The embedded default data set: scikit-learn's bundled 8x8 handwritten digits."""
from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits as _sk_load_digits
from sklearn.utils import Bunch

__all__ = ["load_digits", "DIGITS_CLASSES"]

DIGITS_CLASSES = tuple(str(d) for d in range(10))


def load_digits(*, return_X_y: bool = True):
    """Load scikit-learn's bundled digits as an image batch ready for the estimator.

    The data ship with scikit-learn, so this works offline and is the default data set of the
    demo and of the fast tests.

    Parameters
    ----------
    return_X_y : bool, default=True
        Return ``(X, y)``; with ``False`` return a :class:`sklearn.utils.Bunch` with ``data``,
        ``target``, ``classes`` and ``DESCR``.

    Returns
    -------
    X : numpy.ndarray of shape (1797, 1, 8, 8), float32
        Grey levels divided by 16, so values lie in [0, 1].
    y : numpy.ndarray of shape (1797,), int64
        Digit labels 0..9.

    Examples
    --------
    >>> from attribshield.data import load_digits
    >>> X, y = load_digits()
    >>> X.shape, X.dtype, y.dtype
    ((1797, 1, 8, 8), dtype('float32'), dtype('int64'))
    >>> float(X.min()), float(X.max())
    (0.0, 1.0)
    """
    raw = _sk_load_digits()
    X = (np.asarray(raw.images, dtype=np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = np.asarray(raw.target, dtype=np.int64)
    if return_X_y:
        return X, y
    return Bunch(data=X, target=y, classes=DIGITS_CLASSES, DESCR=raw.DESCR)
