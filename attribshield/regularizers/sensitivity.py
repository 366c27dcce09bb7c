"""Penalise the model's sensitivity inside the spurious mask by finite differences."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._params import Options, Real
from ._common import _MaskedPenalty

__all__ = ["SpuriousSensitivityPenalty"]


class SpuriousSensitivityPenalty(_MaskedPenalty):
    """Finite-difference estimate of :class:`SpuriousGradientPenalty` (no double backprop).

    For each image a random direction ``v_i = M_i * u_i`` with ``u_i`` i.i.d. random signs
    (+1/-1 per pixel and channel) is drawn, and

    ``R = weight * mean_i ((CE(f(x_i + h v_i), y_i) - CE(f(x_i - h v_i), y_i)) / (2 h))^2``

    Parameters
    ----------
    weight : float >= 0, default=1.0
        Multiplier ``lambda`` of the penalty (0 switches it off at no cost).
    h : float > 0, default=0.01
        Step of the central difference, in pixel units of [0, 1] images (the probe moves
        every masked pixel by exactly ``h``; pixels are not clipped, so ``x +- h v`` may
        leave [0, 1] by ``h``).
    autocast : bool, default=False
        Let the estimator run the probes under its mixed-precision autocast (``bf16``) instead
        of fp32.  Cheaper, but the difference of two bf16 passes is rounded to 8 bits of
        mantissa: at ``h = 0.01`` the estimate correlates only about 0.8 with the fp32 one on
        a trained SmallCNN and inflates the penalty by 1.7x, while ``h = 0.04`` gives about
        0.98 and 1.02x (``benchmarks/penalty_precision.py``, ``docs/performance.md``).  Pair
        it with a larger ``h``.  Without an autocast in the estimator it changes nothing.
    random_state : None, int or generator, default=None
        Seeds the random signs.  A generator is created lazily per device and kept, so
        successive calls draw fresh (reproducible) directions.

    Notes
    -----
    Why this estimator: the central difference is ``<grad_x CE, v> + O(h^2)``, and for
    random signs ``E_u <g, M u>^2 = sum (M g)^2``, so in expectation (and as ``h -> 0``)
    this is exactly the :class:`SpuriousGradientPenalty` of the same ``weight``: the two are
    interchangeable and share their tuning.  A single direction per image makes it noisy
    (relative standard deviation up to ``sqrt(2)`` per image), which averaging over the batch
    and over training steps removes; a larger ``h`` also penalises curvature at that scale.

    Cost: one forward pass on the ``2N`` probe images (both probes in *one* call, so that
    BatchNorm in train mode normalises them with the same batch statistics; separate calls
    would turn the difference of two batch normalisations divided by ``h`` into noise) and
    one ordinary backward pass through it at the caller's ``backward()``, no second-order
    graph: about 2x a plain forward+backward of the batch, against about 3x for double
    backprop, and far less memory.  The model's mode is left as the caller set it.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> X, y = torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0])
    >>> pen = SpuriousSensitivityPenalty(random_state=0).penalty(model, X, y, torch.ones(3, 1, 2, 2))
    >>> pen.ndim, bool(pen >= 0), pen.requires_grad
    (0, True, True)
    """

    requires_mask = True  # declared capability: penalises inside the spurious mask

    def __init__(self, weight=1.0, h=0.01, autocast=False, random_state=None):
        self.weight = weight
        self.h = h
        self.autocast = autocast
        self.random_state = random_state

    _parameter_constraints = {**_MaskedPenalty._parameter_constraints, "h": [Real(0, None, closed="neither")],
                              "autocast": [Options(False, True)]}

    @property
    def autocast_safe(self) -> bool:
        """Declared capability: the estimator may run :meth:`penalty` under its autocast."""
        return bool(self.autocast)

    def penalty(self, model, X, y, mask) -> torch.Tensor:
        """Return the penalty for a batch.

        Arguments, result and errors as in :meth:`SpuriousGradientPenalty.penalty` (whose
        estimate this is): ``mask`` marks the spurious pixels, the ones probed here; the result
        is a float32 scalar >= 0, differentiable with respect to the parameters, and a zero
        that still supports ``backward()`` when ``weight == 0`` or the mask is empty.
        """
        module, X, y, mask, empty = self._prepare(model, X, y, mask)
        if empty:
            return self._zero(X)
        h = float(self.h)
        gen = self._generator(X.device)
        u = torch.randint(0, 2, X.shape, generator=gen, device=X.device).to(X.dtype).mul_(2).sub_(1)
        v = (mask * u).mul_(h)
        probes = torch.cat([X + v, X - v])
        with torch.enable_grad():
            logits = module(probes).float()
            ce = F.cross_entropy(logits, torch.cat([y, y]), reduction="none")
            n = X.shape[0]
            diff = (ce[:n] - ce[n:]) / (2.0 * h)
            return float(self.weight) * diff.pow(2).mean()
