"""Accuracy under attack: our attacks, torchattacks' AutoAttack and Square, and a report that
flags suspected gradient masking.

Every function takes a ``torch.nn.Module`` returning logits or a fitted
:class:`~attribshield.RobustAttributionClassifier`, images ``X`` of shape ``(N, C, H, W)`` in
[0, 1] and labels ``y`` of shape ``(N,)``.  Work runs in batches of ``batch_size`` on the
module's device, with the module in eval mode; every submodule's train/eval flag is restored
afterwards.  Points the model already misclassifies are never attacked: they count as
non-robust, as in AutoAttack.
"""
from __future__ import annotations

import math
import sys
import time

import torch
from torch import nn

from .._params import Integral, Real, check_param
from .._utils import (
    batches,
    channels_last_copy,
    check_batch_size,
    check_eps,
    check_flag,
    check_method,
    predict,
    prepare,
    quiet,
    to_bits,
    to_numpy,
)
from ..attacks import PGD, project
from ..attacks._threat import check_norm
from ..base import eval_mode

__all__ = [
    "clean_accuracy",
    "robust_accuracy",
    "autoattack_accuracy",
    "square_accuracy",
    "accuracy_vs_eps",
    "robustness_report",
]


def _finish(correct: torch.Tensor, return_per_sample: bool):
    correct = to_numpy(correct).astype(bool)
    return correct if return_per_sample else float(correct.mean())


def clean_accuracy(model, X, y, *, batch_size=256, return_per_sample=False):
    """Accuracy on unperturbed inputs.

    Parameters
    ----------
    model : torch.nn.Module or fitted RobustAttributionClassifier
        Returns logits ``(N, n_classes)``.
    X : array-like or torch.Tensor of shape (N, C, H, W)
        Images in [0, 1] (``uint8`` 0..255 is scaled).
    y : array-like or torch.Tensor of shape (N,)
        Integer labels.
    batch_size : int, default=256
    return_per_sample : bool, default=False
        Return the per-sample correctness instead of the mean.

    Returns
    -------
    accuracy : float in [0, 1], or numpy.ndarray of shape (N,), bool
    """
    batch_size = check_batch_size(batch_size, "clean_accuracy")
    module, X, y, _ = prepare(model, X, y)
    with eval_mode(module):
        pred = predict(module, X, batch_size)
    return _finish(pred == y, return_per_sample)


def robust_accuracy(model, X, y, attacker, *, batch_size=256, return_per_sample=False):
    """Accuracy under ``attacker`` (any object with ``perturb(model, X, y) -> X_adv``).

    Only the points classified correctly are attacked; a point counts as robust when it is
    classified correctly both clean and after the attack.

    Parameters
    ----------
    model : torch.nn.Module or fitted RobustAttributionClassifier
    X : array-like or torch.Tensor of shape (N, C, H, W)
        Images in [0, 1].
    y : array-like or torch.Tensor of shape (N,)
    attacker : Attacker
        E.g. :class:`~attribshield.attacks.PGD`.
    batch_size : int, default=256
    return_per_sample : bool, default=False

    Returns
    -------
    accuracy : float in [0, 1], or numpy.ndarray of shape (N,), bool

    Examples
    --------
    >>> import torch
    >>> from attribshield.attacks import PGD
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> X, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    >>> robust_accuracy(model, X, y, PGD(eps=0.0)) == clean_accuracy(model, X, y)
    True
    """
    check_method(attacker, "attacker", "perturb", "model, X, y")
    batch_size = check_batch_size(batch_size, "robust_accuracy")
    module, X, y, _ = prepare(model, X, y)
    with eval_mode(module):
        correct = predict(module, X, batch_size) == y
        idx = correct.nonzero().flatten()
        for s in batches(idx.numel(), batch_size):
            i = idx[s]
            X_adv = attacker.perturb(module, X[i], y[i])
            with torch.no_grad():
                correct[i] = module(X_adv).argmax(dim=1) == y[i]
    return _finish(correct, return_per_sample)


# --------------------------------------------------------------------------- torchattacks
class _LogitsModule(nn.Module):
    """What torchattacks sees: the user's module, float32 logits, always in eval mode.

    torchattacks binds the model at construction, reads ``model.training`` before an attack
    and calls ``model.train()`` afterwards when that flag was set, which would switch the
    user's BatchNorm layers to training mode in the middle of AutoAttack.  This wrapper is
    created in eval mode and its ``train`` is a no-op, so the caller's :func:`eval_mode`
    stays in charge of every flag.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = module
        self.training = False

    def train(self, mode: bool = True):  # noqa: D102 - deliberately inert
        return self

    def forward(self, x):
        return self.inner(x).float()


def _check_norm_eps(eps, norm, owner):
    check_norm(norm)
    return check_eps(eps, owner=owner)


def _torchattacks_accuracy(attack, options, module, X, y, eps, norm, batch_size, seed, return_per_sample,
                           progress=False, desc="attack"):
    """Shared loop: attack still-correct points with ``torchattacks.<attack>``.

    The attack is built around the eval-mode wrapper with ``norm``, ``eps``, ``seed`` (0 for
    ``None``), ``verbose=False`` and the other keyword arguments in ``options``.
    """
    try:
        import torchattacks
    except ImportError as exc:  # pragma: no cover - torchattacks is a test dependency
        raise ImportError("this evaluator needs torchattacks: pip install torchattacks") from exc
    device = X.device
    wrapped = _LogitsModule(module)
    with eval_mode(module):
        correct = predict(module, X, batch_size) == y
        if eps == 0:
            return _finish(correct, return_per_sample)
        with quiet():
            atk = getattr(torchattacks, attack)(wrapped, norm=norm, eps=eps, seed=seed if seed is not None else 0,
                                                verbose=False, **options)
            atk.set_device(device)
        idx = correct.nonzero().flatten()
        # torchattacks reseeds torch's global generator; keep the caller's stream untouched
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            chunks = list(batches(idx.numel(), batch_size))
            if progress:
                from tqdm.auto import tqdm

                chunks = tqdm(chunks, desc=desc, unit="batch")
            for s in chunks:
                i = idx[s]
                Xi = X[i].float()
                with torch.enable_grad(), quiet():
                    X_adv = atk(Xi, y[i]).to(device)
                # never trust a third-party attack to stay in the threat model: project back
                delta = project(X_adv - Xi, eps, norm)
                X_adv = (Xi + delta).clamp(0, 1).to(X.dtype)
                with torch.no_grad():
                    correct[i] = module(X_adv).argmax(dim=1) == y[i]
    return _finish(correct, return_per_sample)


def autoattack_accuracy(model, X, y, eps, norm="Linf", version="standard", n_classes=10, seed=0, *,
                        batch_size=256, return_per_sample=False, progress=False):
    """Accuracy under AutoAttack, through ``torchattacks.AutoAttack`` (an independent evaluator).

    The standard version runs APGD-CE, APGD-T, FAB-T and Square (5,000 queries) in a cascade,
    each on the points the previous ones did not break.  Only clean-correct points are
    attacked, and every adversarial example is projected back onto the threat model and
    ``[0, 1]`` before it is scored, so the result never depends on torchattacks' own checks.

    Parameters
    ----------
    model : torch.nn.Module or fitted RobustAttributionClassifier
    X : array-like or torch.Tensor of shape (N, C, H, W)
        Images in [0, 1].
    y : array-like or torch.Tensor of shape (N,)
    eps : float
        Radius of the threat model (>= 0).
    norm : {"Linf", "L2"}, default="Linf"
    version : {"standard", "plus", "rand"}, default="standard"
    n_classes : int, default=10
        Number of classes of the model (used by the targeted attacks).
    seed : int or None, default=0
        Seed of the attacks.  torchattacks reseeds torch's global generator; the caller's
        global random state is restored afterwards.
    batch_size : int, default=256
    return_per_sample : bool, default=False
    progress : bool, default=False
        tqdm progress bar over the batches of attacked points (AutoAttack takes minutes per
        batch on a CPU).

    Returns
    -------
    accuracy : float in [0, 1], or numpy.ndarray of shape (N,), bool

    Notes
    -----
    torchattacks binds the model at construction; a fresh attack object is built per call
    around an eval-mode wrapper that returns float32 logits, and its device is set from the
    data, so modules without parameters work too.
    """
    eps = _check_norm_eps(eps, norm, "autoattack_accuracy")
    if version not in ("standard", "plus", "rand"):
        raise ValueError(f"version must be 'standard', 'plus' or 'rand', got {version!r}")
    check_param("autoattack_accuracy", "n_classes", n_classes, [Integral(2, None)])
    batch_size = check_batch_size(batch_size, "autoattack_accuracy")
    module, X, y, _ = prepare(model, X, y)
    if int(y.max()) >= n_classes:
        raise ValueError(f"y contains labels >= n_classes={n_classes} (max {int(y.max())})")
    with eval_mode(module), torch.no_grad():
        k = module(X[:1]).shape[1]
    if k != n_classes:
        raise ValueError(f"n_classes={n_classes} but the model returns {k} logits")
    if version != "rand" and n_classes < 4:
        raise ValueError(f"AutoAttack version={version!r} needs n_classes >= 4 (its targeted DLR loss uses "
                         f"the 4 largest logits), got {n_classes}; use version='rand'")
    return _torchattacks_accuracy("AutoAttack", dict(version=version, n_classes=int(n_classes)), module, X, y,
                                  eps, norm, batch_size, seed, return_per_sample, progress=progress,
                                  desc=f"AutoAttack ({version})")


def square_accuracy(model, X, y, eps, norm="Linf", n_queries=5000, *, n_restarts=1, p_init=0.8, seed=0,
                    batch_size=256, return_per_sample=False):
    """Accuracy under the black-box Square attack (``torchattacks.Square``, margin loss).

    Square only queries the model's outputs, so it is blind to gradient masking: when it
    beats a gradient attack, the gradients are misleading (see :func:`robustness_report`).

    Parameters
    ----------
    model : torch.nn.Module or fitted RobustAttributionClassifier
    X : array-like or torch.Tensor of shape (N, C, H, W)
        Images in [0, 1].
    y : array-like or torch.Tensor of shape (N,)
    eps : float
        Radius of the threat model (>= 0).
    norm : {"Linf", "L2"}, default="Linf"
    n_queries : int, default=5000
        Query budget per point (>= 1).
    n_restarts : int, default=1
    p_init : float, default=0.8
        Initial fraction of pixels changed per square (Andriushchenko et al.).
    seed : int or None, default=0
    batch_size : int, default=256
    return_per_sample : bool, default=False

    Returns
    -------
    accuracy : float in [0, 1], or numpy.ndarray of shape (N,), bool

    References
    ----------
    Andriushchenko et al., "Square Attack: a query-efficient black-box adversarial attack via
    random search", ECCV 2020.
    """
    eps = _check_norm_eps(eps, norm, "square_accuracy")
    check_param("square_accuracy", "n_queries", n_queries, [Integral(1, None)])
    check_param("square_accuracy", "n_restarts", n_restarts, [Integral(1, None)])
    check_param("square_accuracy", "p_init", p_init, [Real(0, 1, closed="right")])
    batch_size = check_batch_size(batch_size, "square_accuracy")
    module, X, y, _ = prepare(model, X, y)
    options = dict(n_queries=int(n_queries), n_restarts=int(n_restarts), p_init=float(p_init), loss="margin",
                   resc_schedule=True)
    return _torchattacks_accuracy("Square", options, module, X, y, eps, norm, batch_size, seed, return_per_sample)


# --------------------------------------------------------------------------- curves, report
def accuracy_vs_eps(model, X, y, eps_values, norm="Linf", *, steps=20, restarts=1, random_state=0,
                    batch_size=256):
    """PGD robust accuracy for each radius in ``eps_values``.

    Parameters
    ----------
    model, X, y
        As in :func:`robust_accuracy`.
    eps_values : sequence of float
        Radii (>= 0), evaluated in the given order.
    norm : {"Linf", "L2"}, default="Linf"
    steps : int, default=20
    restarts : int, default=1
    random_state : int or None, default=0
    batch_size : int, default=256

    Returns
    -------
    dict
        ``{"eps": list of float, "accuracy": list of float}``.
    """
    check_norm(norm)
    eps_values = [check_eps(e, "eps_values entries", "accuracy_vs_eps") for e in eps_values]
    if not eps_values:
        raise ValueError("eps_values must not be empty")
    acc = []
    for e in eps_values:
        atk = PGD(eps=e, steps=steps, norm=norm, restarts=restarts, random_state=random_state)
        acc.append(robust_accuracy(model, X, y, atk, batch_size=batch_size))
    return {"eps": eps_values, "accuracy": acc}


def _default_large_eps(norm, X) -> float:
    """A radius at which every image can be turned into any other (accuracy should be ~0)."""
    if norm == "Linf":
        return 1.0
    return float(math.sqrt(X[0].numel()))


def robustness_report(model, X, y, eps, norm="Linf", *, steps=50, restarts=5, step_size=None,
                      autoattack=False, n_classes=10, square=True, n_queries=1000, eps_grid=None,
                      large_eps=None, masking_tolerance=0.0, large_eps_threshold=0.1,
                      random_state=0, batch_size=256, progress=False, channels_last=False):
    """Clean, PGD (with restarts), AutoAttack, Square and an accuracy-vs-eps curve, with
    gradient-masking checks.

    Parameters
    ----------
    model : torch.nn.Module or fitted RobustAttributionClassifier
    X : array-like or torch.Tensor of shape (N, C, H, W)
        Images in [0, 1].
    y : array-like or torch.Tensor of shape (N,)
    eps : float
        Radius of the threat model.
    norm : {"Linf", "L2"}, default="Linf"
    steps, restarts, step_size
        PGD settings (``step_size=None``: ``2.5 * eps / steps``).
    autoattack : bool, default=False
        Also run :func:`autoattack_accuracy` (slow: thousands of forward passes per point).
    n_classes : int, default=10
        For AutoAttack's targeted attacks.
    square : bool, default=True
        Run the black-box :func:`square_accuracy` with ``n_queries`` queries.
    n_queries : int, default=1000
    eps_grid : sequence of float or None, default=None
        Radii of the accuracy-vs-eps curve; ``None``: ``eps * [0, 0.25, 0.5, 1, 2, 4]``.
    large_eps : float or None, default=None
        A radius at which accuracy must be near 0 (``None``: 1 for Linf, ``sqrt(C*H*W)``
        for L2, radii at which any image can be reached).
    masking_tolerance : float, default=0.0
        Slack (in accuracy) before the black-box and monotonicity checks fire.
    large_eps_threshold : float, default=0.1
        Accuracy at ``large_eps`` above which the report flags masking.
    random_state : int or None, default=0
    batch_size : int, default=256
    progress : bool, default=False
        Print each stage's result and duration on stderr as it finishes, and a progress bar
        over AutoAttack's batches.
    channels_last : bool, default=False
        Run every attack on a copy of the module whose convolution weights are stored in
        ``torch.channels_last`` format (the caller's module is not modified).  Faster
        convolutions on CPUs and tensor-core GPUs (AutoAttack 1.3x on a 2-core CPU); the
        logits differ from the default format only by float rounding (about 1e-8 for
        ``SmallCNN`` and ``PreActResNet18`` in float32), so accuracies agree except for a
        point that sits exactly on a decision boundary.  Off by default because the results
        are not bitwise identical.

    Returns
    -------
    report : dict
        ``clean_accuracy``, ``pgd_accuracy``, ``autoattack_accuracy`` (or None),
        ``square_accuracy`` (or None), ``robust_accuracy`` (per-point worst case over every
        attack that was run), ``eps_curve`` (``{"eps", "accuracy"}``), ``large_eps``
        (``{"eps", "accuracy"}``), ``settings`` (attack settings, ``random_state`` and
        ``channels_last``) and ``gradient_masking``: ``{"suspected":
        bool, "reasons": list of str, "black_box_beats_white_box": bool,
        "accuracy_not_decreasing": bool, "large_eps_not_zero": bool}``.

    Notes
    -----
    The three checks follow Athalye, Carlini and Wagner (2018) and Carlini et al., "On
    evaluating adversarial robustness" (2019): a black-box attack must not beat white-box
    ones, accuracy must not rise with the radius, and an unbounded attack must reach
    (almost) 100% success.  A flag is a reason to look closer, not a proof of masking.
    """
    eps = _check_norm_eps(eps, norm, "robustness_report")
    batch_size = check_batch_size(batch_size, "robustness_report")
    channels_last = check_flag(channels_last, "channels_last")
    module, Xt, yt, _ = prepare(model, X, y)
    n = Xt.shape[0]
    pgd = PGD(eps=eps, step_size=step_size, steps=steps, norm=norm, restarts=restarts,
              random_state=random_state)
    pgd._validate_params()
    if eps_grid is None:
        eps_grid = [eps * f for f in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
    eps_grid = sorted(check_eps(e, "eps_grid entries", "robustness_report") for e in eps_grid)
    if large_eps is None:
        large = _default_large_eps(norm, Xt)
    else:
        large = check_eps(large_eps, "large_eps", "robustness_report")
    if channels_last:
        module = channels_last_copy(module)

    clock = [time.perf_counter()]

    def done(stage, acc):
        if progress:
            now = time.perf_counter()
            print(f"  {stage}: {float(acc):.4f} ({now - clock[0]:.0f} s)", file=sys.stderr, flush=True)
            clock[0] = now

    clean = clean_accuracy(module, Xt, yt, batch_size=batch_size, return_per_sample=True)
    done("clean", clean.mean())
    pgd_ok = robust_accuracy(module, Xt, yt, pgd, batch_size=batch_size, return_per_sample=True)
    done(f"PGD-{steps} x {restarts} restarts", pgd_ok.mean())
    white_ok = pgd_ok.copy()
    aa_ok = sq_ok = None
    if autoattack:
        aa_ok = autoattack_accuracy(module, Xt, yt, eps, norm, n_classes=n_classes, seed=random_state,
                                    batch_size=batch_size, return_per_sample=True, progress=progress)
        done("AutoAttack (standard)", aa_ok.mean())
        white_ok &= aa_ok
    robust_ok = white_ok.copy()
    if square:
        sq_ok = square_accuracy(module, Xt, yt, eps, norm, n_queries=n_queries, seed=random_state,
                                batch_size=batch_size, return_per_sample=True)
        done(f"Square ({n_queries} queries)", sq_ok.mean())
        robust_ok &= sq_ok
    curve = accuracy_vs_eps(module, Xt, yt, eps_grid, norm, steps=steps, restarts=1,
                            random_state=random_state, batch_size=batch_size)
    done(f"accuracy vs eps ({len(eps_grid)} radii), at eps={eps_grid[-1]:.4g}", curve["accuracy"][-1])
    # a larger step budget at the huge radius: the point is to reach any image
    big = PGD(eps=large, steps=max(steps, 20), norm=norm, restarts=1, random_state=random_state)
    large_acc = robust_accuracy(module, Xt, yt, big, batch_size=batch_size)
    done(f"PGD at eps={large:.4g}", large_acc)
    bits = to_bits
    per_sample = {"clean": bits(clean), "pgd": bits(pgd_ok), "robust": bits(robust_ok)}
    if aa_ok is not None:
        per_sample["autoattack"] = bits(aa_ok)
    if sq_ok is not None:
        per_sample["square"] = bits(sq_ok)

    reasons = []
    white_acc = float(white_ok.mean())
    bb = sq_ok is not None and float(sq_ok.mean()) < white_acc - masking_tolerance
    if bb:
        n_only = int((white_ok & ~sq_ok).sum())
        reasons.append(f"black-box Square ({sq_ok.mean():.4f}) beats the white-box attacks ({white_acc:.4f}): "
                       f"{n_only} points broken only by Square")
    accs = curve["accuracy"]
    rises = [(curve["eps"][i], curve["eps"][i + 1]) for i in range(len(accs) - 1)
             if accs[i + 1] > accs[i] + masking_tolerance]
    if rises:
        reasons.append(f"accuracy rises with eps between {rises}")
    flat = len(accs) >= 2 and max(curve["eps"]) > 0 and accs[-1] >= accs[0] and accs[0] > 0
    if flat and not rises:
        reasons.append(f"accuracy does not fall as eps grows ({accs[0]:.4f} at eps={curve['eps'][0]:.4g}, "
                       f"{accs[-1]:.4f} at eps={curve['eps'][-1]:.4g})")
    not_decreasing = bool(rises) or flat
    large_flag = large_acc > large_eps_threshold
    if large_flag:
        reasons.append(f"accuracy {large_acc:.4f} at the very large eps={large:.4g} is not near 0")
    return {
        "n_samples": int(n),
        "eps": eps,
        "norm": norm,
        "clean_accuracy": float(clean.mean()),
        "pgd_accuracy": float(pgd_ok.mean()),
        "autoattack_accuracy": None if aa_ok is None else float(aa_ok.mean()),
        "square_accuracy": None if sq_ok is None else float(sq_ok.mean()),
        "robust_accuracy": float(robust_ok.mean()),
        "eps_curve": curve,
        "large_eps": {"eps": large, "accuracy": float(large_acc)},
        "settings": {"pgd_steps": int(steps), "pgd_restarts": int(restarts),
                     "pgd_step_size": float(pgd._step_size()), "square_queries": int(n_queries) if square else None,
                     "autoattack_version": "standard" if autoattack else None, "random_state": random_state,
                     "channels_last": channels_last},
        "gradient_masking": {
            "suspected": bool(reasons),
            "reasons": reasons,
            "black_box_beats_white_box": bool(bb),
            "accuracy_not_decreasing": bool(not_decreasing),
            "large_eps_not_zero": bool(large_flag),
        },
        "per_sample": per_sample,
    }
