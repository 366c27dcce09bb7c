"""Attribution stability: how much an adversarial perturbation changes a LIME explanation."""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.base import clone

from .._params import Integral, check_param
from .._utils import batches, check_batch_size, check_method, prepare, to_numpy
from ..base import eval_mode

__all__ = ["attribution_stability", "topk_intersection", "segment_spearman"]


def _topk_sets(weights: np.ndarray, valid: np.ndarray, k: int):
    """Per row, the set of the ``min(k, S_n)`` valid columns with the largest weights."""
    ranked = np.where(valid, weights, -np.inf)
    order = np.argsort(-ranked, axis=1, kind="stable")
    out = []
    for n in range(weights.shape[0]):
        k_n = min(k, int(valid[n].sum()))
        out.append(set(order[n, :k_n].tolist()))
    return out


def topk_intersection(weights_a, weights_b, k, valid=None) -> np.ndarray:
    """``|topk(a) ∩ topk(b)| / k`` per row (``k`` capped at each row's segment count).

    Parameters
    ----------
    weights_a, weights_b : array-like of shape (N, S)
        Segment weights of two explanations over the *same* segments.
    k : int
        Number of top segments (>= 1).
    valid : bool array-like of shape (N, S), optional
        Real segments (padding columns are ignored); default all.

    Returns
    -------
    numpy.ndarray of shape (N,), values in [0, 1]
    """
    a, b = to_numpy(weights_a).astype(float), to_numpy(weights_b).astype(float)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"weights must be two arrays of the same (N, S) shape, got {a.shape} and {b.shape}")
    check_param("topk_intersection", "k", k, [Integral(1, None)])
    valid = np.ones(a.shape, bool) if valid is None else to_numpy(valid).astype(bool)
    sa, sb = _topk_sets(a, valid, int(k)), _topk_sets(b, valid, int(k))
    return np.array([len(p & q) / max(len(p), 1) for p, q in zip(sa, sb)], dtype=float)


def segment_spearman(weights_a, weights_b, valid=None) -> np.ndarray:
    """Spearman rank correlation of two weight vectors per row, over the valid segments.

    Rows with fewer than two segments, or where either vector is constant, give ``nan``.

    Returns
    -------
    numpy.ndarray of shape (N,), values in [-1, 1] or nan
    """
    a, b = to_numpy(weights_a).astype(float), to_numpy(weights_b).astype(float)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"weights must be two arrays of the same (N, S) shape, got {a.shape} and {b.shape}")
    valid = np.ones(a.shape, bool) if valid is None else to_numpy(valid).astype(bool)
    out = np.full(a.shape[0], np.nan)
    for n in range(a.shape[0]):
        u, v = a[n, valid[n]], b[n, valid[n]]
        if u.size >= 2 and np.ptp(u) > 0 and np.ptp(v) > 0:
            out[n] = spearmanr(u, v).statistic
    return out


def attribution_stability(model, X, y, attacker, explainer, k=3, *, batch_size=256):
    """Compare the explanation of each ``x`` with that of its adversarial example ``x_adv``.

    Both explanations are for the true class ``y`` and over the *same* segments (those of the
    clean image, passed as ``segments=`` to the second call), so their weights are directly
    comparable.  A seeded explainer is cloned for each call, so both use the same perturbation
    masks (common random numbers: differences come from the model, not from sampling).

    Parameters
    ----------
    model : torch.nn.Module or fitted RobustAttributionClassifier
    X : array-like or torch.Tensor of shape (N, C, H, W)
        Images in [0, 1].
    y : array-like or torch.Tensor of shape (N,)
    attacker : Attacker
        Produces ``x_adv`` (``perturb(model, X, y)``).
    explainer : Explainer
        ``explain(model, X, target, segments=...) -> Attribution`` (e.g.
        :class:`~attribshield.explainers.LimeExplainer`).
    k : int, default=3
        Number of top (most positive) segments compared.
    batch_size : int, default=256
        Batch size of the attack.

    Returns
    -------
    result : dict
        ``topk_intersection`` (N,) in [0, 1], ``spearman`` (N,) in [-1, 1] (nan where
        undefined), their means ``mean_topk_intersection`` and ``mean_spearman`` (nan-mean),
        ``attack_success`` (N,) bool (prediction changed by the attack), ``k``, and the two
        explanations ``clean`` and ``adversarial`` (:class:`Attribution`).
    """
    check_method(attacker, "attacker", "perturb", "model, X, y")
    check_method(explainer, "explainer", "explain", "model, X, target")
    check_param("attribution_stability", "k", k, [Integral(1, None)])
    batch_size = check_batch_size(batch_size, "attribution_stability")
    module, X, y, _ = prepare(model, X, y)
    X_adv = torch.cat([attacker.perturb(module, X[s], y[s]) for s in batches(X.shape[0], batch_size)])
    with eval_mode(module), torch.no_grad():
        success = torch.cat([module(X_adv[s]).argmax(1) != y[s] for s in batches(X.shape[0], batch_size)])

    def _fresh():
        try:
            return clone(explainer)
        except Exception:  # not a scikit-learn style object: use it as is
            return explainer

    clean = _fresh().explain(module, X, y)
    adv = _fresh().explain(module, X_adv, y, segments=clean.segments)
    valid = to_numpy(clean.valid)
    inter = topk_intersection(clean.weights, adv.weights, int(k), valid)
    rho = segment_spearman(clean.weights, adv.weights, valid)
    return {
        "k": int(k),
        "topk_intersection": inter,
        "spearman": rho,
        "mean_topk_intersection": float(inter.mean()),
        "mean_spearman": float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan"),
        "attack_success": to_numpy(success).astype(bool),
        "clean": clean,
        "adversarial": adv,
    }
