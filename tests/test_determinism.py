"""Same random_state, same weights (CPU): the full method is reproducible; other seeds differ."""
import pytest
import torch

from attribshield import RobustAttributionClassifier
from attribshield.attacks import GuidedPGD
from attribshield.explainers import LimeExplainer
from attribshield.maskers import LimeMasker
from attribshield.regularizers import SpuriousSensitivityPenalty
from attribshield.testing import TinyMLP, make_images

X, y = make_images(n=24)


def full_method(seed):
    # every random component carries its own seed; random_state seeds init and shuffling
    return RobustAttributionClassifier(
        TinyMLP, attacker=GuidedPGD(eps=0.05, steps=2, random_start=True, random_state=seed),
        masker=LimeMasker(top_k=2, random_state=seed), regularizer=SpuriousSensitivityPenalty(weight=0.1,
                                                                                              random_state=seed),
        explainer=LimeExplainer(n_samples=16, random_state=seed), refine_every=1, refine_fraction=1.0,
        max_epochs=3, lr=0.1,
        batch_size=8, iterator_train__shuffle=True, verbose=0, random_state=seed)


def weights(net):
    return [p.detach().clone() for p in net.module_.parameters()]


@pytest.fixture(scope="module")
def first():
    torch.manual_seed(1234)  # the global RNG state before fit must not matter
    return full_method(0).fit(X, y)


def test_same_seed_gives_identical_weights(first):
    torch.manual_seed(999)
    torch.rand(100)
    second = full_method(0).fit(X, y)
    assert second.mask_cache_.rounds == 3 and "penalty_loss" in second.history[-1]["batches"][0]
    for a, b in zip(weights(first), weights(second)):
        assert torch.equal(a, b)
    assert torch.equal(first.mask_cache_.selected, second.mask_cache_.selected)
    assert [r["train_loss"] for r in first.history] == [r["train_loss"] for r in second.history]


def test_different_seed_gives_different_weights(first):
    other = full_method(1).fit(X, y)
    assert any(not torch.equal(a, b) for a, b in zip(weights(first), weights(other)))


def test_refit_is_reproducible(first):
    net = full_method(0).fit(X, y).fit(X, y)  # a second fit re-initialises and re-seeds
    for a, b in zip(weights(first), weights(net)):
        assert torch.equal(a, b)
