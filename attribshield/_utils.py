"""Small helpers shared by the package (devices, batching, validation of common arguments)."""
from __future__ import annotations

import contextlib
import copy
import io
import numbers

import numpy as np
import torch

from ._validation import check_images, check_labels
from .base import get_module


def module_device(module: torch.nn.Module, default=None) -> torch.device:
    """Device of the module's first parameter or buffer (``default`` or CPU if it has none)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device(default if default is not None else "cpu")


def prepare(model, X, y):
    """Validate ``model, X, y`` and return ``(module, X, y, device)``, tensors on the device."""
    module = get_module(model)
    Xt = check_images(X)
    yt = check_labels(y, Xt.shape[0])
    device = module_device(module, Xt.device)
    return module, Xt.to(device), yt.to(device), device


def check_flag(value, name) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def channels_last_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``module`` whose 4-D parameters and buffers are in ``channels_last``.

    The copy computes the same function (up to float rounding: convolution kernels differ by
    memory format) and keeps every submodule's train/eval flag; ``module`` is not modified.
    Inputs can stay in the default format: the first convolution's output follows its
    weights' format, and so does the input gradient.
    """
    return copy.deepcopy(module).to(memory_format=torch.channels_last)


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return int(batch_size)


def check_eps(eps, name="eps") -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not np.isfinite(eps) or eps < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {eps!r}")
    return float(eps)


def batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def predict(module: torch.nn.Module, X: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Predicted labels ``(N,)`` (the caller puts the module in eval mode)."""
    out = [module(X[s]).argmax(dim=1) for s in batches(X.shape[0], batch_size)]
    return torch.cat(out)


@contextlib.contextmanager
def quiet():
    """Silence third-party prints (torchattacks prints when it cannot find a device)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def to_numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
