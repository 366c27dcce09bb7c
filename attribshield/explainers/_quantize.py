"""Post-training int8 quantization of a classifier for LIME's forward passes (CPU only).

LIME only ever runs a frozen model forward on many perturbed copies of a few images, which
is the textbook case for static post-training quantization: the activation ranges are
calibrated on perturbed images of the kind that will be explained, the weights are
quantized per channel, and the convolutions run as int8 dot products (AVX-512 VNNI on the
project's CPU).  The copy computes an approximation of the model; how close the resulting
LIME weights stay to the exact model's is measured in ``docs/performance.md``.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch

__all__ = ["quantize_int8", "int8_available"]


def _engine() -> str | None:
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "onednn", "qnnpack"):
        if name in engines:
            return name
    return None


def int8_available() -> bool:
    """Whether this PyTorch build has a CPU int8 backend for :func:`quantize_int8`."""
    return _engine() is not None


@contextlib.contextmanager
def quantized_engine():
    """Select the best int8 CPU engine for the duration of the block (a global setting)."""
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = _engine()
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def quantize_int8(module: torch.nn.Module, calibration: torch.Tensor, batch_size: int = 256) -> torch.nn.Module:
    """A statically quantized int8 copy of ``module`` (eval mode, CPU), calibrated on images.

    Conv / BatchNorm / ReLU runs are fused, convolution weights are quantized per output
    channel (symmetric) and activation ranges are the min / max observed on ``calibration``
    (no clipping: LIME's perturbed images put some activations outside the clean images'
    bulk, and a histogram observer that clips them doubled the error of the LIME weights
    in our measurement).  ``nn.Linear`` layers stay in float: in a CNN they are a small
    share of the work, and keeping the classifier in float keeps the logits, hence the
    probabilities LIME regresses on, free of output quantization noise (it halved the
    largest probability error).  The copy takes and returns float tensors; ``module``
    itself is not modified.

    Parameters
    ----------
    module : torch.nn.Module
        A float model that ``torch.fx`` can trace symbolically (no data-dependent Python
        control flow).
    calibration : torch.Tensor of shape (B, C, H, W)
        Representative inputs, e.g. perturbed copies of the images to explain.
    batch_size : int, default=256
        Calibration batch size.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ValueError
        No int8 backend in this PyTorch build, or a module that cannot be traced.

    Examples
    --------
    >>> import torch
    >>> from attribshield.models import SmallCNN
    >>> m = SmallCNN().eval()
    >>> x = torch.rand(64, 3, 32, 32)
    >>> q = quantize_int8(m, x)
    >>> q(x[:2]).shape
    torch.Size([2, 10])
    """
    if _engine() is None:
        raise ValueError("this PyTorch build has no int8 CPU backend (quantize='int8' is unavailable)")
    from torch.ao.quantization import MinMaxObserver, QConfig, QConfigMapping, default_per_channel_weight_observer
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = copy.deepcopy(module).eval().cpu()
    calibration = calibration.detach().cpu().float()
    with warnings.catch_warnings(), quantized_engine():
        # torch.ao.quantization announces its successor (torchao) on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            # 8-bit activations need VNNI's int32 accumulation; without it (AVX2 fbgemm) the
            # u8 x s8 products can saturate, so use 7 bits there as PyTorch's own default does
            vnni = getattr(torch.cpu, "_is_vnni_supported", lambda: False)()
            qconfig = QConfig(activation=MinMaxObserver.with_args(reduce_range=not vnni),
                              weight=default_per_channel_weight_observer)
            mapping = QConfigMapping().set_global(qconfig).set_object_type(torch.nn.Linear, None)
            prepared = prepare_fx(model, mapping, example_inputs=(calibration[:1],))
        except Exception as exc:  # torch.fx raises many types for untraceable code
            raise ValueError(
                f"quantize='int8' needs a module torch.fx can trace; {type(module).__name__} "
                f"could not be traced: {exc}"
            ) from exc
        with torch.no_grad():
            for a in range(0, calibration.shape[0], int(batch_size)):
                prepared(calibration[a : a + int(batch_size)])
            return convert_fx(prepared)
