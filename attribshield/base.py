"""Component base class, protocols and small shared helpers.

Every pluggable part of attribshield (explainer, masker, regularizer, attacker) is a
:class:`Component`: a scikit-learn ``BaseEstimator`` whose ``__init__`` only stores its
hyperparameters.  That is what makes ``clone``, ``get_params(deep=True)``,
``set_params(attacker__eps=...)`` and ``GridSearchCV(clf, {"masker__top_k": [...]})`` work.

The model is passed **per call** (never bound at construction, unlike torchattacks), and the
device is taken from the input tensor, so one component object serves CPU and CUDA models and
pickles without holding a model.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Protocol, runtime_checkable

import numpy as np
import torch
from sklearn.base import BaseEstimator

__all__ = [
    "Component",
    "Attacker",
    "Explainer",
    "Masker",
    "Regularizer",
    "eval_mode",
    "capability",
    "check_component",
    "get_module",
    "make_generator",
]


class Component(BaseEstimator):
    """Base class of all attribshield components.

    Subclasses declare their hyperparameters as explicit keyword arguments of ``__init__``
    and store them unchanged (scikit-learn convention): no validation and no derived state
    in ``__init__``.  Validation happens in :meth:`_validate_params`, called at the start of
    the component's work.
    """

    def _validate_params(self) -> None:  # pragma: no cover - overridden where needed
        """Raise ``ValueError`` for invalid hyperparameters (hook for subclasses)."""

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:  # keep sklearn's compact repr
        return super().__repr__(N_CHAR_MAX=N_CHAR_MAX)

    def _generator(self, device) -> Optional[torch.Generator]:
        """A ``torch.Generator`` per device, created lazily from ``self.random_state``.

        ``None`` (no ``random_state``) means torch's global generator.  The generator is kept,
        so successive calls draw fresh but reproducible numbers; it is not pickled (a restored
        component starts again from its seed) and ``clone`` never copies it.
        """
        rs = getattr(self, "random_state", None)
        if rs is None:
            return None
        if isinstance(rs, torch.Generator):
            return rs
        cache = self.__dict__.setdefault("_generators", {})
        key = str(torch.device(device))
        if key not in cache:
            cache[key] = make_generator(rs, device)
        return cache[key]

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_generators", None)
        return state


def make_generator(random_state, device) -> Optional[torch.Generator]:
    """Return a ``torch.Generator`` on ``device`` seeded from ``random_state``.

    Parameters
    ----------
    random_state : None, int, numpy.random.Generator, numpy.random.RandomState or torch.Generator
        ``None`` returns ``None`` (torch's global generator is used).  An int seeds a new
        generator; numpy generators draw a seed; a ``torch.Generator`` is returned as is.
    device : torch.device or str
    """
    if random_state is None:
        return None
    if isinstance(random_state, torch.Generator):
        return random_state
    if isinstance(random_state, (np.random.Generator,)):
        seed = int(random_state.integers(0, 2**63 - 1))
    elif isinstance(random_state, np.random.RandomState):
        seed = int(random_state.randint(0, 2**31 - 1))
    else:
        seed = int(random_state)
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(seed)
    return gen


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Put ``module`` in eval mode for the block and restore every submodule's flag after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode


def get_module(model) -> torch.nn.Module:
    """Return the ``torch.nn.Module`` behind ``model`` (a module or a fitted estimator)."""
    if isinstance(model, torch.nn.Module):
        return model
    module = getattr(model, "module_", None)
    if isinstance(module, torch.nn.Module):
        return module
    raise TypeError(
        f"expected a torch.nn.Module or a fitted RobustAttributionClassifier, got {type(model).__name__}"
    )


# --------------------------------------------------------------------------- protocols
# Optional capabilities are *declared* by components as class attributes (never guessed from
# signatures); the estimator reads them with :func:`capability`.
#
# ==========================  ============  ========================================================
# capability                  slot          meaning
# ==========================  ============  ========================================================
# ``accepts_mask``            attacker      ``perturb(..., mask=M)`` takes a pixel mask ``(N, 1, H, W)``
# ``provides_objective``      attacker      ``objective(logits_clean, logits_adv, y)`` is the loss
# ``provides_input_grad``     attacker      ``perturb(..., return_grad=True) -> (X_adv, grad)``, with
#                                           ``grad`` the input gradient of the summed cross-entropy
#                                           the attack computed (at its first step)
# ``requires_mask``           regularizer   ``penalty`` needs the spurious mask (default True)
# ``autocast_safe``           regularizer   ``penalty`` may run under the estimator's autocast
#                                           (default False: it runs in fp32)
# ``trainable``               explainer     ``partial_fit(model, X, target)`` trains it online
# ``fused_fit_explain``       explainer     ``partial_fit_explain(model, X, target, *, n_fit,
#                                           segments)``: a ``partial_fit`` step on ``X[:n_fit]``
#                                           and the explanation of ``X``, sharing their passes
# ``uses_input_grad``         explainer     ``attribute_from_grad(X, grad, segments, target)``
#                                           turns an input gradient of log p_y into attributions
# ==========================  ============  ========================================================
CAPABILITY_DEFAULTS = {"accepts_mask": False, "provides_objective": False, "provides_input_grad": False,
                       "requires_mask": True, "trainable": False, "uses_input_grad": False,
                       "fused_fit_explain": False, "autocast_safe": False, "optional_intercept": False}


def capability(component, name: str) -> bool:
    """The declared capability ``name`` of ``component`` (its default when undeclared)."""
    if name not in CAPABILITY_DEFAULTS:
        raise ValueError(f"unknown capability {name!r}; known: {sorted(CAPABILITY_DEFAULTS)}")
    return bool(getattr(component, name, CAPABILITY_DEFAULTS[name]))


# slot -> (required methods, how the protocol reads)
SLOTS = {
    "attacker": (("perturb",), "Attacker: perturb(model, X, y) -> X_adv"),
    "masker": (("find_spurious", "select", "apply"),
               "Masker: find_spurious(model, X, y, explainer), select(scores, valid), apply(X, segments, selected)"),
    "regularizer": (("penalty",), "Regularizer: penalty(model, X, y, mask) -> scalar tensor"),
    "explainer": (("explain",), "Explainer: explain(model, X, target=None, *, segments=None) -> Attribution"),
    "augment": (("__call__",), "augmentation: augment(X) -> (X_aug, src)"),
}


def check_component(slot: str, component) -> None:
    """Raise ``ValueError`` unless ``component`` follows the protocol of ``slot`` (``None`` passes)."""
    if component is None:
        return
    methods, protocol = SLOTS[slot]
    missing = [m for m in methods if not callable(getattr(component, m, None))]
    if isinstance(component, type):
        raise ValueError(f"{slot} must be an instance, got the class {component.__name__}: pass "
                         f"{component.__name__}(...)")
    if missing:
        raise ValueError(f"{slot}={type(component).__name__}(...) does not follow the {protocol} protocol "
                         f"(missing {', '.join(missing)}); is it in the wrong slot?")


@runtime_checkable
class Attacker(Protocol):
    """``perturb(model, X, y, *, target=None) -> X_adv`` inside the threat model.

    ``X`` is ``(N, C, H, W)`` in [0, 1]; ``X_adv`` has the same shape, dtype and device,
    ``||X_adv - X|| <= eps`` in the attack's norm, and ``X_adv`` in [0, 1].
    """

    def perturb(self, model, X, y, *, target=None): ...


@runtime_checkable
class Explainer(Protocol):
    """``explain(model, X, target=None, *, segments=None, samples=None) -> Attribution``."""

    def explain(self, model, X, target=None, *, segments=None, samples=None): ...


@runtime_checkable
class Masker(Protocol):
    """``find_spurious(model, X, y, explainer, attacker=None)``, ``select(scores, valid)`` and
    ``apply(X, segments, selected) -> X_masked``."""

    def find_spurious(self, model, X, y, explainer, attacker=None): ...

    def select(self, scores, valid=None): ...

    def apply(self, X, segments, selected): ...


@runtime_checkable
class Regularizer(Protocol):
    """``penalty(model, X, y, mask) -> scalar tensor`` (differentiable in the parameters)."""

    def penalty(self, model, X, y, mask): ...
