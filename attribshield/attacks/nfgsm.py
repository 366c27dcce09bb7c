"""N-FGSM: a signed-gradient step from a strongly noised point, without projection."""
from __future__ import annotations

from .._params import Real
from ._base import GradientAttack
from ._threat import random_start, step


class NFGSM(GradientAttack):
    """Noisy FGSM (N-FGSM), the single-step attack of "Make some noise" adversarial training.

    ``X_adv = clip_[0,1](X_0 + step_scale * eps * sign(grad_x CE(f(X_0), y)))`` with the noisy
    start ``X_0 = clip_[0,1](X + U[-noise_scale * eps, noise_scale * eps]^d)``.

    Unlike :class:`FGSM` with ``random_start=True`` (FGSM-RS), the noise is twice as wide as
    the threat model by default and the result is **not** projected back onto the eps-ball:
    ``||X_adv - X||_inf`` may reach ``(noise_scale + step_scale) * eps``.  That larger,
    noisier perturbation is what avoids catastrophic overfitting of single-step adversarial
    training at large ``eps`` without the cost of GradAlign's double backprop.

    Parameters
    ----------
    eps : float >= 0, default=8/255
        Radius of the Linf threat model the training targets; the noise and the step are
        multiples of it.  ``0`` returns a copy of ``X``.
    noise_scale : float >= 0, default=2.0
        Half-width of the uniform noise in units of ``eps`` (``k`` in the paper).  ``0`` makes
        the attack a plain FGSM step of ``step_scale * eps``.
    step_scale : float > 0, default=1.0
        Length of the signed-gradient step in units of ``eps`` (``alpha = step_scale * eps``).
    random_state : int, numpy or torch generator, or None, default=None
        Seed of the noise (``None``: torch's global generator).  A generator is kept per
        device, so successive calls draw fresh but reproducible noise.

    Attributes
    ----------
    norm : str
        Always ``"Linf"`` (class attribute; not a parameter).

    See Also
    --------
    FGSM : With ``random_start=True``, the FGSM-RS attack of "fast" adversarial training.
    attribshield.regularizers.GradAlign : The other remedy of catastrophic overfitting.

    Notes
    -----
    Shapes: ``X`` is ``(N, C, H, W)`` in [0, 1]; ``X_adv`` has the same shape, dtype and
    device, lies in [0, 1] and satisfies
    ``||X_adv - X||_inf <= (noise_scale + step_scale) * eps``.

    This is a *training* attack: its examples leave the eps-ball, so it is not a measure of
    robustness at ``eps``; evaluate with :class:`PGD`.  The noise is clipped to [0, 1] before
    the gradient is taken, as in the authors' code.  Cost: one forward and one backward
    pass, as FGSM.

    References
    ----------
    de Jorge, Bibi, Volpi, Sanyal, Torr, Rogez and Dokania, "Make some noise: reliable and
    efficient single-step adversarial training", NeurIPS 2022.

    Examples
    --------
    >>> import torch
    >>> from attribshield.attacks import NFGSM
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> X, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    >>> X_adv = NFGSM(eps=0.1, random_state=0).perturb(model, X, y)
    >>> bool(((X_adv - X).abs() <= 3 * 0.1 + 1e-6).all()), bool(((0 <= X_adv) & (X_adv <= 1)).all())
    (True, True)
    """

    norm = "Linf"

    def __init__(self, eps=8 / 255, noise_scale=2.0, step_scale=1.0, random_state=None):
        self.eps = eps
        self.noise_scale = noise_scale
        self.step_scale = step_scale
        self.random_state = random_state

    _parameter_constraints = {**GradientAttack._parameter_constraints, "noise_scale": [Real(0, None)],
                              "step_scale": [Real(0, None, closed="neither")]}

    def _attack(self, module, X, y, target):
        eps = float(self.eps)
        X0 = X
        if self.noise_scale > 0:
            noise = random_start(X, float(self.noise_scale) * eps, "Linf", self._generator(X.device))
            X0 = (X + noise).clamp(0, 1)
        _, grad = self._loss_and_grad(module, X0, y, target)
        return (X0 + step(grad, float(self.step_scale) * eps, "Linf")).clamp(0, 1)
