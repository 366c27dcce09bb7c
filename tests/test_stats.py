"""attribshield.evaluation.stats: exact McNemar tests, paired bootstrap, seed-matched differences."""
from __future__ import annotations

import doctest
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attribshield.evaluation import stats
from attribshield.evaluation.stats import (
    mcnemar_exact,
    paired_bootstrap_ci,
    paired_verdict,
    pooled_mcnemar_exact,
    seed_matched_differences,
)


def outcomes(n10, n01, n11=0, n00=0):
    """Correctness arrays with the given counts of (a, b) outcomes."""
    a = [1] * n10 + [0] * n01 + [1] * n11 + [0] * n00
    b = [0] * n10 + [1] * n01 + [1] * n11 + [0] * n00
    return np.array(a, dtype=bool), np.array(b, dtype=bool)


def exact_p(n10, n01):
    """Two-sided exact McNemar p-value in rational arithmetic: 2 P(X <= min), X ~ Bin(n, 1/2)."""
    n = n10 + n01
    tail = Fraction(sum(math.comb(n, i) for i in range(min(n10, n01) + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


def test_docstring_examples():
    res = doctest.testmod(stats, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0


@pytest.mark.parametrize(
    "n10, n01, expected",
    [
        (9, 1, 2 * (1 + 10) / 2**10),  # 0.021484375
        (1, 9, 2 * (1 + 10) / 2**10),
        (3, 1, 2 * (1 + 4) / 2**4),  # 0.625
        (5, 0, 2 / 2**5),
        (0, 1, 1.0),
        (4, 4, 1.0),
        (54, 29, exact_p(54, 29)),
        (600, 500, exact_p(600, 500)),  # more discordant pairs than 2.0**n can hold as a float
    ],
)
def test_mcnemar_matches_the_exact_binomial_tail(n10, n01, expected):
    a, b = outcomes(n10, n01, n11=7, n00=3)
    res = mcnemar_exact(a, b)
    assert (res["n10"], res["n01"], res["n"]) == (n10, n01, n10 + n01 + 10)
    assert res["difference"] == pytest.approx((n10 - n01) / (n10 + n01 + 10))
    assert res["pvalue"] == pytest.approx(expected, rel=1e-12)


def test_mcnemar_without_discordant_pairs_gives_one():
    a, b = outcomes(0, 0, n11=5, n00=5)
    res = mcnemar_exact(a, b)
    assert res["pvalue"] == 1.0 and res["n10"] == res["n01"] == 0 and res["difference"] == 0.0
    assert mcnemar_exact([1, 1], [1, 1])["pvalue"] == 1.0


@settings(deadline=None, max_examples=30)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_mcnemar_is_symmetric_and_a_probability(pairs):
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    ab, ba = mcnemar_exact(a, b), mcnemar_exact(b, a)
    assert (ab["n10"], ab["n01"]) == (ba["n01"], ba["n10"])
    assert ab["pvalue"] == ba["pvalue"] and 0.0 < ab["pvalue"] <= 1.0
    assert ab["difference"] == pytest.approx(a.mean() - b.mean()) and ba["difference"] == -ab["difference"]
    assert ab["pvalue"] == pytest.approx(exact_p(ab["n10"], ab["n01"]), rel=1e-12)


def test_mcnemar_accepts_bools_numbers_and_tensors():
    a, b = outcomes(6, 2, n11=3)
    ref = mcnemar_exact(a, b)
    assert mcnemar_exact(a.astype(float), b.astype(np.int64)) == ref
    assert mcnemar_exact(a.tolist(), b.tolist()) == ref
    assert mcnemar_exact(torch.from_numpy(a), torch.from_numpy(b).float()) == ref


@pytest.mark.parametrize(
    "a, b, match",
    [
        ([1, 0, 1], [1, 0], "same images"),
        ([], [], "empty"),
        ([0.5, 1.0], [1.0, 0.0], "0/1"),
        ([2, 1], [1, 0], "0/1"),
        ([np.nan, 1.0], [1.0, 0.0], "0/1"),
        (["1", "0"], ["0", "1"], "dtype"),
        ([[1, 0], [0, 1]], [[1, 0], [0, 1]], "1-D"),
        (1, 0, "1-D"),
    ],
)
def test_invalid_inputs_raise(a, b, match):
    with pytest.raises(ValueError, match=match):
        mcnemar_exact(a, b)
    with pytest.raises(ValueError, match=match):
        paired_bootstrap_ci(a, b, n_resamples=10)


def test_pooled_mcnemar_sums_the_discordant_counts():
    pairs = [outcomes(3, 1, n11=2), outcomes(5, 0, n00=4), outcomes(1, 2)]
    res = pooled_mcnemar_exact(pairs)
    assert (res["n10"], res["n01"], res["n_pairs"], res["n"]) == (9, 3, 3, 6 + 9 + 3)
    assert res["pvalue"] == pytest.approx(exact_p(9, 3), rel=1e-12)
    # the same as one test on the stacked image pairs
    stacked = mcnemar_exact(np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs]))
    assert {k: res[k] for k in stacked} == stacked
    assert pooled_mcnemar_exact(iter(pairs)) == res  # any iterable
    with pytest.raises(ValueError, match="empty"):
        pooled_mcnemar_exact([])
    with pytest.raises(ValueError, match="same images"):
        pooled_mcnemar_exact([([1, 0], [1])])
    with pytest.raises(ValueError, match="tuples"):
        pooled_mcnemar_exact([np.array([1, 0, 1])])


@pytest.fixture(scope="module")
def paired_outcomes():
    rng = np.random.default_rng(0)
    a = rng.random(300) < 0.65
    b = np.where(rng.random(300) < 0.8, a, ~a)  # agrees with a on ~80 % of the images
    return a, b


def test_bootstrap_contains_the_estimate_and_is_seeded(paired_outcomes):
    a, b = paired_outcomes
    res = paired_bootstrap_ci(a, b, n_resamples=2000, random_state=3)
    assert res["difference"] == pytest.approx(a.mean() - b.mean())
    assert res["low"] < res["difference"] < res["high"] and res["confidence"] == 0.95
    assert paired_bootstrap_ci(a, b, n_resamples=2000, random_state=3) == res
    assert paired_bootstrap_ci(a, b, n_resamples=2000, random_state=np.random.default_rng(3)) == res
    assert paired_bootstrap_ci(a, b, n_resamples=2000, random_state=4) != res
    wide = paired_bootstrap_ci(a, b, confidence=0.99, n_resamples=2000, random_state=3)
    assert wide["low"] <= res["low"] and wide["high"] >= res["high"]
    # swapping the models mirrors the interval
    ba = paired_bootstrap_ci(b, a, n_resamples=2000, random_state=3)
    assert ba["low"] == pytest.approx(-res["high"]) and ba["high"] == pytest.approx(-res["low"])


def test_bootstrap_resamples_image_pairs(paired_outcomes):
    """The interval is the percentile interval of resampled image pairs, drawn as
    ``rng.integers(0, n, (n_resamples, n))``: the intervals in docs/results.md were computed so,
    and this pins them (a scipy change of the resampling stream would fail here)."""
    a, b = (x.astype(float) for x in paired_outcomes)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(a), size=(1000, len(a)))
    d = a[idx].mean(1) - b[idx].mean(1)
    res = paired_bootstrap_ci(a, b, n_resamples=1000, random_state=0)
    assert (res["low"], res["high"]) == (float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5)))


def test_bootstrap_of_identical_models_is_a_point():
    a = np.array([1, 0, 1, 1, 0], dtype=bool)
    res = paired_bootstrap_ci(a, a, n_resamples=200)
    assert res == {"difference": 0.0, "low": 0.0, "high": 0.0, "confidence": 0.95}


@pytest.mark.parametrize(
    "kwargs, match",
    [({"confidence": 1.0}, "confidence"), ({"confidence": 0}, "confidence"), ({"n_resamples": 0}, "n_resamples"),
     ({"n_resamples": 2.5}, "n_resamples"), ({"random_state": True}, "random_state")],
)
def test_bootstrap_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap_ci([1, 0, 1], [0, 0, 1], **kwargs)
    with pytest.raises(ValueError, match="at least 2"):
        paired_bootstrap_ci([1], [0])


def test_seed_matched_differences_pairs_by_seed():
    clean_a = {0: 0.52, 1: 0.59, 2: 0.9}
    clean_b = {0: 0.50, 1: 0.60, 5: 0.1}
    res = seed_matched_differences(clean_a, clean_b, scale=100)
    assert res["seeds"] == [0, 1]
    assert res["differences"] == [100 * (0.52 - 0.50), 100 * (0.59 - 0.60)]
    assert res["mean"] == pytest.approx(0.5) and res["min"] == pytest.approx(-1.0) and res["max"] == pytest.approx(2.0)
    # unscaled by default; a None value is a missing seed
    res = seed_matched_differences({0: 0.4, 1: None, 2: 0.3}, {0: 0.3, 1: 0.2, 2: 0.35})
    assert res["seeds"] == [0, 2] and res["differences"] == [0.4 - 0.3, 0.3 - 0.35]
    assert res["mean"] == pytest.approx(0.025)
    assert seed_matched_differences({0: 0.4}, {1: 0.3}) == {"seeds": [], "differences": [], "mean": None,
                                                          "min": None, "max": None}
    with pytest.raises(ValueError, match="map seeds"):
        seed_matched_differences([0.4, 0.5], [0.3, 0.2])


# --------------------------------------------------------------------------- paired_verdict
def _acc(k, n=200):
    """A record with the first ``k`` of ``n`` images correct (nested records: every pair is one-sided)."""
    return np.arange(n) < k


@pytest.mark.parametrize("method, baseline, control, expected", [
    ([120, 125, 118], [100, 100, 100], [110, 110, 110], "WINS"),
    ([120, 125, 118], [100, 100, 100], [125, 125, 125], "LEVEL"),   # random masking does better
    ([120, 125, 99], [100, 100, 100], [90, 90, 90], "LEVEL"),       # behind on one seed
    ([101, 102, 101], [100, 100, 100], [90, 90, 90], "LEVEL"),      # ahead everywhere, p = 0.25
    ([80, 85, 90], [100, 100, 100], [90, 90, 90], "LOSES"),
    ([80, 101, 90], [100, 100, 100], [90, 90, 90], "LEVEL"),        # ahead on one seed
])
def test_paired_verdict_follows_the_rule(method, baseline, control, expected):
    res = paired_verdict([_acc(k) for k in method], [_acc(k) for k in baseline], [_acc(k) for k in control])
    assert res["verdict"] == expected, res
    assert res["differences"] == pytest.approx([(m - b) / 200 for m, b in zip(method, baseline)])
    pooled = pooled_mcnemar_exact([(_acc(m), _acc(b)) for m, b in zip(method, baseline)])
    assert res["pvalue"] == pooled["pvalue"] and res["difference"] == pooled["difference"]
    assert res["control_difference"] == pytest.approx((sum(method) - sum(control)) / 600)
    assert res["n_seeds"] == 3 and res["method_accuracy"] == pytest.approx(sum(method) / 600)


def test_paired_verdict_alpha_decides_significance():
    m, b, c = [_acc(105)], [_acc(100)], [_acc(100)]  # 5 one-sided discordant pairs: p = 2 / 32
    assert paired_verdict(m, b, c, alpha=0.1)["verdict"] == "WINS"
    assert paired_verdict(m, b, c)["verdict"] == "LEVEL"


@pytest.mark.parametrize("args, kwargs, match", [
    (([], [], []), {}, "at least one seed"),
    (([_acc(1)], [_acc(1), _acc(2)], [_acc(1)]), {}, "one record per seed"),
    (([_acc(1, 10)], [_acc(1, 9)], [_acc(1, 10)]), {}, "same images"),
    (([_acc(1, 10)], [_acc(1, 10)], [_acc(1, 9)]), {}, "same images"),
    (([[0, 2]], [[0, 1]], [[0, 1]]), {}, r"method\[0\] must hold booleans or 0/1"),
    (([_acc(1)], [_acc(1)], [_acc(1)]), {"alpha": 1.0}, "alpha"),
])
def test_paired_verdict_rejects_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_verdict(*args, **kwargs)
