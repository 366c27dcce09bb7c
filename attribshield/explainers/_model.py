"""The explained classifier: where it lives, what it computes in, and how it is run.

Helpers every explainer shares: the module's device and floating dtype, and the checked images
moved there (:func:`_module_and_images`); the forward pass with the configured memory format
and autocast (:func:`_forward_logits`); one checked forward pass that turns a module's
rejection of the input into a ``ValueError`` (:func:`_checked_logits`); and
:func:`fuse_conv_bn`, an eval-mode copy of the module with its ``Conv2d -> BatchNorm2d`` pairs
folded.  The int8 copy is built by :func:`~attribshield.explainers.quantize_int8`
(``_quantize.py``).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .._utils import module_device
from .._validation import check_images
from ..base import get_module

__all__ = ["fuse_conv_bn"]


def _is_int(v) -> bool:
    """An integer (Python or NumPy), not a bool: e.g. one target class for every image."""
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def _module_device(module: torch.nn.Module, X: torch.Tensor) -> torch.device:
    """Device of the module's first parameter or buffer; ``X``'s for a module without any."""
    return module_device(module, X.device)


def _module_dtype(module: torch.nn.Module, X: torch.Tensor) -> torch.dtype:
    """Floating dtype of the module's parameters (float64 modules get float64 inputs)."""
    for t in module.parameters():
        if t.is_floating_point():
            return t.dtype
    return X.dtype


def _module_and_images(model, X):
    """``(module, X, device)``: the module behind ``model``, and the checked images ``X`` on its
    device in its floating dtype."""
    module = get_module(model)
    X = check_images(X)
    device = _module_device(module, X)
    return module, X.to(device=device, dtype=_module_dtype(module, X)), device


def _forward_logits(module: torch.nn.Module, X: torch.Tensor, *, channels_last=False, autocast=None) -> torch.Tensor:
    """Logits ``(B, K)`` of a batch, with ``X`` in ``channels_last`` memory format if asked and
    under ``torch.autocast`` in ``autocast`` ("bf16" or "fp16"; ``None``: none)."""
    if channels_last:
        X = X.contiguous(memory_format=torch.channels_last)
    if autocast is not None:
        dt = torch.bfloat16 if autocast == "bf16" else torch.float16
        with torch.autocast(device_type=X.device.type, dtype=dt):
            return module(X)
    return module(X)


def _checked_logits(forward, X: torch.Tensor) -> torch.Tensor:
    """``forward(X)`` (a module or any callable returning logits), checked.

    Raises
    ------
    ValueError
        The module raised on ``X`` (a wrong channel count or image size, typically), or it did
        not return logits of shape ``(B, K)``.
    """
    try:
        logits = forward(X)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        c, h, w = X.shape[1:]
        raise ValueError(
            f"the module rejected images of shape (N, {c}, {h}, {w}) (wrong channel count or size?): {exc}"
        ) from exc
    if logits.ndim != 2:
        raise ValueError(f"the module must return logits of shape (B, K), got shape {tuple(logits.shape)}")
    return logits


def fuse_conv_bn(module: torch.nn.Module, channels_last: bool = False) -> torch.nn.Module:
    """An eval-mode copy of ``module`` with each ``Conv2d -> BatchNorm2d`` pair folded.

    Pairs are found inside ``nn.Sequential`` containers (at any depth): a ``Conv2d``
    immediately followed by a ``BatchNorm2d`` with running statistics becomes one ``Conv2d``
    whose weights and bias absorb the normalisation, and the ``BatchNorm2d`` becomes
    ``nn.Identity``.  The result computes the same function as ``module.eval()`` up to
    float rounding.  ``module`` itself is not modified.

    Parameters
    ----------
    module : torch.nn.Module
    channels_last : bool, default=False
        Also store the copy's 4-D parameters in ``torch.channels_last`` format.

    Returns
    -------
    torch.nn.Module
        The folded copy, in eval mode.

    Examples
    --------
    >>> import torch
    >>> from attribshield.models import SmallCNN
    >>> m = SmallCNN().eval()
    >>> f = fuse_conv_bn(m)
    >>> x = torch.rand(2, 3, 32, 32)
    >>> torch.allclose(m(x), f(x), atol=1e-4)
    True
    >>> sum(isinstance(l, torch.nn.BatchNorm2d) for l in f.modules())
    0
    """
    fused = copy.deepcopy(module).eval()
    folded = []
    for prefix, seq in [(n, m) for n, m in fused.named_modules() if isinstance(m, torch.nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if (type(conv) is torch.nn.Conv2d and type(bn) is torch.nn.BatchNorm2d
                    and bn.track_running_stats and bn.running_mean is not None):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = torch.nn.Identity()
                folded.append((f"{prefix}.{a}" if prefix else a, f"{prefix}.{b}" if prefix else b))
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    fused._folded_pairs = tuple(folded)  # what refold_conv_bn recomputes
    return fused


def refold_conv_bn(fused: torch.nn.Module, module: torch.nn.Module) -> torch.nn.Module:
    """Refresh, in place, a copy made by :func:`fuse_conv_bn` from ``module``'s current weights.

    What a training loop calls on every step instead of a new :func:`fuse_conv_bn`: the same
    folding from the same tensors (the result equals a fresh fold), without copying the
    module (a deep copy costs tens of milliseconds of Python per call).  ``fused`` keeps its
    memory format.

    Raises
    ------
    ValueError
        ``fused`` was not made by :func:`fuse_conv_bn`, or not from a module shaped like ``module``.
    """
    pairs = getattr(fused, "_folded_pairs", None)
    if pairs is None:
        raise ValueError("refold_conv_bn refreshes a copy made by fuse_conv_bn; got another module")
    live = dict(module.named_modules())
    params, buffers = dict(module.named_parameters()), dict(module.named_buffers())
    out = dict(fused.named_modules())
    done = set()
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv, bn, dst = live.get(conv_name), live.get(bn_name), out.get(conv_name)
            if not (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)
                    and isinstance(dst, torch.nn.Conv2d)):
                raise ValueError(f"module has no Conv2d -> BatchNorm2d pair at {conv_name!r} / {bn_name!r}")
            scale = torch.rsqrt(bn.running_var + bn.eps)
            shift = -bn.running_mean * scale
            if bn.affine:
                scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
            dst.weight.copy_(conv.weight * scale.reshape(-1, *([1] * (conv.weight.ndim - 1))))
            bias = conv.bias * scale if conv.bias is not None else 0.0
            dst.bias.copy_(bias + shift)
            done.add(conv_name)
        for name, p in fused.named_parameters():
            if name.rpartition(".")[0] in done:
                continue
            if name not in params:
                raise ValueError(f"module has no parameter {name!r}")
            p.copy_(params[name])
        for name, b in fused.named_buffers():
            if name in buffers:
                b.copy_(buffers[name])
    return fused
