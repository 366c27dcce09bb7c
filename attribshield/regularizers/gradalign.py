"""GradAlign: align the input gradients at a point and at a random neighbour."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._params import Real, validate_params
from ..base import Component
from ._common import _check_batch

__all__ = ["GradAlign"]

def _out_dtype(X: torch.Tensor) -> torch.dtype:
    """float32 for half and single precision inputs, float64 for float64 inputs."""
    return torch.promote_types(X.dtype, torch.float32)


def _max_abs(g: torch.Tensor) -> torch.Tensor:
    """Detached per-row ``max |g|``, shaped ``(N, 1)``; 1 for an all-zero row."""
    m = g.detach().abs().amax(1, keepdim=True)
    return torch.where(m > 0, m, torch.ones_like(m))


def _rng_state(device: torch.device):
    """The global RNG state(s) a forward pass on ``device`` may draw from (dropout)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state, device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


class GradAlign(Component):
    """Gradient alignment penalty against catastrophic overfitting of single-step training.

    ``R = weight * mean_i (1 - cos(grad_x CE(f(x_i), y_i), grad_x CE(f(x_i + delta_i), y_i)))``
    with ``delta_i ~ U[-eps, eps]^d`` (and ``x_i + delta_i`` clipped to [0, 1]).

    The penalty is small where the loss is locally linear in the input, which is what makes
    a single FGSM step a good attack; FGSM training without it can collapse at large ``eps``
    ("catastrophic overfitting").  Unlike the sensitivity penalties it needs no spurious
    mask.

    Parameters
    ----------
    weight : float >= 0, default=0.2
        Multiplier ``lambda`` of the penalty (0 switches it off at no cost).  The authors use
        0.2 for CIFAR-10 at ``eps = 8/255`` and larger values for larger ``eps``.
    eps : float >= 0, default=8/255
        Half-width of the uniform noise, in pixel units of [0, 1] images; normally the
        ``eps`` of the attack it accompanies.  0 makes the penalty exactly 0.
    random_state : int, numpy or torch generator, or None, default=None
        Seed of the noise (``None``: torch's global generator).  A generator is kept per
        device, so successive calls draw fresh but reproducible noise.

    Attributes
    ----------
    requires_mask : bool
        ``False`` (class attribute): ``penalty`` ignores its ``mask`` argument, so the
        estimator need not find spurious segments for it.

    See Also
    --------
    SpuriousGradientPenalty : Penalises input gradients on masked (spurious) pixels.
    attribshield.attacks.NFGSM : The other remedy of catastrophic overfitting (no extra cost).

    Notes
    -----
    Value: each term ``1 - cos`` lies in [0, 2], so ``0 <= R <= 2 * weight``.  Two conventions
    make it well defined everywhere: if both gradients of an image are zero (a model that
    ignores its input) the term is 0; if exactly one is zero, the cosine is taken as 0 (term
    1).  The cosine is computed on each gradient divided by its (detached) largest entry,
    which changes neither the value nor its derivative but avoids float32 underflow when the
    loss is saturated (an implementation with ``F.cosine_similarity``'s ``eps=1e-8`` reads
    tiny gradients as misaligned).

    Differentiability: both input gradients are taken with ``create_graph=True`` (double
    backprop), and the penalty's gradient with respect to the parameters is exact.  The
    authors' code detaches the clean gradient and differentiates through the noisy one only
    (somewhat cheaper).  Cost: two forward passes, two backward passes that build graphs
    and, at the caller's ``backward()``, backward passes through both (about 6x a plain
    forward+backward of the batch).

    Mode: the model's mode is left as the caller set it, and every submodule's flag is
    unchanged after the call.  In train mode both forward passes draw the *same* dropout
    masks (the global RNG state is replayed for the second pass, on CPU and CUDA), so the
    penalty measures the nonlinearity of the network rather than the dropout noise; BatchNorm
    layers use each pass's own batch statistics and update their running statistics twice.

    References
    ----------
    Andriushchenko and Flammarion, "Understanding and improving fast adversarial training",
    NeurIPS 2020.

    Examples
    --------
    >>> import torch
    >>> from attribshield.regularizers import GradAlign
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(),
    ...                             torch.nn.Linear(8, 2))
    >>> X, y = torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0])
    >>> pen = GradAlign(weight=0.2, eps=0.1, random_state=0).penalty(model, X, y)
    >>> pen.ndim, bool(0 <= pen <= 2 * 0.2), pen.requires_grad
    (0, True, True)
    >>> GradAlign(eps=0.0).penalty(model, X, y).item()
    0.0
    """

    requires_mask = False

    def __init__(self, weight=0.2, eps=8 / 255, random_state=None):
        self.weight = weight
        self.eps = eps
        self.random_state = random_state

    _parameter_constraints = {"weight": [Real(0, None)], "eps": [Real(0, None)]}

    def _validate_params(self) -> None:
        validate_params(self)

    @staticmethod
    def _zero(X: torch.Tensor) -> torch.Tensor:
        # a leaf that requires grad: backward() works even when the penalty is the whole loss
        return torch.zeros((), dtype=_out_dtype(X), device=X.device, requires_grad=True)

    @staticmethod
    def _input_grad(module, X, y):
        """Per-image input gradient of CE (summed over the batch), flattened; ``None`` if unused."""
        X = X.detach().requires_grad_(True)
        loss = F.cross_entropy(module(X).to(_out_dtype(X)), y, reduction="sum")
        if not loss.requires_grad:  # nothing in the model depends on X or on parameters
            return None
        (g,) = torch.autograd.grad(loss, X, create_graph=True, allow_unused=True)
        return None if g is None else g.flatten(1).to(_out_dtype(X))

    def penalty(self, model, X, y, mask=None) -> torch.Tensor:
        """Return the penalty for a batch.

        Parameters
        ----------
        model : torch.nn.Module or fitted RobustAttributionClassifier
            Returns logits ``(N, K)``.  Its mode is not changed.
        X : torch.Tensor of shape (N, C, H, W)
            Clean images in [0, 1] (on the model's device).
        y : torch.Tensor of shape (N,)
            True labels.
        mask : ignored, default=None
            Accepted so that every regularizer has the signature
            ``penalty(model, X, y, mask)``; GradAlign does not use it (see
            :attr:`requires_mask`).

        Returns
        -------
        torch.Tensor, scalar, in [0, 2 * weight]
            float32 (float64 for float64 inputs).
            Differentiable with respect to the parameters; a zero that still supports
            ``backward()`` when ``weight == 0``, ``eps == 0`` or the model ignores ``X``.

        Raises
        ------
        ValueError
            Invalid ``weight`` or ``eps``; ``X`` not a float tensor ``(N, C, H, W)``; ``y``
            not integer labels of shape ``(N,)``.
        """
        module, X, y = _check_batch(self, model, X, y)
        if float(self.weight) == 0.0 or float(self.eps) == 0.0 or X.shape[0] == 0:
            return self._zero(X)
        u = torch.rand(X.shape, generator=self._generator(X.device), device=X.device, dtype=X.dtype)
        X_noisy = (X + (2 * u - 1) * float(self.eps)).clamp(0, 1)
        with torch.enable_grad():
            state = _rng_state(X.device)
            g_clean = self._input_grad(module, X, y)
            _set_rng_state(state, X.device)  # same dropout masks in the second pass
            g_noisy = self._input_grad(module, X_noisy, y)
            if g_clean is None or g_noisy is None:  # the output does not depend on X
                return self._zero(X)
            # scale-free cosine: divide by the detached max |entry| (no underflow; same value)
            a, b = g_clean / _max_abs(g_clean), g_noisy / _max_abs(g_noisy)
            na, nb = (a * a).sum(1), (b * b).sum(1)  # >= 1 unless the gradient is exactly 0
            cos = (a * b).sum(1) / (na * nb).clamp_min(1.0).sqrt()
            cos = torch.where((na == 0) & (nb == 0), torch.ones_like(cos), cos)
            per_image = (1.0 - cos).clamp(0.0, 2.0)
            return float(self.weight) * per_image.mean()
