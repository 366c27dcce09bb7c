"""Base class of the gradient attacks."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._params import Integral, Real, validate_params
from .._validation import check_images
from ..base import Component, eval_mode, get_module
from ._threat import check_norm


class GradientAttack(Component):
    """Shared machinery: validation, eval mode, input gradients, [0, 1] clipping.

    Subclasses implement :meth:`_attack` on validated tensors.  ``perturb`` puts the module in
    eval mode for the attack and restores every submodule's flag afterwards; gradients are
    taken with ``torch.autograd.grad`` with respect to the input only, so the parameters'
    ``.grad`` fields are never touched.

    Subclasses extend :attr:`_parameter_constraints` with their own hyperparameters
    (``{**GradientAttack._parameter_constraints, "beta": [Real(0, None)]}``); a listed name
    the attack does not have (FGSM has no ``steps``) is skipped.
    """

    _parameter_constraints = {
        "eps": [Real(0, None)],
        "steps": [Integral(1, None)],
        "step_size": [None, Real(0, None, closed="neither")],
        "restarts": [Integral(1, None)],
    }

    def _validate_params(self) -> None:
        validate_params(self, {k: c for k, c in self._parameter_constraints.items() if hasattr(self, k)})
        check_norm(getattr(self, "norm", "Linf"))

    # -- public --------------------------------------------------------------------------
    def perturb(self, model, X, y, *, target=None, **kwargs):
        """Return adversarial examples for ``X``.

        Parameters
        ----------
        model : torch.nn.Module or fitted RobustAttributionClassifier
            Returns logits of shape ``(N, n_classes)``.
        X : torch.Tensor of shape (N, C, H, W)
            Inputs in [0, 1], on the model's device.
        y : torch.Tensor of shape (N,)
            True labels (untargeted attack: the loss on ``y`` is increased).
        target : torch.Tensor of shape (N,), optional
            Target labels: when given, the attack is targeted and decreases the loss on
            ``target`` instead.

        Returns
        -------
        X_adv : torch.Tensor
            Same shape, dtype and device as ``X``, inside the threat model and [0, 1].
            ``X`` itself is not modified.
        """
        self._validate_params()
        module = get_module(model)
        X = check_images(X) if not isinstance(X, torch.Tensor) else X
        if X.ndim != 4:
            raise ValueError(f"X must have 4 dimensions (N, C, H, W), got shape {tuple(X.shape)}")
        if not X.is_floating_point():
            raise ValueError(f"X must be a float tensor in [0, 1], got dtype {X.dtype}")
        y = torch.as_tensor(y, device=X.device).long()
        if y.shape != (X.shape[0],):
            raise ValueError(f"y must have shape ({X.shape[0]},), got {tuple(y.shape)}")
        if target is not None:
            target = torch.as_tensor(target, device=X.device).long()
            if target.shape != (X.shape[0],):
                raise ValueError(f"target must have shape ({X.shape[0]},), got {tuple(target.shape)}")
        return_grad = bool(kwargs.pop("return_grad", False))
        if return_grad and not getattr(self, "provides_input_grad", False):
            raise ValueError(f"{type(self).__name__} does not provide its input gradient (return_grad=True)")
        if self.eps == 0:
            return (X.detach().clone(), None) if return_grad else X.detach().clone()
        if return_grad:
            kwargs["return_grad"] = True
        with eval_mode(module), torch.enable_grad():
            out = self._attack(module, X.detach(), y, target, **kwargs)
        if return_grad:
            return out[0].detach(), out[1].detach()
        return out.detach()

    # -- helpers for subclasses ------------------------------------------------------------
    @staticmethod
    def _loss_and_grad(module, X_adv, y, target):
        """Per-batch summed cross-entropy and its gradient in the ascent direction."""
        X_adv = X_adv.detach().requires_grad_(True)
        logits = module(X_adv)
        if target is None:
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
        else:
            loss = -F.cross_entropy(logits.float(), target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, X_adv)
        return logits.detach(), grad

    @staticmethod
    def _success(logits, y, target):
        pred = logits.argmax(dim=1)
        return pred != y if target is None else pred == target
