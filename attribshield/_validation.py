"""Input validation shared by the estimator, the components and the evaluation functions.

Every check raises ``ValueError`` naming the problem *before* any heavy work starts.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["check_images", "check_labels", "check_consistent_length"]


def _describe(x) -> str:
    return f"{type(x).__name__} of shape {tuple(getattr(x, 'shape', ()))}"


def check_images(X, *, name: str = "X", ndim: int = 4, dtype=torch.float32, value_range=(0.0, 1.0)) -> torch.Tensor:
    """Validate an image batch and return it as a float tensor in [0, 1].

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (N, C, H, W)
        Float values in [0, 1], or ``uint8`` values in 0..255 (scaled by 1/255).
    name : str, default="X"
        Name used in error messages.
    ndim : int, default=4
        Required number of dimensions.
    dtype : torch.dtype, default=torch.float32
        Floating dtype of the result (float64 inputs keep float64).
    value_range : tuple of float or None, default=(0.0, 1.0)
        Allowed range of float values; ``None`` skips the range check.

    Returns
    -------
    X : torch.Tensor
        Same device as the input when it was a tensor, else CPU.

    Raises
    ------
    ValueError
        Wrong number of dimensions, empty batch, non-numeric or boolean dtype, non-finite
        values, or float values outside [0, 1].
    """
    t = as_tensor(X, name=name)
    if t is None:
        pass
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must be float in [0, 1] or uint8, got dtype={t.dtype}")
    if t.ndim != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions (N, C, H, W), got {t.ndim} dimensions with shape "
            f"{tuple(t.shape)}. Reshape your data, or set input_shape for 2-D (N, features) input"
        )
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty: got 0 samples (shape {tuple(t.shape)})")
    if any(s == 0 for s in t.shape[1:]):
        raise ValueError(f"{name} has an empty dimension: shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.to(dtype) / 255.0
    if not t.is_floating_point():
        raise ValueError(
            f"{name} must be float in [0, 1] or uint8 in 0..255, got integer dtype {t.dtype}; "
            "convert with X.astype('float32') / 255 if these are pixel values"
        )
    if t.dtype != torch.float64:
        t = t.to(dtype)
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {n_bad} non-finite values (NaN or inf)")
    if value_range is None:
        return t
    lo, hi = float(t.min()), float(t.max())
    vlo, vhi = value_range
    if lo < vlo or hi > vhi:
        what = "[0, 1]" if (vlo, vhi) == (0.0, 1.0) else f"[{vlo}, {vhi}]"
        raise ValueError(
            f"{name} values must lie in {what}, got min={lo:.4g} max={hi:.4g}; "
            "scale images to [0, 1] (normalisation belongs inside the module)"
        )
    return t


def as_tensor(X, *, name: str = "X") -> torch.Tensor:
    """Convert an array-like to a tensor without copying where possible; clear errors."""
    if isinstance(X, torch.Tensor):
        return X.detach()
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise ValueError(f"Sparse data is not supported: {name} must be a dense array of images")
    try:
        arr = np.asarray(X)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} could not be converted to an array: {exc}") from exc
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must hold numbers: argument must be a string or a number ({exc})") from exc
    if arr.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} has dtype {arr.dtype}")
    if arr.dtype.kind not in "uifb":
        raise ValueError(f"{name} must hold numbers (float in [0, 1] or uint8), got dtype={arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def check_labels(y, n_samples: int | None = None, *, name: str = "y", n_classes: int | None = None) -> torch.Tensor:
    """Validate integer class labels and return them as a 1-D ``int64`` tensor.

    Raises ``ValueError`` for non-integer, non-finite, empty, multi-dimensional labels, a
    length that does not match ``n_samples``, or labels outside ``0..n_classes-1``.
    """
    if y is None:
        raise ValueError(f"requires y to be passed, but the target {name} is None")
    if isinstance(y, torch.Tensor):
        t = y.detach()
        if t.is_floating_point():
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains non-finite values")
            if not bool((t == t.round()).all()):
                raise ValueError(f"{name} must hold integer class labels, got non-integer floats")
            t = t.long()
        elif t.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer class labels, got dtype=bool")
    else:
        arr = np.asarray(y)
        if arr.dtype.kind == "c":
            raise ValueError(f"Complex data not supported: {name} has dtype {arr.dtype}")
        if arr.dtype == object:
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must hold integer class labels, got dtype=object") from None
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} contains non-finite values")
            if not np.all(arr == np.round(arr)):
                raise ValueError(f"{name} must hold integer class labels, got non-integer floats "
                                 "(Unknown label type: continuous)")
            arr = arr.astype(np.int64)
        elif arr.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integer class labels, got dtype={arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr).astype(np.int64))
    if t.ndim == 2 and t.shape[1] == 1:
        import warnings

        from sklearn.exceptions import DataConversionWarning

        warnings.warn(f"A column-vector {name} was passed when a 1d array was expected; it was raveled",
                      DataConversionWarning, stacklevel=3)
        t = t.ravel()
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: got 0 labels")
    if n_samples is not None and t.numel() != n_samples:
        raise ValueError(f"X and {name} have different lengths: {n_samples} images but {t.numel()} labels")
    if bool((t < 0).any()):
        raise ValueError(f"{name} contains negative labels (min {int(t.min())})")
    if n_classes is not None and bool((t >= n_classes).any()):
        raise ValueError(f"{name} contains labels >= n_classes={n_classes} (max {int(t.max())})")
    return t


def check_consistent_length(*arrays) -> None:
    lengths = [len(a) for a in arrays if a is not None]
    if len(set(lengths)) > 1:
        raise ValueError(f"inputs have inconsistent numbers of samples: {lengths}")

