"""Paired comparisons of two models evaluated on the same images (is a difference real?).

When two models are scored on the same test images, the per-image correctness of one is
paired with the other's, and the comparison should use the pairing:

* :func:`mcnemar_exact`: the exact McNemar test, a two-sided binomial test on the images where
  the two models disagree (:func:`scipy.stats.binomtest`);
* :func:`pooled_mcnemar_exact`: the same test with the discordant counts of several training
  seeds summed (each seed's pair of models judged on its own images, the pairs stacked);
* :func:`paired_bootstrap_ci`: a percentile bootstrap interval of the accuracy difference, the
  images resampled with their pairing kept (:func:`scipy.stats.bootstrap` with ``paired=True``);
* :func:`seed_matched_differences`: per-seed differences of a score between two methods trained
  with the same seeds, with their mean and range (the training-seed variation that a per-image
  interval leaves out).

``benchmarks/paired_robustness.py`` and ``benchmarks/results_page.py`` compute the p-values,
intervals and seed-matched differences of ``docs/results.md`` with these functions.
"""
from __future__ import annotations

import inspect
import statistics
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats as _sps

from .._params import Integral, Real, check_param

__all__ = ["mcnemar_exact", "pooled_mcnemar_exact", "paired_bootstrap_ci", "seed_matched_differences",
           "paired_verdict"]


def _check_correct(values, name: str) -> np.ndarray:
    """One per-image correctness record as a 1-D bool array (bools, or numbers that are 0 or 1)."""
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as exc:  # ragged or otherwise unconvertible input
        raise ValueError(f"{name} must be a 1-D array of per-image correctness, got {type(values).__name__}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-image correctness, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: a paired comparison needs at least one image")
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold booleans or 0/1 (correct or not per image), got dtype {arr.dtype}")
    ok = (arr == 0) | (arr == 1)
    if not ok.all():
        bad = arr[~ok][0]
        raise ValueError(
            f"{name} must hold booleans or 0/1 (correct or not per image), got the value {bad!r}; "
            "pass per-image correctness, not accuracies or predictions"
        )
    return arr == 1


def _check_pair(correct_a, correct_b) -> tuple[np.ndarray, np.ndarray]:
    a = _check_correct(correct_a, "correct_a")
    b = _check_correct(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(
            f"correct_a and correct_b must score the same images, got {a.shape[0]} and {b.shape[0]} entries"
        )
    return a, b


def _mcnemar_from_counts(n10: int, n01: int) -> float:
    """Two-sided exact McNemar p-value: ``n10`` successes in ``n10 + n01`` fair coin flips."""
    n = n10 + n01
    if n == 0:
        return 1.0
    return float(_sps.binomtest(n10, n, p=0.5, alternative="two-sided").pvalue)


def mcnemar_exact(correct_a, correct_b) -> dict:
    """Exact McNemar test of two models scored on the same images.

    McNemar's test [1]_ in its exact form.  Only the discordant images (one model right, the
    other wrong) carry information about which model is better; under the null hypothesis of
    equal accuracy each of them favours either model with probability 1/2, so the p-value is
    that of a two-sided binomial test (:func:`scipy.stats.binomtest`) of ``n10`` successes in
    ``n10 + n01`` trials.

    Parameters
    ----------
    correct_a : array-like of shape (n_images,)
        Whether model A classified each image correctly (bools, or numbers 0 and 1).
    correct_b : array-like of shape (n_images,)
        The same for model B, on the same images in the same order.

    Returns
    -------
    result : dict
        ``n10``: images only A gets right; ``n01``: images only B gets right; ``n``: number of
        images; ``difference``: accuracy of A minus accuracy of B, ``(n10 - n01) / n``;
        ``pvalue``: two-sided exact p-value in [0, 1] (1 when there is no discordant image).

    Raises
    ------
    ValueError
        Inputs that are not 1-D, are empty, differ in length, or hold values other than
        booleans, 0 and 1.

    See Also
    --------
    pooled_mcnemar_exact : the same test over several seeds' pairs.
    paired_bootstrap_ci : an interval for the accuracy difference.

    Notes
    -----
    The test is symmetric: swapping A and B swaps ``n10`` and ``n01``, negates the difference
    and leaves the p-value unchanged.

    References
    ----------
    .. [1] Q. McNemar, "Note on the sampling error of the difference between correlated
       proportions or percentages", Psychometrika 12 (1947) 153-157.

    Examples
    --------
    >>> a = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    >>> b = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    >>> res = mcnemar_exact(a, b)
    >>> res["n10"], res["n01"], res["difference"]
    (9, 1, 0.8)
    >>> round(res["pvalue"], 6)  # 2 * (C(10, 0) + C(10, 1)) / 2**10
    0.021484
    """
    a, b = _check_pair(correct_a, correct_b)
    n10 = int(np.count_nonzero(a & ~b))
    n01 = int(np.count_nonzero(~a & b))
    n = int(a.shape[0])
    return {"n10": n10, "n01": n01, "n": n, "difference": (n10 - n01) / n, "pvalue": _mcnemar_from_counts(n10, n01)}


def pooled_mcnemar_exact(pairs: Iterable) -> dict:
    """Exact McNemar test with the discordant counts of several paired evaluations summed.

    Used for methods trained with several seeds: seed ``k``'s model of method A is paired with
    seed ``k``'s model of method B on the same images, and the discordant counts of all seeds
    are added before the binomial test (equivalent to stacking the seeds' image pairs).

    Parameters
    ----------
    pairs : iterable of (correct_a, correct_b)
        One pair of per-image correctness arrays per seed, as in :func:`mcnemar_exact`; the
        seeds may use different numbers of images.

    Returns
    -------
    result : dict
        The keys of :func:`mcnemar_exact`, over all the pairs together: ``n10``, ``n01``,
        ``n`` (images summed over the pairs), ``difference`` and ``pvalue``; plus ``n_pairs``.

    Raises
    ------
    ValueError
        No pairs, or a pair that :func:`mcnemar_exact` rejects.

    Examples
    --------
    >>> seed0 = ([1, 1, 1, 0], [0, 1, 1, 0])
    >>> seed1 = ([1, 0, 1, 1], [1, 0, 0, 0])
    >>> res = pooled_mcnemar_exact([seed0, seed1])
    >>> res["n10"], res["n01"], res["n"], round(res["pvalue"], 4)  # 2 * 1 / 2**3
    (3, 0, 8, 0.25)
    """
    n10 = n01 = n = n_pairs = 0
    for pair in pairs:
        try:
            correct_a, correct_b = pair
        except (TypeError, ValueError) as exc:
            raise ValueError(f"pairs must hold (correct_a, correct_b) tuples, got {type(pair).__name__}") from exc
        res = mcnemar_exact(correct_a, correct_b)
        n10, n01, n, n_pairs = n10 + res["n10"], n01 + res["n01"], n + res["n"], n_pairs + 1
    if n_pairs == 0:
        raise ValueError("pairs is empty: give one (correct_a, correct_b) pair per seed")
    return {"n10": n10, "n01": n01, "n": n, "n_pairs": n_pairs, "difference": (n10 - n01) / n,
            "pvalue": _mcnemar_from_counts(n10, n01)}


def paired_verdict(method: Sequence, baseline: Sequence, control: Sequence, *, alpha: float = 0.05) -> dict:
    """WINS / LOSES / LEVEL of a method against a baseline over seeds, with a control.

    The rule of the standard-recipe campaign (docs/results.md, "Pre-registered verdict"): the
    method **wins** if it is ahead of the baseline on every seed, the seeds' pooled exact
    McNemar test (:func:`pooled_mcnemar_exact`) gives ``p < alpha``, and its accuracy over the
    seeds is above the control's (the random-masking arm: guidance must beat unguided masking);
    it **loses** if it is behind the baseline on every seed with ``p < alpha``; it is
    **level** otherwise.

    Parameters
    ----------
    method, baseline, control : sequence of correctness records
        One per-image record per seed (bools, or numbers that are 0 or 1), in the same seed
        order for the three; a seed's three records cover the same images.
    alpha : float, default=0.05
        Level of the pooled test, in (0, 1).

    Returns
    -------
    result : dict
        ``verdict`` (``"WINS"``, ``"LOSES"`` or ``"LEVEL"``); ``differences`` (the method's
        accuracy minus the baseline's, per seed); ``difference`` and ``pvalue`` (pooled, from
        :func:`pooled_mcnemar_exact`); ``control_difference`` (the method's accuracy minus the
        control's, all seeds' images together); ``n_seeds``; and the accuracies
        ``method_accuracy``, ``baseline_accuracy``, ``control_accuracy`` (all seeds together).

    Raises
    ------
    ValueError
        No seeds, different numbers of seeds, records of different lengths within a seed, a
        record that is not 0/1, or ``alpha`` outside (0, 1).

    Examples
    --------
    >>> m = [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]  # two seeds, five images each
    >>> b = [[0, 0, 1, 1, 0], [0, 1, 0, 0, 1]]
    >>> c = [[1, 0, 1, 1, 0], [1, 1, 0, 0, 1]]
    >>> res = paired_verdict(m, b, c, alpha=0.1)
    >>> res["verdict"], res["differences"], res["pvalue"]  # 5 discordant pairs, all for m: 2 / 2**5
    ('WINS', [0.4, 0.6], 0.0625)
    >>> paired_verdict(m, b, c, alpha=0.05)["verdict"]
    'LEVEL'
    """
    check_param("paired_verdict", "alpha", alpha, [Real(0, 1, closed="neither")])
    method, baseline, control = list(method), list(baseline), list(control)
    if not method:
        raise ValueError("paired_verdict needs at least one seed")
    if not len(method) == len(baseline) == len(control):
        raise ValueError(f"method, baseline and control must hold one record per seed each, got "
                         f"{len(method)}, {len(baseline)} and {len(control)}")
    ms, bs, cs = [], [], []
    for i, (m, b, c) in enumerate(zip(method, baseline, control)):
        m, b, c = (_check_correct(r, f"{name}[{i}]") for r, name in ((m, "method"), (b, "baseline"), (c, "control")))
        if not m.shape == b.shape == c.shape:
            raise ValueError(f"seed {i}: method, baseline and control must score the same images, got "
                             f"{m.shape[0]}, {b.shape[0]} and {c.shape[0]} entries")
        ms.append(m)
        bs.append(b)
        cs.append(c)
    diffs = [float(m.mean() - b.mean()) for m, b in zip(ms, bs)]
    pooled = pooled_mcnemar_exact(zip(ms, bs))
    m_all, b_all, c_all = np.concatenate(ms), np.concatenate(bs), np.concatenate(cs)
    control_diff = float(m_all.mean() - c_all.mean())
    significant = pooled["pvalue"] < alpha
    if significant and all(d > 0 for d in diffs) and control_diff > 0:
        verdict = "WINS"
    elif significant and all(d < 0 for d in diffs):
        verdict = "LOSES"
    else:
        verdict = "LEVEL"
    return {"verdict": verdict, "differences": diffs, "difference": pooled["difference"],
            "pvalue": pooled["pvalue"], "control_difference": control_diff, "n_seeds": len(diffs),
            "method_accuracy": float(m_all.mean()), "baseline_accuracy": float(b_all.mean()),
            "control_accuracy": float(c_all.mean())}


def _rng_keyword() -> str:
    # scipy >= 1.15 takes ``rng`` (a Generator is used as is); older releases ``random_state``.
    return "rng" if "rng" in inspect.signature(_sps.bootstrap).parameters else "random_state"


def _difference_of_means(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def paired_bootstrap_ci(correct_a, correct_b, confidence=0.95, n_resamples=10000, random_state=0) -> dict:
    """Percentile bootstrap interval of the accuracy difference of two models on the same images.

    The images are resampled with replacement, each keeping its pair of outcomes
    (:func:`scipy.stats.bootstrap` with ``paired=True``, ``method="percentile"``), and the
    interval is read off the resampled differences ``mean(correct_a) - mean(correct_b)``.  It
    covers the test-set sampling only, not the variation between training seeds (see
    :func:`seed_matched_differences`).

    Parameters
    ----------
    correct_a, correct_b : array-like of shape (n_images,)
        Per-image correctness of models A and B on the same images (bools, or 0 and 1); at
        least 2 images.
    confidence : float, default=0.95
        Confidence level, in (0, 1).
    n_resamples : int, default=10000
        Bootstrap resamples.  Memory grows as ``n_resamples * n_images`` (10,000 x 1,000
        images: about 0.2 GB at the peak).
    random_state : None, int or numpy.random.Generator, default=0
        Seeds the resampling (``numpy.random.default_rng(random_state)``); a fixed value gives
        the same interval every time.

    Returns
    -------
    result : dict
        ``difference``: the observed accuracy difference A - B; ``low`` and ``high``: the
        interval's bounds (fractions, not points); ``confidence``.

    Raises
    ------
    ValueError
        Invalid correctness arrays (see :func:`mcnemar_exact`), fewer than 2 images, a
        ``confidence`` outside (0, 1), a non-positive ``n_resamples`` or a ``random_state``
        that is not None, an int >= 0 or a numpy Generator.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = rng.random(200) < 0.7
    >>> b = rng.random(200) < 0.6
    >>> res = paired_bootstrap_ci(a, b, n_resamples=2000, random_state=0)
    >>> bool(res["low"] <= res["difference"] <= res["high"])
    True
    >>> res == paired_bootstrap_ci(a, b, n_resamples=2000, random_state=0)
    True
    """
    a, b = _check_pair(correct_a, correct_b)
    if a.shape[0] < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 images, got {a.shape[0]}")
    check_param("paired_bootstrap_ci", "confidence", confidence, [Real(0, 1, closed="neither")])
    check_param("paired_bootstrap_ci", "n_resamples", n_resamples, [Integral(1, None)])
    check_param("paired_bootstrap_ci", "random_state", random_state, [None, Integral(0, None), np.random.Generator])
    rng = np.random.default_rng(random_state)
    af, bf = a.astype(np.float64), b.astype(np.float64)
    res = _sps.bootstrap((af, bf), _difference_of_means, paired=True, vectorized=True,
                         n_resamples=int(n_resamples), confidence_level=float(confidence),
                         method="percentile", **{_rng_keyword(): rng})
    ci = res.confidence_interval
    return {"difference": float(af.mean() - bf.mean()), "low": float(ci.low), "high": float(ci.high),
            "confidence": float(confidence)}


def seed_matched_differences(values_a: Mapping, values_b: Mapping, *, scale=1.0) -> dict:
    """Differences of a score between two methods trained with the same seeds.

    Pairs ``values_a[seed]`` with ``values_b[seed]`` on the seeds both have (a ``None`` value
    counts as missing), and summarises the per-seed differences ``scale * (a - b)`` by their
    mean and range, which include the training-seed variation that a per-image interval
    (:func:`paired_bootstrap_ci`) leaves out.

    Parameters
    ----------
    values_a : mapping of seed to float or None
        The score (e.g. accuracy) of method A's run with each training seed.
    values_b : mapping of seed to float or None
        The same score of method B (the reference).
    scale : float, default=1.0
        Multiplies each difference (100: points of accuracy).

    Returns
    -------
    result : dict
        ``seeds``: the matched seeds, sorted; ``differences``: ``scale * (a - b)`` per matched
        seed; ``mean`` (exact, :func:`statistics.mean`), ``min`` and ``max`` of the
        differences, ``None`` when no seed matches.

    Examples
    --------
    >>> a = {0: 0.52, 1: 0.59, 2: 0.90}
    >>> b = {0: 0.50, 1: 0.60, 3: 0.70}
    >>> res = seed_matched_differences(a, b, scale=100)
    >>> res["seeds"], [round(d, 6) for d in res["differences"]]
    ([0, 1], [2.0, -1.0])
    >>> round(res["mean"], 6), round(res["min"], 6), round(res["max"], 6)
    (0.5, -1.0, 2.0)
    """
    if not isinstance(values_a, Mapping) or not isinstance(values_b, Mapping):
        raise ValueError(
            f"values_a and values_b must map seeds to values, got {type(values_a).__name__} and "
            f"{type(values_b).__name__}"
        )
    seeds = sorted(s for s in set(values_a) & set(values_b) if values_a[s] is not None and values_b[s] is not None)
    diffs = [scale * (values_a[s] - values_b[s]) for s in seeds]
    if not diffs:
        return {"seeds": [], "differences": [], "mean": None, "min": None, "max": None}
    return {"seeds": seeds, "differences": diffs, "mean": statistics.mean(diffs), "min": min(diffs),
            "max": max(diffs)}
