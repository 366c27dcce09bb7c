"""Small helpers shared by the package (devices, batching, validation of common arguments)."""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import torch

from ._params import Integral, Real, check_param
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


def check_batch_size(batch_size, owner="attribshield") -> int:
    """``batch_size`` as an int; ``ValueError`` (naming ``owner``) unless an integer >= 1."""
    check_param(owner, "batch_size", batch_size, [Integral(1, None)])
    return int(batch_size)


def check_eps(eps, name="eps", owner="attribshield") -> float:
    """``eps`` as a float; ``ValueError`` (naming ``owner`` and ``name``) unless finite and >= 0."""
    check_param(owner, name, eps, [Real(0, None)])
    return float(eps)


def check_method(obj, name: str, method: str, args: str, *, optional: bool = False):
    """Return ``obj``; ``ValueError`` unless it has ``method`` (or is ``None`` and ``optional``).

    ``args`` only spells the expected call in the message: ``{name} must have a
    {method}({args}) method``.
    """
    if not (optional and obj is None) and not hasattr(obj, method):
        raise ValueError(f"{name} must have a {method}({args}) method, got {type(obj).__name__}")
    return obj


def numpy_rng(random_state) -> np.random.Generator:
    """A ``numpy.random.Generator`` from ``random_state``.

    A Generator is returned as is; a RandomState seeds a new one from one draw; ``None``, a
    SeedSequence or an int >= 0 seeds a new one.  Anything else raises ``ValueError``.
    """
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    if random_state is None or isinstance(random_state, np.random.SeedSequence):
        return np.random.default_rng(random_state)
    if not Integral(0, None)(random_state):
        raise ValueError(f"random_state must be None, an int >= 0 or a numpy Generator, got {random_state!r}")
    return np.random.default_rng(int(random_state))


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


def to_bits(ok) -> str:
    """Per-image correctness as a string of ``0``/``1`` (compact, JSON-safe report records)."""
    return "".join("1" if v else "0" for v in np.asarray(to_numpy(ok), dtype=bool).reshape(-1).tolist())


def from_bits(bits: str) -> np.ndarray:
    """The boolean array of a :func:`to_bits` string."""
    return np.frombuffer(bits.encode("ascii"), dtype=np.uint8) == ord("1")


def to_numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
