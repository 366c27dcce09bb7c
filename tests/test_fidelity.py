"""Tests of surrogate_r2: an explanation's fit to the model on held-out LIME perturbations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attribshield.evaluation import surrogate_r2
from attribshield.explainers import Attribution, GridSegmenter, LimeExplainer


class AffineInMask(torch.nn.Module):
    """Two classes with ``p_1 = 0.1 + 0.8 * v . segment_sums(x) / 4``: with a black fill,
    hiding a 2x2 cell zeroes its sum, so ``p_1`` is exactly affine in the keep-mask."""

    def __init__(self, v):
        super().__init__()
        self.v = torch.nn.Parameter(torch.as_tensor(v, dtype=torch.float32), requires_grad=False)

    def forward(self, x):
        sums = torch.nn.functional.avg_pool2d(x[:, :1], 2).flatten(1) * 4  # (N, 16), in [0, 4]
        q = 0.1 + 0.8 * (sums @ self.v) / 4
        return torch.stack([torch.log1p(-q), torch.log(q)], 1)


def affine_case(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(16, generator=g)
    v = v / v.sum()  # q stays in [0.1, 0.9]
    X = torch.rand(n, 1, 8, 8, generator=g)
    seg = GridSegmenter(cell=2).segment(X)
    sums = torch.nn.functional.avg_pool2d(X, 2).flatten(1) * 4
    exact = 0.8 * v * sums / 4  # the effect of keeping each cell

    def attribution(weights):
        return Attribution(segments=seg, weights=weights.float(), valid=torch.ones(n, 16, dtype=torch.bool),
                           intercept=torch.zeros(n), score=torch.full((n,), float("nan")),
                           target=torch.ones(n, dtype=torch.long))

    return AffineInMask(v).eval(), X, exact, attribution


def test_exact_effects_fit_perfectly_and_rescale_scores_the_direction():
    model, X, exact, attribution = affine_case()
    r2 = surrogate_r2(model, X, attribution(exact), fill=0.0, n_samples=64, random_state=0)
    np.testing.assert_allclose(r2, 1.0, atol=1e-6)
    doubled = surrogate_r2(model, X, attribution(2 * exact), fill=0.0, n_samples=64, random_state=0)
    assert (doubled < 0.9).all()
    # rescale fits the scale, of either sign: only the direction of the weights counts
    for c in (2.0, -3.0):
        again = surrogate_r2(model, X, attribution(c * exact), fill=0.0, n_samples=64, rescale=True, random_state=0)
        np.testing.assert_allclose(again, 1.0, atol=1e-6)
    assert (surrogate_r2(model, X, attribution(-exact), fill=0.0, n_samples=64, random_state=0) < 0).all()
    shuffled = exact[:, torch.randperm(16, generator=torch.Generator().manual_seed(1))]
    worse = surrogate_r2(model, X, attribution(shuffled), fill=0.0, n_samples=64, rescale=True, random_state=0)
    assert (worse < 0.95).all()
    # several explanations of the same images: the same masks, one (A, N) array
    both = surrogate_r2(model, X, [attribution(exact), attribution(shuffled)], fill=0.0, n_samples=64,
                        rescale=True, random_state=0)
    assert both.shape == (2, len(X))
    np.testing.assert_allclose(both[0], 1.0, atol=1e-6)
    np.testing.assert_array_equal(both[1], worse)


def test_lime_fits_held_out_masks_better_than_noise_and_seeds_fix_the_masks():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(256, 3)).eval()
    X = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    lime = LimeExplainer(n_samples=400, random_state=0).explain(model, X)
    noise = Attribution(**{**vars(lime), "weights": torch.randn(lime.weights.shape,
                                                                generator=torch.Generator().manual_seed(3))})
    a = surrogate_r2(model, X, lime, n_samples=200, rescale=True, random_state=5)
    b = surrogate_r2(model, X, noise, n_samples=200, rescale=True, random_state=5)
    assert np.median(a) > 0.5 and np.median(a) > np.median(b) + 0.3
    np.testing.assert_array_equal(a, surrogate_r2(model, X, lime, n_samples=200, rescale=True, random_state=5))
    assert not np.array_equal(a, surrogate_r2(model, X, lime, n_samples=200, rescale=True, random_state=6))
    # padding columns are ignored: the value in a padding column changes nothing
    def padded(junk):
        return Attribution(**{**vars(lime), "weights": torch.cat([lime.weights, torch.full((8, 1), junk)], 1),
                              "valid": torch.cat([lime.valid, torch.zeros(8, 1, dtype=torch.bool)], 1)})

    np.testing.assert_array_equal(surrogate_r2(model, X, padded(5.0), n_samples=200, random_state=5),
                                  surrogate_r2(model, X, padded(0.0), n_samples=200, random_state=5))


@pytest.mark.parametrize("kwargs, match", [
    ({"n_samples": 2}, "n_samples"),
    ({"kernel_width": 0.0}, "kernel_width"),
    ({"rescale": "yes"}, "rescale"),
    ({"batch_size": 0}, "batch_size"),
    ({"fill": "blur"}, "fill"),
])
def test_bad_parameters_raise(kwargs, match):
    model, X, exact, attribution = affine_case(n=2)
    with pytest.raises(ValueError, match=match):
        surrogate_r2(model, X, attribution(exact), **kwargs)


def test_bad_attribution_raises_before_any_forward_pass():
    model, X, exact, attribution = affine_case(n=2)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="Attribution"):
        surrogate_r2(model, X, exact)
    with pytest.raises(ValueError, match="sequence"):
        surrogate_r2(model, X, [])
    other = attribution(exact)
    other.target = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="share their segments and targets"):
        surrogate_r2(model, X, [attribution(exact), other])
    with pytest.raises(ValueError, match="X holds 3 images"):
        surrogate_r2(model, torch.rand(3, 1, 8, 8), attribution(exact))
    with pytest.raises(ValueError, match="4x4"):
        surrogate_r2(model, torch.rand(2, 1, 4, 4), attribution(exact))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        surrogate_r2(model, X + 2, attribution(exact))
    assert calls == []
